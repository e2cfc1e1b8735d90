//! `vmexec run`: one job in a fresh VM, with its uploads before and its
//! downloads after, output streamed (or one JSON result with `--json`);
//! with `--server`, the same job sent to a service.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmhost::api::{self, Download, Language, RunRequest, RunResult, StartKind, Timings, Upload};
use vmhost::{AgentError, Job, Start, Stream, Vm, VmConfig};

use super::remote::{self, Client, RemoteError, Server, TOKEN_ENV};
use crate::args::{LangArg, RunArgs};
use crate::failure::{EXIT_TIMEOUT, Failure, InputError};

/// `vmexec run`: the arguments' job in a fresh VM (or a service's); its
/// output, then its exit status as vmexec's.
pub fn main(args: RunArgs) -> ExitCode {
    let json = args.json;
    if let Some(server) = args.server.clone() {
        return run_remote(&args, server).unwrap_or_else(|failure| {
            let (code, kind) = failure.classify();
            report(json, code, &kind, &failure.message())
        });
    }
    let mut config = VmConfig { cold: args.cold, ..args.vm.config() };
    let packages = match super::template::attach_packages(&args.vm, &mut config) {
        Ok(layer) => layer.map(|l| l.set.pins()).unwrap_or_default(),
        Err(e) => {
            let code = super::template::package_exit_code(&e);
            return report(json, code, "Packages", &vmhost::error::chain(&e));
        }
    };
    match run(args, &config, packages) {
        Ok(code) => code,
        Err(failure) => {
            let (code, kind) = failure.classify();
            let message = match &failure {
                // The init's own words, without the wrapper.
                Failure::Vm(vmhost::Error::Agent(AgentError::Refused { message, .. })) => message.clone(),
                _ => failure.message(),
            };
            report(json, code, &kind, &message)
        }
    }
}

/// A failure, as one JSON object with `--json` or one line on stderr.
fn report(json: bool, code: u8, kind: &str, message: &str) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "error": { "kind": kind, "message": message } }));
    } else {
        eprintln!("vmexec: {message}");
    }
    ExitCode::from(code)
}

/// Writes output as it arrives, unless it is to be printed in JSON.
fn show(live: bool) -> impl Fn(Stream, &[u8]) {
    move |stream, data| {
        if live {
            let _ = match stream {
                Stream::Stdout => {
                    std::io::stdout().lock().write_all(data).and_then(|_| std::io::stdout().flush())
                }
                Stream::Stderr => std::io::stderr().lock().write_all(data),
            };
        }
    }
}

/// vmexec's exit status for a job's.
fn exit_status(timed_out: bool, code: i32) -> ExitCode {
    ExitCode::from(if timed_out { EXIT_TIMEOUT } else { u8::try_from(code & 0xff).unwrap_or(1) })
}

/// One line when a VM booted cold although it should have been restored.
pub fn warn_fallback(vm: &Vm) {
    if let Some(why) = vm.fallback() {
        eprintln!("vmexec: warning: {why}; booted cold");
    }
}

/// Lines of the guest console shown when the guest stops answering.
const CONSOLE_LINES: usize = 20;

fn run(args: RunArgs, config: &VmConfig, packages: Vec<String>) -> Result<ExitCode, Failure> {
    let (code, language) = read_code(&args)?;
    let input = open_stdin(&args)?;
    // Read before any VM starts: a missing file fails fast.
    let uploads = read_uploads(&args)?;
    let mut job = Job::new(language.lang(), code);
    job.env = args.env.clone();
    job.cwd = args.cwd.clone();
    job.timeout = (args.timeout > 0.0).then(|| Duration::from_secs_f64(args.timeout));
    job.stdout_limit = args.output_limit;
    job.stderr_limit = args.output_limit;
    job.fresh = args.fresh;
    job.memory_limit_mb = args.memory_limit;

    let started = Instant::now();
    let mut vm = Vm::boot(config)?;
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
    let show = show(!args.json);
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
        let result = RunResult { packages, ..RunResult::new(&outcome, start, accel.name(), timings) };
        println!("{}", serde_json::to_string(&result).expect("a result serialises"));
    }
    Ok(exit_status(outcome.timed_out, outcome.code()))
}

/// `vmexec run --server`: the job as a run request to the service, its
/// output as it streams back (or its result with `--json`), its
/// downloads written here. Everything local is read before connecting.
fn run_remote(args: &RunArgs, server: Server) -> Result<ExitCode, RemoteError> {
    let (code, language) = read_code(args)?;
    let code = String::from_utf8(code).map_err(|_| RemoteError::NotText { what: "the code".into() })?;
    let stdin = read_stdin_text(args)?;
    let files = read_uploads(args)?
        .into_iter()
        .map(|(path, data, mode)| Upload { path, content: api::base64(&data), mode: Some(mode) })
        .collect();
    let request = RunRequest {
        code,
        language,
        timeout: Some(args.timeout),
        env: args.env.iter().cloned().collect(),
        stdin,
        files,
        download: args.download.iter().map(|(guest, _)| guest.clone()).collect(),
        memory_limit_mb: args.memory_limit,
        output_limit: Some(args.output_limit),
        packages: args.vm.packages.clone(),
    };
    let token = remote::token(args.token_file.as_deref(), std::env::var(TOKEN_ENV).ok())?;
    let client = Client::new(server, token)?;
    // A job without a timeout has no deadline for its answer either, as
    // a local one has none for its guest.
    let wait = remote::answer_wait(args.timeout, &request.packages);
    let mut result: RunResult = if args.json {
        // Not streamed: a plain answer keeps its status and `Retry-After`.
        client.post("/v1/runs", &request, wait)?
    } else {
        client.run_streamed(&request, wait, show(true))?
    };
    save_downloads(&client, &args.download, &result.files)?;
    if args.json {
        // The files are written; the result prints as a local one does.
        result.files.clear();
        println!("{}", serde_json::to_string(&result).expect("a result serialises"));
    }
    Ok(exit_status(result.timed_out, result.exit_code))
}

/// `--download` of a remote run: each file the service returned into its
/// local path.
fn save_downloads(
    client: &Client,
    wanted: &[(String, PathBuf)],
    files: &[Download],
) -> Result<(), RemoteError> {
    for (guest, local) in wanted {
        let protocol = |why: String| RemoteError::Protocol { server: client.server().clone(), why };
        let file = files
            .iter()
            .find(|f| &f.path == guest)
            .ok_or_else(|| protocol(format!("the result has no file {guest}")))?;
        let data = remote::file_bytes(file).map_err(protocol)?;
        std::fs::write(local, data)
            .map_err(|source| RemoteError::Download { path: local.clone(), source })?;
    }
    Ok(())
}

/// `--stdin` of a remote run, read whole: the API's stdin is text.
fn read_stdin_text(args: &RunArgs) -> Result<Option<String>, RemoteError> {
    let (Some(path), Some(mut input)) = (&args.stdin, open_stdin(args)?) else { return Ok(None) };
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(|source| InputError::StdinFile { path: path.clone(), source })?;
    String::from_utf8(bytes).map(Some).map_err(|_| {
        let what = if path.as_os_str() == "-" {
            "vmexec's stdin (--stdin -)".to_owned()
        } else {
            format!("the stdin file {}", path.display())
        };
        RemoteError::NotText { what }
    })
}

/// `--upload`: each local file's guest path, bytes and permission bits.
fn read_uploads(args: &RunArgs) -> Result<Vec<(String, Vec<u8>, u32)>, InputError> {
    args.upload
        .iter()
        .map(|(local, guest)| {
            let data =
                std::fs::read(local).map_err(|source| InputError::Upload { path: local.clone(), source })?;
            let mode = std::fs::metadata(local).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o644);
            Ok((guest.clone(), data, mode))
        })
        .collect()
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
fn read_code(args: &RunArgs) -> Result<(Vec<u8>, Language), InputError> {
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
    Ok((code, language))
}
