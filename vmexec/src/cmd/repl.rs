//! `vmexec repl`: a stateful session in one VM, fed line by line from a
//! terminal or a pipe, as `python3 -i` takes it; with `--server`, a
//! session held by a service, fed a statement at a time.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use vmhost::api::{self, Language, RunResult};
use vmhost::{Lang, Vm, VmConfig};
use vmserve::sessions::{ExecRequest, OpenRequest, SessionInfo};

use super::remote::statement::{Pushed, Statement};
use super::remote::{self, ANSWER_MARGIN, Client, RemoteError, Server, TOKEN_ENV};
use crate::args::ReplArgs;
use crate::failure::{EXIT_TIMEOUT, Failure, InputError};

/// Runs the session; its failure, if any, on stderr with its exit code.
pub fn main(args: ReplArgs) -> ExitCode {
    if let Some(server) = args.server.clone() {
        return repl_remote(&args, server).unwrap_or_else(|failure| {
            eprintln!("vmexec: {}", failure.message());
            ExitCode::from(failure.classify().0)
        });
    }
    let mut config = VmConfig { cold: args.cold, ..args.vm.config() };
    if let Err(e) = super::template::attach_packages(&args.vm, &mut config) {
        eprintln!("vmexec: {}", vmhost::error::chain(&e));
        return ExitCode::from(super::template::package_exit_code(&e));
    }
    repl(args, &config).unwrap_or_else(|failure| {
        eprintln!("vmexec: {}", failure.message());
        ExitCode::from(failure.classify().0)
    })
}

/// What a terminal is prompted with: a new statement's, a continued one's.
fn prompts(lang: Lang) -> (&'static str, &'static str) {
    match lang {
        Lang::Shell => ("$ ", "> "),
        _ => (">>> ", "... "),
    }
}

/// The exit status of the last step, as vmexec's.
fn exit_status(last: i32) -> ExitCode {
    ExitCode::from(u8::try_from(last & 0xff).unwrap_or(1))
}

/// `vmexec repl`: each line read goes to the session as a console takes
/// it; the output of each complete statement is printed once it ran. Exits
/// with the last step's status.
fn repl(args: ReplArgs, config: &VmConfig) -> Result<ExitCode, Failure> {
    let lang = args.lang.language().lang();
    let mut vm = Vm::boot(config)?;
    super::run::warn_fallback(&vm);
    let terminal = std::io::stdin().is_terminal();
    let prompts = prompts(lang);
    let mut last = 0;
    let result = (|| -> Result<(), Failure> {
        let mut session = vm.session(lang)?;
        let mut more = false;
        let mut lines = std::io::stdin().lines();
        loop {
            if terminal {
                eprint!("{}", if more { prompts.1 } else { prompts.0 });
            }
            let (line, last_line) = match lines.next() {
                Some(line) => (line.map_err(InputError::Stdin)?, false),
                // At the end, a statement still open is finished as a
                // blank line would (or dropped, if that does not).
                None if more => (String::new(), true),
                None => break,
            };
            match session.push(&line)? {
                None if last_line => {
                    eprintln!("vmexec: the input ended inside a statement");
                    break;
                }
                None => more = true,
                Some(step) => {
                    more = false;
                    std::io::stdout().write_all(&step.stdout).and_then(|()| std::io::stdout().flush()).ok();
                    std::io::stderr().write_all(&step.stderr).ok();
                    last = step.exit;
                }
            }
            if last_line {
                break;
            }
        }
        session.close()?;
        Ok(())
    })();
    vm.shutdown();
    result?;
    Ok(exit_status(last))
}

/// `vmexec repl --server`: a session opened in the service, each complete
/// statement sent as one step (see [`Statement`] for when one is), the
/// session closed at the end whatever happened, so that its VM does not
/// wait out the service's idle timeout. Exits with the last step's status.
fn repl_remote(args: &ReplArgs, server: Server) -> Result<ExitCode, RemoteError> {
    let language = args.lang.language();
    let token = remote::token(args.token_file.as_deref(), std::env::var(TOKEN_ENV).ok())?;
    let client = Client::new(server, token)?;
    let step_timeout = args.timeout.unwrap_or(api::DEFAULT_TIMEOUT_SECS);
    // Opening waits for a VM as a run does.
    let open = OpenRequest { language, packages: args.vm.packages.clone(), ..OpenRequest::default() };
    let wait = ANSWER_MARGIN + remote::packages_margin(&open.packages);
    let session: SessionInfo = client.post("/v1/sessions", &open, Some(wait))?;
    let steps = Steps {
        client: &client,
        path: format!("/v1/sessions/{}/exec", session.id),
        timeout: step_timeout,
        wait: (step_timeout > 0.0).then(|| Duration::from_secs_f64(step_timeout) + ANSWER_MARGIN),
    };
    let result = read_statements(language, &steps);
    let closed = client.delete(&format!("/v1/sessions/{}", session.id), Some(ANSWER_MARGIN));
    let last = result?;
    match closed {
        // A session whose VM was lost is gone already.
        Err(RemoteError::Refused(refusal)) if refusal.kind == "no_session" => {}
        Err(e) => eprintln!("vmexec: warning: the session was not closed: {}", e.message()),
        Ok(()) => {}
    }
    Ok(exit_status(last))
}

/// Where a remote session's steps go, and how long each may take.
struct Steps<'a> {
    client: &'a Client,
    path: String,
    /// Seconds, as the service takes them.
    timeout: f64,
    wait: Option<Duration>,
}

impl Steps<'_> {
    /// One statement; its output printed, its exit status returned.
    fn run(&self, code: String) -> Result<i32, RemoteError> {
        let step = ExecRequest { code, timeout: Some(self.timeout) };
        let result: RunResult = self.client.post(&self.path, &step, self.wait)?;
        let stdout = remote::output_bytes(&result.stdout, result.stdout_base64.as_deref());
        let stderr = remote::output_bytes(&result.stderr, result.stderr_base64.as_deref());
        std::io::stdout().write_all(&stdout).and_then(|()| std::io::stdout().flush()).ok();
        std::io::stderr().write_all(&stderr).ok();
        if result.timed_out {
            eprintln!(
                "vmexec: the statement ran past its {} s (--timeout) and was interrupted",
                self.timeout
            );
            return Ok(i32::from(EXIT_TIMEOUT));
        }
        Ok(result.exit_code)
    }
}

/// Reads stdin into statements and runs each; the last one's status.
fn read_statements(language: Language, steps: &Steps<'_>) -> Result<i32, RemoteError> {
    let terminal = std::io::stdin().is_terminal();
    let prompts = prompts(language.lang());
    let mut statement = Statement::new(language);
    let mut lines = std::io::stdin().lines();
    let mut last = 0;
    loop {
        if terminal {
            eprint!("{}", if statement.is_open() { prompts.1 } else { prompts.0 });
        }
        let Some(line) = lines.next() else { break };
        match statement.push(&line.map_err(InputError::Stdin)?) {
            Pushed::More => {}
            // A blank line runs nothing, a step that succeeded.
            Pushed::Nothing => last = 0,
            Pushed::Cell(code) => last = steps.run(code)?,
        }
    }
    // At the end, a statement still open is finished as a blank line would
    // (or dropped, if that does not), as a local session does.
    match statement.finish() {
        Ok(Some(code)) => last = steps.run(code)?,
        Ok(None) => {}
        Err(()) => eprintln!("vmexec: the input ended inside a statement"),
    }
    Ok(last)
}
