//! A client for QMP, QEMU's JSON control protocol: the commands that pause
//! a VM and save its device state, and that load it into a new QEMU. QEMU
//! connects to a socket the host listens on, as the agent port does.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Talking to QEMU's monitor.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot set the QMP socket's timeout")]
    Timeout(#[source] std::io::Error),
    #[error("QMP connection failed")]
    Io(#[source] std::io::Error),
    #[error("QEMU closed the QMP connection")]
    Closed,
    #[error("QEMU sent something that is not QMP JSON: {0}")]
    Garbled(String),
    #[error("QMP `{command}` failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("migration {0}")]
    Migration(String),
    #[error("QEMU did not finish `{0}` in time")]
    Deadline(&'static str),
}

/// A negotiated QMP session.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Reads QEMU's greeting and leaves capabilities negotiation mode.
    /// Every read waits at most `timeout`.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        stream.set_read_timeout(Some(timeout)).map_err(QmpError::Timeout)?;
        let writer = stream.try_clone().map_err(QmpError::Io)?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Garbled(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value; events that arrive
    /// meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(QmpError::Io)?;
        loop {
            let mut reply = self.read()?;
            if let Some(value) = reply.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = reply.get("error") {
                let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or("?").to_owned();
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            // An asynchronous event: not the answer.
        }
    }

    /// Turns on `x-ignore-shared`: guest RAM in a shared file backend is left
    /// out of the migration stream (it is in the file already).
    pub fn ignore_shared_ram(&mut self) -> Result<(), QmpError> {
        let caps = json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] });
        self.execute("migrate-set-capabilities", caps).map(drop)
    }

    /// Polls `query-migrate` until the migration completes, fails, or
    /// `deadline` passes.
    pub fn wait_migration(&mut self, deadline: Instant) -> Result<(), QmpError> {
        loop {
            let info = self.execute("query-migrate", json!({}))?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some(status @ ("failed" | "cancelled")) => {
                    let why = info.get("error-desc").and_then(Value::as_str).unwrap_or(status);
                    return Err(QmpError::Migration(why.to_owned()));
                }
                _ if Instant::now() > deadline => return Err(QmpError::Deadline("migrate")),
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(QmpError::Closed),
            Ok(_) => serde_json::from_str(&line).map_err(|_| QmpError::Garbled(line.trim().to_owned())),
            Err(e) => Err(QmpError::Io(e)),
        }
    }
}
