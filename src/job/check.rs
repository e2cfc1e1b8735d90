//! The checks a job must pass before anything runs: its header
//! ([`check_run`]) and its code as the chunks arrive ([`CodeCheck`]). A
//! refusal names the field at fault.

// A refusal is formatted into a fixed buffer (no allocator); returning it by
// value is the price, paid only on the error path.
#![allow(clippy::result_large_err)]

use proto::{Lang, MAX_CODE, Run};

use crate::log::{Piece, Text};
use crate::pieces;

/// A refusal naming the field at fault, e.g. `env[2].name: contains '='`.
pub type Refusal = Text<128>;

pub fn refuse(pieces: &[Piece<'_>]) -> Refusal {
    Refusal::of(pieces)
}

/// Checks a job's header; nothing is created when it fails.
pub fn check_run(run: &Run<'_>) -> Result<(), Refusal> {
    if let Lang::Unknown(n) = run.lang {
        return Err(refuse(pieces!["lang: unknown language ", n, " (0 = python, 1 = shell)"]));
    }
    if run.code_len == 0 {
        return Err(refuse(pieces!["code: empty"]));
    }
    if run.code_len > MAX_CODE {
        return Err(refuse(pieces!["code: ", run.code_len, " bytes, more than ", MAX_CODE]));
    }
    // Numbered as u32: one integer formatter in the binary, not two.
    for (i, var) in (0u32..).zip(&run.env) {
        let name = var.name.as_bytes();
        if name.is_empty() {
            return Err(refuse(pieces!["env[", i, "].name: empty"]));
        }
        if has(name, b'=') {
            return Err(refuse(pieces!["env[", i, "].name: contains '='"]));
        }
        if has(name, 0) {
            return Err(refuse(pieces!["env[", i, "].name: contains a NUL byte"]));
        }
        if has(var.value.as_bytes(), 0) {
            return Err(refuse(pieces!["env[", i, "].value: contains a NUL byte"]));
        }
    }
    if let Some(cwd) = run.cwd {
        if cwd.is_empty() {
            return Err(refuse(pieces!["cwd: empty"]));
        }
        if has(cwd.as_bytes(), 0) {
            return Err(refuse(pieces!["cwd: contains a NUL byte"]));
        }
    }
    Ok(())
}

/// Whether `bytes` holds `byte`. A plain loop: `<[u8]>::contains` is a
/// word-at-a-time search, fast on long input and 200 bytes of code, and
/// these fields are short.
#[allow(clippy::manual_contains)]
fn has(bytes: &[u8], byte: u8) -> bool {
    bytes.iter().any(|&b| b == byte)
}

/// What the code seen so far looks like: enough to refuse empty or
/// NUL-bearing code once the last chunk is in, without keeping the code.
#[derive(Default, Clone, Copy, Debug)]
pub struct CodeCheck {
    pub seen: u32,
    has_text: bool,
    nul_at: Option<u32>,
}

impl CodeCheck {
    pub fn feed(&mut self, chunk: &[u8]) {
        // Chunks are at most MAX_CHUNK and code at most MAX_CODE: the
        // saturating conversions never saturate.
        if self.nul_at.is_none()
            && let Some(i) = chunk.iter().position(|&b| b == 0)
        {
            self.nul_at = Some(self.seen.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)));
        }
        self.has_text |= chunk.iter().any(|b| !b.is_ascii_whitespace());
        self.seen = self.seen.saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
    }

    pub fn verdict(&self) -> Result<(), Refusal> {
        if let Some(at) = self.nul_at {
            return Err(refuse(pieces!["code: contains a NUL byte at offset ", at]));
        }
        if !self.has_text {
            return Err(refuse(pieces!["code: only whitespace"]));
        }
        Ok(())
    }
}

/// A job header for tests: Python, 10 bytes of code, limits of 10.
#[cfg(test)]
pub fn sample_run<'a>(env: &[proto::Env<'a>], cwd: Option<&'a str>) -> Run<'a> {
    Run {
        job: 1,
        lang: Lang::Python,
        code_len: 10,
        env: env.iter().cloned().collect(),
        cwd,
        timeout_ms: 0,
        stdout_limit: 10,
        stderr_limit: 10,
        fresh: false,
        stdin: false,
        memory_limit_mb: 0,
        user: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Env;

    use super::sample_run as run;

    #[test]
    fn refusals_name_the_field() {
        let cases: [(Run, &str); 8] = [
            (Run { lang: Lang::Unknown(7), ..run(&[], None) }, "lang:"),
            (Run { code_len: 0, ..run(&[], None) }, "code: empty"),
            (Run { code_len: MAX_CODE + 1, ..run(&[], None) }, "code:"),
            (run(&[Env { name: "", value: "x" }], None), "env[0].name: empty"),
            (
                run(&[Env { name: "A", value: "1" }, Env { name: "B=C", value: "x" }], None),
                "env[1].name: contains '='",
            ),
            (run(&[Env { name: "A\0", value: "x" }], None), "env[0].name: contains a NUL"),
            (run(&[Env { name: "A", value: "x\0y" }], None), "env[0].value: contains a NUL"),
            (run(&[], Some("")), "cwd: empty"),
        ];
        for (r, want) in cases {
            let got = check_run(&r).unwrap_err();
            assert!(got.starts_with(want), "{got} does not start with {want}");
        }
        assert!(check_run(&run(&[Env { name: "A", value: "" }], Some("/tmp"))).is_ok());
        assert!(check_run(&Run { code_len: MAX_CODE, ..run(&[], None) }).is_ok());
    }

    #[test]
    fn code_check_across_chunks() {
        let mut c = CodeCheck::default();
        c.feed(b"  \n\t");
        assert!(c.verdict().unwrap_err().contains("whitespace"));
        c.feed(b"x");
        assert!(c.verdict().is_ok());
        c.feed(b"ab\0");
        assert!(c.verdict().unwrap_err().ends_with("offset 7"));
        assert_eq!(c.seen, 8);
    }
}
