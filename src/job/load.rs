//! A job whose code is still arriving ([`Loading`]): its `Code` chunks go
//! into a memfd the interpreter will read, checked as they pass (length,
//! and [`CodeCheck`]'s verdict once complete), and what the job asked for
//! in its `Run` header waits here until it starts.

// A refusal may carry text formatted into a fixed buffer (no allocator);
// returning it by value is the price, paid only on the error path.
#![allow(clippy::result_large_err)]

use proto::{ErrorKind, Lang, Run};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{MemfdFlags, Mode, OFlags};
use rustix::io::Errno;

use super::check::CodeCheck;
use super::machine::Streams;
use super::refused::Refused;
use super::spawn::Program;
use super::warm;
use crate::error::describe;
use crate::log::Text;
use crate::pieces;

/// A UTF-8 byte order mark, which editors on some systems put first.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A job whose code is still arriving.
pub struct Loading {
    pub id: u32,
    pub lang: Lang,
    /// The code so far, in a memfd the interpreter will read.
    pub code: OwnedFd,
    code_len: u32,
    check: CodeCheck,
    pub timeout_ms: u32,
    pub limits: Streams<u32>,
    /// May be forked from the zygote (see [`warm::may_fork`]).
    pub zygote: bool,
    /// Its stdin is fed by the host (else /dev/null).
    pub stdin: bool,
    /// Its cgroup's memory limit in bytes; 0: the default.
    pub memory: u64,
    /// The user it runs as (`users`).
    pub uid: u32,
}

impl Loading {
    /// The job `run` asks for, as user `uid`, with an empty memfd for its
    /// code.
    pub fn new(run: &Run<'_>, uid: u32) -> Result<Loading, Refused> {
        let code = rustix::fs::memfd_create(c"job", MemfdFlags::CLOEXEC)
            .map_err(|e| Refused::new(ErrorKind::Spawn, describe(e)))?;
        Ok(Loading {
            id: run.job,
            lang: run.lang,
            code,
            code_len: run.code_len,
            check: CodeCheck::default(),
            timeout_ms: run.timeout_ms,
            limits: Streams([run.stdout_limit, run.stderr_limit]),
            zygote: warm::may_fork(run),
            stdin: run.stdin,
            memory: u64::from(run.memory_limit_mb) << 20,
            uid,
        })
    }

    /// Appends a `Code` chunk; once the code is complete, its verdict. A
    /// refused job is over (its slot is freed by the caller).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Refused> {
        if u64::from(self.check.seen) + data.len() as u64 > u64::from(self.code_len) {
            return Err(Refused::new(ErrorKind::InvalidJob, "code: more bytes than code_len"));
        }
        if let Err(e) = write_all(self.code.as_fd(), self.without_bom(data)) {
            return Err(Refused::new(ErrorKind::Spawn, describe(e)));
        }
        self.check.feed(data);
        if self.complete() {
            self.check.verdict().map_err(Refused::invalid)?;
        }
        Ok(())
    }

    /// All `code_len` bytes have arrived (and passed).
    pub fn complete(&self) -> bool {
        self.check.seen >= self.code_len
    }

    /// What runs the code. A shell script with a `#!` line is run by the
    /// kernel, as `./script` would be: its memfd is exec'd, which needs a
    /// descriptor no one can write through (else ETXTBSY), so the code's
    /// descriptor becomes a read-only one.
    pub fn program(&mut self) -> Result<Program, Refused> {
        if self.lang != Lang::Shell || !starts_with_shebang(self.code.as_fd()) {
            return Ok(Program::Lang(self.lang));
        }
        self.code = read_only(self.code.as_fd()).map_err(|e| Refused::failed("code", e))?;
        Ok(Program::Script)
    }

    /// What of `data` goes into the memfd: all of it, but for a shell
    /// job's leading byte order mark, which the shell would take as part
    /// of the first command's name (and which hides a `#!` line from the
    /// kernel). Python skips it itself. It is looked for in the first chunk.
    fn without_bom<'d>(&self, data: &'d [u8]) -> &'d [u8] {
        match data.strip_prefix(BOM) {
            Some(rest) if self.lang == Lang::Shell && self.check.seen == 0 => rest,
            _ => data,
        }
    }
}

/// Whether the code in `code` starts with `#!`.
fn starts_with_shebang(code: BorrowedFd<'_>) -> bool {
    let mut head = [0u8; 2];
    matches!(rustix::io::pread(code, &mut head, 0), Ok(2)) && head == *b"#!"
}

/// A read-only descriptor of the same memfd, through /proc; the writable
/// one is dropped by the caller.
fn read_only(code: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
    let path = Text::<32>::of(pieces!["/proc/self/fd/", code.as_raw_fd().unsigned_abs(), "\0"]);
    let path = path.as_c_str().ok_or(Errno::INVAL)?;
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> rustix::io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
