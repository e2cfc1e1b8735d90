//! `vmexec run`: one job in a fresh VM, with its uploads before and its
//! downloads after, output streamed (or one JSON result with `--json`).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmhost::api::{Language, RunResult, StartKind, Timings};
use vmhost::{AgentError, Job, Lang, Start, Stream, Vm, VmConfig};

use crate::args::{LangArg, RunArgs};
use crate::failure::{EXIT_TIMEOUT, Failure, InputError};

/// `vmexec run`: the arguments' job in a fresh VM; its output, then its
/// exit status as vmexec's.
pub fn main(args: RunArgs) -> ExitCode {
    let json = args.json;
    match run(args) {
        Ok(code) => code,
        Err(failure) => {
            let (code, kind) = failure.classify();
            let message = match &failure {
                // The init's own words, without the wrapper.
                Failure::Vm(vmhost::Error::Agent(AgentError::Refused { message, .. })) => message.clone(),
                _ => failure.message(),
            };
            if json {
                println!("{}", serde_json::json!({ "error": { "kind": kind, "message": message } }));
            } else {
                eprintln!("vmexec: {message}");
            }
            ExitCode::from(code)
        }
    }
}

/// One line when a VM booted cold although it should have been restored.
pub fn warn_fallback(vm: &Vm) {
    if let Some(why) = vm.fallback() {
        eprintln!("vmexec: warning: {why}; booted cold");
    }
}

/// Lines of the guest console shown when the guest stops answering.
const CONSOLE_LINES: usize = 20;

fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let (code, lang) = read_code(&args)?;
    let input = open_stdin(&args)?;
    // Read before any VM starts: a missing file fails fast.
    let uploads = args
        .upload
        .iter()
        .map(|(local, guest)| {
            let data =
                std::fs::read(local).map_err(|source| InputError::Upload { path: local.clone(), source })?;
            let mode = std::fs::metadata(local).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o644);
            Ok((guest.clone(), data, mode))
        })
        .collect::<Result<Vec<_>, InputError>>()?;
    let mut job = Job::new(lang, code);
    job.env = args.env.clone();
    job.cwd = args.cwd.clone();
    job.timeout = (args.timeout > 0.0).then(|| Duration::from_secs_f64(args.timeout));
    job.stdout_limit = args.output_limit;
    job.stderr_limit = args.output_limit;
    job.fresh = args.fresh;
    job.memory_limit_mb = args.memory_limit;

    let config = VmConfig { cold: args.cold, ..args.vm.config() };
    let started = Instant::now();
    let mut vm = Vm::boot(&config)?;
    warn_fallback(&vm);
    let times = vm.times();

    // A guest that stops answering must not hang vmexec: allow the job its
    // timeout plus a margin for the guest to report it.
    let margin = Duration::from_secs(60);
    vm.agent().set_timeout(job.timeout.map(|t| t + margin))?;
    for (guest, data, mode) in &uploads {
        if let Err(source) = vm.write_file(&in_cwd(args.cwd.as_deref(), guest), data, *mode) {
            vm.shutdown();
            return Err(Failure::File { what: "upload to", path: guest.clone(), source });
        }
    }
    let sent = Instant::now();
    let live = !args.json;
    let show = |stream: Stream, data: &[u8]| {
        if live {
            let _ = match stream {
                Stream::Stdout => {
                    std::io::stdout().lock().write_all(data).and_then(|_| std::io::stdout().flush())
                }
                Stream::Stderr => std::io::stderr().lock().write_all(data),
            };
        }
    };
    let outcome = match input {
        Some(input) => vm.agent().run_with_input(&job, input, show),
        None => vm.agent().run(&job, show),
    };
    let exec_ms = sent.elapsed().as_secs_f64() * 1000.0;
    let downloaded = match &outcome {
        Ok(_) => download(&mut vm, args.cwd.as_deref(), &args.download),
        Err(_) => Ok(()),
    };
    let (accel, start) = (vm.accel(), vm.start());
    if let Err(AgentError::Timeout(_)) = &outcome {
        // A guest that went silent: its console says what it last did
        // (a panicking init logs there before it powers off).
        let console = vm.console();
        let tail: Vec<&str> = console.lines().rev().take(CONSOLE_LINES).collect();
        eprintln!("vmexec: the guest console's last lines:");
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
    }
    vm.shutdown();
    let outcome = outcome?;
    downloaded?;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;

    if args.json {
        let start = match start {
            Start::Cold => StartKind::Cold,
            Start::Restored => StartKind::Restored,
        };
        let timings = Timings {
            boot_ms: times.boot_ms,
            exec_ms,
            total_ms,
            kernel_ms: times.kernel_ms,
            init_ms: times.init_ms,
        };
        let result = RunResult::new(&outcome, start, accel.name(), timings);
        println!("{}", serde_json::to_string(&result).expect("a result serialises"));
    }
    Ok(ExitCode::from(if outcome.timed_out { EXIT_TIMEOUT } else { (outcome.code() & 0xff) as u8 }))
}

/// `--download`: each guest file into its local path.
fn download(vm: &mut Vm, cwd: Option<&str>, files: &[(String, PathBuf)]) -> Result<(), Failure> {
    for (guest, local) in files {
        let guest = &in_cwd(cwd, guest);
        let data = vm.read_file(guest).map_err(|source| Failure::File {
            what: "download",
            path: guest.clone(),
            source,
        })?;
        std::fs::write(local, data).map_err(|source| Failure::Download { path: local.clone(), source })?;
    }
    Ok(())
}

/// A guest path as the job sees it: a relative one is in its `--cwd`.
fn in_cwd(cwd: Option<&str>, guest: &str) -> String {
    match cwd {
        Some(cwd) if !guest.starts_with('/') => format!("{}/{guest}", cwd.trim_end_matches('/')),
        _ => guest.to_owned(),
    }
}

/// Where `--stdin` reads from, opened before any VM starts.
fn open_stdin(args: &RunArgs) -> Result<Option<Box<dyn Read + Send>>, InputError> {
    let Some(path) = &args.stdin else { return Ok(None) };
    if path.as_os_str() == "-" {
        if args.code.is_none() && args.file.as_ref().is_some_and(|f| f.as_os_str() == "-") {
            return Err(InputError::StdinTwice);
        }
        return Ok(Some(Box::new(std::io::stdin())));
    }
    let file =
        std::fs::File::open(path).map_err(|source| InputError::StdinFile { path: path.clone(), source })?;
    Ok(Some(Box::new(file)))
}

/// The code and its language, from `-c`, a file or stdin.
fn read_code(args: &RunArgs) -> Result<(Vec<u8>, Lang), InputError> {
    let (code, path) = match (&args.code, &args.file) {
        (Some(code), _) => (code.clone().into_bytes(), None),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut code = Vec::new();
            std::io::stdin().read_to_end(&mut code).map_err(InputError::Stdin)?;
            (code, None)
        }
        (None, Some(path)) => {
            let code =
                std::fs::read(path).map_err(|source| InputError::File { path: path.clone(), source })?;
            (code, Some(path.as_path()))
        }
        // clap requires one of them.
        (None, None) => unreachable!("clap requires -c CODE or FILE"),
    };
    let language = args.lang.map_or_else(|| Language::infer(path, &code), LangArg::language);
    Ok((code, language.lang()))
}
