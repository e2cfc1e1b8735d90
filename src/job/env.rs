//! A job's environment and working directory, laid out as the
//! `NAME=value\0` strings `execve` takes, in a fixed block per job slot.

// A refusal is formatted into a fixed buffer (no allocator); returning it by
// value is the price, paid only on the error path.
#![allow(clippy::result_large_err)]

use core::ffi::CStr;

use proto::Run;

use super::check::{Refusal, refuse};
use crate::pieces;

/// Bytes of `NAME=value\0` strings (defaults included) plus the working
/// directory a job may carry. 16 KiB is far beyond a normal environment and
/// keeps the whole table small.
pub const ENV_BYTES: usize = 16 * 1024;
const _: () = assert!(ENV_BYTES == 16384, "the refusal in `fill` names the size");

/// A job's environment strings and working directory, laid out as the
/// `NAME=value\0` strings `execve` takes.
pub struct EnvBlock {
    bytes: [u8; ENV_BYTES],
    len: usize,
    /// Start of each variable in `bytes`.
    starts: heapless::Vec<u16, { proto::MAX_ENV + DEFAULT_ENV.len() + 1 }>,
    /// Start of the working directory string in `bytes`.
    cwd: Option<u16>,
}

/// Variables every job gets unless it sets them itself. HOME is added from
/// the configured home.
pub const DEFAULT_ENV: [&CStr; 6] = [
    c"PATH=/usr/local/bin:/usr/bin:/bin",
    c"LANG=C.UTF-8",
    c"USER=user",
    c"TMPDIR=/tmp",
    // Output streams as it is produced instead of at exit.
    c"PYTHONUNBUFFERED=1",
    // The root is read-only; do not even try to write bytecode.
    c"PYTHONDONTWRITEBYTECODE=1",
];

impl EnvBlock {
    pub const fn new() -> Self {
        Self { bytes: [0; ENV_BYTES], len: 0, starts: heapless::Vec::new(), cwd: None }
    }

    /// Fills the block from a job header: its variables, then the defaults
    /// (and HOME) it did not set, then its working directory.
    pub fn fill(&mut self, run: &Run<'_>, home: &[u8]) -> Result<(), Refusal> {
        self.len = 0;
        self.starts.clear();
        self.cwd = None;
        let full = || refuse(pieces!["env: more than 16384 bytes"]);
        for var in &run.env {
            if self.find(var.name.as_bytes()).is_none() {
                self.push(&[var.name.as_bytes(), b"=", var.value.as_bytes()]).ok_or_else(full)?;
            }
        }
        for var in DEFAULT_ENV {
            let var = var.to_bytes();
            let name = var.split(|&b| b == b'=').next().unwrap_or(var);
            if self.find(name).is_none() {
                self.push(&[var]).ok_or_else(full)?;
            }
        }
        if self.find(b"HOME").is_none() {
            self.push(&[b"HOME=", home]).ok_or_else(full)?;
        }
        if let Some(cwd) = run.cwd {
            let start = u16::try_from(self.len).map_err(|_| full())?;
            self.append(&[cwd.as_bytes()]).ok_or_else(full)?;
            self.cwd = Some(start);
        }
        Ok(())
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        self.starts.iter().map(|&s| usize::from(s)).find(|&s| {
            let var = &self.bytes[s..];
            var.starts_with(name) && var.get(name.len()) == Some(&b'=')
        })
    }

    fn push(&mut self, parts: &[&[u8]]) -> Option<()> {
        // ENV_BYTES fits u16, and `append` keeps `len` within it.
        let start = u16::try_from(self.len).ok()?;
        self.append(parts)?;
        self.starts.push(start).ok()
    }

    /// Appends the parts and a NUL.
    fn append(&mut self, parts: &[&[u8]]) -> Option<()> {
        let size: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 1;
        if self.len + size > ENV_BYTES {
            return None;
        }
        for part in parts {
            self.bytes[self.len..self.len + part.len()].copy_from_slice(part);
            self.len += part.len();
        }
        self.bytes[self.len] = 0;
        self.len += 1;
        Some(())
    }

    /// The variables, then the working directory if there is one, each
    /// NUL-terminated, back to back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// `NAME=value` of each variable, NUL-terminated.
    pub fn vars(&self) -> impl Iterator<Item = &core::ffi::CStr> {
        self.starts.iter().map(|&s| self.c_str_at(usize::from(s)))
    }

    pub fn cwd(&self) -> Option<&core::ffi::CStr> {
        self.cwd.map(|start| self.c_str_at(usize::from(start)))
    }

    fn c_str_at(&self, start: usize) -> &core::ffi::CStr {
        // Every start points at a string `append` terminated with a NUL, and
        // checks rejected NULs inside names, values and cwd.
        crate::log::c_str_until_nul(&self.bytes[start..]).unwrap_or(c"")
    }
}

impl Default for EnvBlock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::check::sample_run as run;
    use proto::Env;

    #[test]
    fn env_block_overrides_defaults_and_keeps_cwd() {
        let mut block = EnvBlock::new();
        let r = run(&[Env { name: "PATH", value: "/opt" }, Env { name: "X", value: "a=b" }], Some("/work"));
        block.fill(&r, b"/home/user").unwrap();
        let vars: Vec<_> = block.vars().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(vars[0], "PATH=/opt");
        assert_eq!(vars[1], "X=a=b");
        assert_eq!(vars.iter().filter(|v| v.starts_with("PATH=")).count(), 1);
        assert!(vars.contains(&"HOME=/home/user".to_owned()));
        assert!(vars.contains(&"PYTHONUNBUFFERED=1".to_owned()));
        assert_eq!(block.cwd(), Some(c"/work"));

        let big = "v".repeat(ENV_BYTES);
        let r = run(&[Env { name: "BIG", value: &big }], None);
        assert!(block.fill(&r, b"/h").unwrap_err().starts_with("env: more than"));
    }
}
