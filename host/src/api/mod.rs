//! The API types of a run, defined once: the request a caller makes and
//! the result it gets back, in the JSON shape that `vmexec run --json`
//! prints, that the HTTP service sends and that the Python SDK reads.
//! Validation names the field at fault, so every front end refuses bad
//! input the same way before any VM is touched.
//!
//! Bytes in JSON: output is sent as text (`stdout`), lossily decoded as
//! UTF-8; when the bytes are not valid UTF-8 they also come exactly as
//! base64 (`stdout_base64`), which a client prefers when present. File
//! contents are always base64.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proto::Lang;
use serde::{Deserialize, Serialize};

use crate::agent::{Job, Outcome};

/// Longest timeout a run may ask for: the wire carries milliseconds in a
/// u32 (about 49 days); a day is far past any sandboxed job.
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// The timeout of a run that names none.
pub const DEFAULT_TIMEOUT_SECS: f64 = 30.0;

/// The guest directory relative paths are in.
pub const HOME: &str = "/home/user";

/// The language of a run, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Python,
    #[serde(alias = "shell", alias = "bash")]
    Sh,
}

impl Language {
    pub fn lang(self) -> Lang {
        match self {
            Language::Python => Lang::Python,
            Language::Sh => Lang::Shell,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Sh => "sh",
        }
    }

    /// The language a file's extension says.
    pub fn from_extension(path: &Path) -> Option<Language> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("sh") => Some(Language::Sh),
            Some("py") => Some(Language::Python),
            _ => None,
        }
    }

    /// The language a `#!` line implies: Python for a Python interpreter
    /// (it may then fork from the guest's warm one), else a script the
    /// guest's kernel runs with the interpreter it names, as a shell job.
    pub fn from_shebang(code: &[u8]) -> Option<Language> {
        let code = code.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(code);
        let line = code.strip_prefix(b"#!")?.split(|&b| b == b'\n').next()?;
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let program = match words.next()? {
            env if env.ends_with("/env") => words.find(|w| !w.starts_with('-'))?,
            program => program,
        };
        let name = program.rsplit('/').next()?;
        Some(if name.starts_with("python3") || name == "python" { Language::Python } else { Language::Sh })
    }

    /// What code from `path` (if it came from a file) is, when no one said:
    /// its extension, else its `#!` line, else Python.
    pub fn infer(path: Option<&Path>, code: &[u8]) -> Language {
        path.and_then(Language::from_extension).or_else(|| Language::from_shebang(code)).unwrap_or_default()
    }
}

/// A file put into the guest before the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// Relative to the job user's home, or absolute inside it.
    pub path: String,
    /// The bytes, base64.
    pub content: String,
    /// Permission bits; 0o644 when not given.
    #[serde(default)]
    pub mode: Option<u32>,
}

/// A file read from the guest after the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub path: String,
    /// The bytes, base64.
    pub content: String,
}

/// One run, as a caller asks for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub code: String,
    #[serde(default)]
    pub language: Language,
    /// Seconds; 0: no limit; default 30.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The job's stdin as text; none: /dev/null.
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub files: Vec<Upload>,
    #[serde(default)]
    pub download: Vec<String>,
    #[serde(default)]
    pub memory_limit_mb: Option<u32>,
    /// Bytes of stdout (and of stderr) kept; default 1 MiB.
    #[serde(default)]
    pub output_limit: Option<u32>,
    /// Pip requirements (`numpy==2.1.3`, `six`) the job imports, from a
    /// read-only layer the host makes (`crate::packages`).
    #[serde(default)]
    pub packages: Vec<String>,
}

/// Bad input, naming the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), reason: reason.into() }
}

/// A checked upload: its guest path and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUpload {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

impl RunRequest {
    /// The job this request describes, its uploads decoded, or the first
    /// field at fault.
    pub fn check(&self) -> Result<(Job, Vec<CheckedUpload>), FieldError> {
        check_code(&self.code)?;
        let mut job = Job::new(self.language.lang(), self.code.clone());
        job.timeout = check_timeout("timeout", self.timeout)?;
        job.env = check_env("env", &self.env)?;
        job.stdin = self.stdin.as_ref().map(|s| s.clone().into_bytes());
        if let Some(mb) = self.memory_limit_mb {
            if mb == 0 {
                return Err(field("memory_limit_mb", "must be at least 1"));
            }
            job.memory_limit_mb = Some(mb);
        }
        if let Some(limit) = self.output_limit {
            job.stdout_limit = limit;
            job.stderr_limit = limit;
        }
        let mut uploads = Vec::new();
        for (i, upload) in self.files.iter().enumerate() {
            let at = |name: &str| format!("files[{i}].{name}");
            check_guest_path(&at("path"), &upload.path)?;
            let data = BASE64
                .decode(&upload.content)
                .map_err(|e| field(at("content"), format!("not base64: {e}")))?;
            let mode = upload.mode.unwrap_or(0o644);
            if mode > 0o7777 {
                return Err(field(at("mode"), "not a permission mode (at most 0o7777)"));
            }
            uploads.push(CheckedUpload { path: upload.path.clone(), data, mode });
        }
        for (i, path) in self.download.iter().enumerate() {
            check_guest_path(&format!("download[{i}]"), path)?;
        }
        check_packages(&self.packages)?;
        Ok((job, uploads))
    }
}

/// Code a job may run: not empty, no NUL (an interpreter would stop
/// there), within the wire's limit.
pub fn check_code(code: &str) -> Result<(), FieldError> {
    if code.trim().is_empty() {
        return Err(field("code", "is empty"));
    }
    if code.contains('\0') {
        return Err(field("code", "contains a NUL byte"));
    }
    if code.len() > proto::MAX_CODE as usize {
        return Err(field("code", format!("{} bytes, more than {}", code.len(), proto::MAX_CODE)));
    }
    Ok(())
}

/// A timeout in seconds: `None` is the default, 0 is none.
pub fn check_timeout(name: &str, secs: Option<f64>) -> Result<Option<Duration>, FieldError> {
    let secs = secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !secs.is_finite() || !(0.0..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(field(
            name,
            format!("{secs} is out of range: give 0 (no limit) up to {MAX_TIMEOUT_SECS} seconds"),
        ));
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

/// Environment variables: names as a shell takes them, at most the wire's
/// count, no NUL anywhere.
pub fn check_env(name: &str, env: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, FieldError> {
    if env.len() > proto::MAX_ENV {
        return Err(field(name, format!("{} variables, more than {}", env.len(), proto::MAX_ENV)));
    }
    for (key, value) in env {
        let mut chars = key.chars();
        let first_ok = chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic());
        if !first_ok || !chars.all(|c| c == '_' || c.is_ascii_alphanumeric()) {
            return Err(field(format!("{name}.{key}"), "not a variable name ([A-Za-z_][A-Za-z0-9_]*)"));
        }
        if value.contains('\0') {
            return Err(field(format!("{name}.{key}"), "the value contains a NUL byte"));
        }
    }
    Ok(env.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// A guest path a caller may name: relative to the home, or absolute
/// inside it, with no `..`, no NUL, not empty. The guest checks again
/// (symbolic links, permissions); this refuses what is wrong on its face.
pub fn check_guest_path(name: &str, path: &str) -> Result<(), FieldError> {
    if path.is_empty() || path.contains('\0') {
        return Err(field(name, "must be a non-empty path without NUL"));
    }
    let inside = match path.strip_prefix('/') {
        Some(_) => path.strip_prefix(HOME).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
        None => true,
    };
    if !inside || path.split('/').any(|part| part == "..") {
        return Err(field(name, format!("{path:?} is outside the home directory {HOME}")));
    }
    Ok(())
}

/// Requirements a run or session may name: each a requirement string,
/// no two pins of one package apart, within the set's bounds. Whether the
/// index has them is known only once they are resolved.
pub fn check_packages(specs: &[String]) -> Result<(), FieldError> {
    crate::packages::Requirements::parse(specs).map(drop).map_err(|e| field("packages", e.to_string()))
}

/// How a VM came to run a result's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    Cold,
    Restored,
    /// Handed out warm from a service's pool.
    Pooled,
}

/// What a run left, in milliseconds where it is a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub stdout: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_base64: Option<String>,
    pub stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_base64: Option<String>,
    /// The exit code, 128 + N for a signal N; -1 when it timed out.
    pub exit_code: i32,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub peak_memory_bytes: u64,
    pub cpu_ms: f64,
    pub start: StartKind,
    /// Spawn (or hand-out) to serving.
    pub boot_ms: f64,
    pub exec_ms: f64,
    pub total_ms: f64,
    pub kernel_ms: f64,
    pub init_ms: f64,
    pub accel: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<Download>,
    /// The packages' resolved set, `name==version` by name: what the job
    /// could import.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
}

/// Milliseconds to one decimal: more is noise.
pub fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// Text for JSON, and the exact bytes too when the text would lose them.
pub fn text_and_bytes(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(BASE64.encode(bytes))),
    }
}

/// Base64, as every byte field of the API is.
pub fn base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Timings of a run, for its result.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub boot_ms: f64,
    pub exec_ms: f64,
    pub total_ms: f64,
    pub kernel_ms: f64,
    pub init_ms: f64,
}

impl RunResult {
    pub fn new(outcome: &Outcome, start: StartKind, accel: &str, t: Timings) -> RunResult {
        let (stdout, stdout_base64) = text_and_bytes(&outcome.stdout);
        let (stderr, stderr_base64) = text_and_bytes(&outcome.stderr);
        RunResult {
            stdout,
            stdout_base64,
            stderr,
            stderr_base64,
            exit_code: if outcome.timed_out { -1 } else { outcome.code() },
            timed_out: outcome.timed_out,
            stdout_truncated: outcome.stdout_truncated,
            stderr_truncated: outcome.stderr_truncated,
            peak_memory_bytes: outcome.peak_memory,
            cpu_ms: round_ms(outcome.cpu_time.as_secs_f64() * 1000.0),
            start,
            boot_ms: round_ms(t.boot_ms),
            exec_ms: round_ms(t.exec_ms),
            total_ms: round_ms(t.total_ms),
            kernel_ms: round_ms(t.kernel_ms),
            init_ms: round_ms(t.init_ms),
            accel: accel.to_owned(),
            files: Vec::new(),
            packages: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
