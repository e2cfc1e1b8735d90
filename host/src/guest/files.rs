//! Files into and out of a guest, between jobs: each operation is a
//! Python job (`files.py`) run as a job user, fed by the job's stdin or
//! read from its stdout, so the init needs no file code of its own and the
//! guest kernel checks every permission. Which user: the runner's
//! [`Runner::files_user`] (for a session or a run's files, an
//! [`AsUser`](crate::agent::AsUser)), so that the files belong to the job
//! they are for. Paths are relative to that user's home, or absolute
//! inside it; `..` and symbolic links on the way are refused.

use std::time::Duration;

use crate::agent::{Job, Runner};
use crate::error::AgentError;

/// Largest file moved in or out: the job's output limit, and what the
/// host holds in memory.
pub const MAX_FILE: u32 = 256 << 20;

const HELPER: &str = include_str!("files.py");

/// An entry of a guest directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// What a directory entry is (a symbolic link is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Link,
    Other,
}

impl FileKind {
    /// The kind as `files.py` writes it.
    fn parse(text: &str) -> Option<FileKind> {
        Some(match text {
            "file" => FileKind::File,
            "dir" => FileKind::Dir,
            "link" => FileKind::Link,
            "other" => FileKind::Other,
            _ => return None,
        })
    }
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

/// Writes `data` to `path` in the guest (made with `mode`, owned by the
/// runner's files user; missing directories are made).
pub fn write(runner: &mut dyn Runner, path: &str, data: &[u8], mode: u32) -> Result<(), FileError> {
    if data.len() > MAX_FILE as usize {
        return Err(FileError::TooBig { path: path.to_owned(), size: data.len() });
    }
    let mut job = helper(runner, "write", path);
    job.env.push(("PID1_MODE".into(), mode.to_string()));
    job.stdin = Some(data.to_vec());
    file_job(runner, &job).map(drop)
}

/// The bytes of the guest file `path`.
pub fn read(runner: &mut dyn Runner, path: &str) -> Result<Vec<u8>, FileError> {
    let job = helper(runner, "read", path);
    file_job(runner, &job)
}

/// Removes the guest file `path` (or an empty directory).
pub fn delete(runner: &mut dyn Runner, path: &str) -> Result<(), FileError> {
    let job = helper(runner, "delete", path);
    file_job(runner, &job).map(drop)
}

/// The entries of the guest directory `path`, by name.
pub fn list(runner: &mut dyn Runner, path: &str) -> Result<Vec<FileEntry>, FileError> {
    let job = helper(runner, "list", path);
    parse_listing(&file_job(runner, &job)?)
}

/// `files.py`'s listing: NUL-ended records of tab-separated kind, size,
/// mode and name (the name last: it may hold a tab).
fn parse_listing(listing: &[u8]) -> Result<Vec<FileEntry>, FileError> {
    let entry = |record: &[u8]| {
        let text = String::from_utf8_lossy(record);
        let mut fields = text.splitn(4, '\t');
        let (kind, size, mode, name) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        Some(FileEntry {
            name: name.to_owned(),
            kind: FileKind::parse(kind)?,
            size: size.parse().ok()?,
            mode: mode.parse().ok()?,
        })
    };
    listing
        .split(|&b| b == 0)
        .filter(|record| !record.is_empty())
        .map(|record| entry(record).ok_or_else(|| FileError::Guest("unreadable directory listing".into())))
        .collect()
}

fn file_job(runner: &mut dyn Runner, job: &Job) -> Result<Vec<u8>, FileError> {
    let out = runner.run_job(job, &mut |_, _| {})?;
    if out.code() != 0 || out.stdout_truncated {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let why = if out.stdout_truncated { format!("more than {MAX_FILE} bytes") } else { why };
        return Err(FileError::Guest(why));
    }
    Ok(out.stdout)
}

fn helper(runner: &mut dyn Runner, op: &str, path: &str) -> Job {
    let mut job = Job::python(HELPER);
    job.user = Some(runner.files_user());
    job.env = vec![("PID1_OP".into(), op.into()), ("PID1_PATH".into(), path.into())];
    // 256 MiB at the console's pace (some 4.5 MB/s under TCG).
    job.timeout = Some(Duration::from_secs(600));
    job.stdout_limit = MAX_FILE;
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_becomes_entries() {
        let listing = b"file\t12\t420\ta.txt\0dir\t4096\t493\tsub dir\0link\t7\t511\tname\twith tab\0";
        let entries = parse_listing(listing).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0],
            FileEntry { name: "a.txt".into(), kind: FileKind::File, size: 12, mode: 0o644 }
        );
        assert_eq!((entries[1].kind, &entries[1].name[..]), (FileKind::Dir, "sub dir"));
        assert_eq!((entries[2].kind, &entries[2].name[..]), (FileKind::Link, "name\twith tab"));
        assert_eq!(parse_listing(b"").unwrap(), []);
    }

    #[test]
    fn a_garbled_listing_is_an_error_not_a_guess() {
        for bad in [&b"file\tbig\t420\ta\0"[..], b"socket\t1\t1\ta\0", b"file\t1\0"] {
            assert!(matches!(parse_listing(bad), Err(FileError::Guest(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_kind_is_said_in_lowercase() {
        assert_eq!(serde_json::to_string(&FileKind::Dir).unwrap(), "\"dir\"");
    }
}
