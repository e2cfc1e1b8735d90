//! The `vmexec` binary, run as a user runs it. It is another package's
//! binary, so cargo does not build it for these tests: `just build` does.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// `$PID1_VMEXEC`, else the release build of this checkout.
fn vmexec_binary() -> PathBuf {
    let path = std::env::var_os("PID1_VMEXEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::workspace().join("target/release/vmexec"));
    assert!(path.is_file(), "no vmexec binary at {}: run `just build`", path.display());
    path
}

/// A command that runs `vmexec`; the caller adds the arguments.
pub fn vmexec() -> Command {
    Command::new(vmexec_binary())
}

/// Runs `command` with `stdin` written to its standard input, and collects
/// its output.
pub fn output_with_stdin(command: &mut Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    child.stdin.take().expect("piped").write_all(stdin).expect("write stdin");
    child.wait_with_output().expect("wait for the command")
}
