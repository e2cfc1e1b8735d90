//! Files into and out of a guest, between jobs: each operation is a
//! Python job (`files.py`) run as the job user, fed by the job's stdin or
//! read from its stdout, so the init needs no file code of its own and the
//! guest kernel checks every permission. Paths are relative to the job
//! user's home, or absolute inside it; `..` and symbolic links on the way
//! are refused.

use std::time::Duration;

use crate::agent::{Agent, Job};
use crate::error::AgentError;

/// Largest file moved in or out: the job's output limit, and what the
/// host holds in memory.
pub const MAX_FILE: u32 = 256 << 20;

const HELPER: &str = include_str!("files.py");

/// An entry of a guest directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `link` or `other`.
    pub kind: String,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The guest refused: a missing file, a path outside the home, a
    /// symbolic link, a full filesystem... in the guest's words.
    #[error("{0}")]
    Guest(String),
    #[error("{path}: {size} bytes, more than {max}", max = MAX_FILE)]
    TooBig { path: String, size: usize },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl Agent {
    /// Writes `data` to `path` in the guest (made with `mode`, owned by
    /// the job user; missing directories are made).
    pub fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), FileError> {
        if data.len() > MAX_FILE as usize {
            return Err(FileError::TooBig { path: path.to_owned(), size: data.len() });
        }
        let mut job = helper("write", path);
        job.env.push(("PID1_MODE".into(), mode.to_string()));
        job.stdin = Some(data.to_vec());
        self.file_job(&job).map(drop)
    }

    /// The bytes of the guest file `path`.
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, FileError> {
        self.file_job(&helper("read", path))
    }

    /// The entries of the guest directory `path`, by name.
    pub fn list_files(&mut self, path: &str) -> Result<Vec<FileEntry>, FileError> {
        let listing = self.file_job(&helper("list", path))?;
        let entry = |record: &[u8]| {
            let text = String::from_utf8_lossy(record);
            let mut fields = text.splitn(4, '\t');
            let (kind, size, mode, name) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            Some(FileEntry {
                name: name.to_owned(),
                kind: kind.to_owned(),
                size: size.parse().ok()?,
                mode: mode.parse().ok()?,
            })
        };
        listing
            .split(|&b| b == 0)
            .filter(|record| !record.is_empty())
            .map(|record| {
                entry(record).ok_or_else(|| FileError::Guest("unreadable directory listing".into()))
            })
            .collect()
    }

    fn file_job(&mut self, job: &Job) -> Result<Vec<u8>, FileError> {
        let out = self.run(job, |_, _| {})?;
        if out.code() != 0 || out.stdout_truncated {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            let why = if out.stdout_truncated { format!("more than {MAX_FILE} bytes") } else { why };
            return Err(FileError::Guest(why));
        }
        Ok(out.stdout)
    }
}

fn helper(op: &str, path: &str) -> Job {
    let mut job = Job::python(HELPER);
    job.env = vec![("PID1_OP".into(), op.into()), ("PID1_PATH".into(), path.into())];
    // 256 MiB at the console's pace (some 4.5 MB/s under TCG).
    job.timeout = Some(Duration::from_secs(600));
    job.stdout_limit = MAX_FILE;
    job
}
