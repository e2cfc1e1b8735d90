//! `vmexec`: run one Python or shell job in a fresh pid1 microVM.

use std::error::Error as _;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use vmhost::template::Template;
use vmhost::{Accel, AgentError, FileError, Job, Lang, Stream, Vm, VmConfig};

/// Exit code when the job timed out (as timeout(1) does).
const EXIT_TIMEOUT: u8 = 124;
/// Exit code when the job was refused before it ran, or the command line is wrong.
const EXIT_REFUSED: u8 = 2;
/// Exit code when the code cannot be read (sysexits' EX_NOINPUT): vmexec's
/// own input, not the job, is at fault.
const EXIT_NO_INPUT: u8 = 66;
/// Exit code when the VM itself failed (no QEMU, no kernel, boot failure).
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(name = "vmexec", version, about = "Run Python or shell code in a fresh pid1 microVM")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM, run one job, print its output, exit with its exit code.
    Run(RunArgs),
    /// Make, show or remove the snapshot templates VMs are restored from.
    #[command(subcommand)]
    Template(TemplateAction),
    /// A stateful session in one VM: read steps from a terminal, or from a
    /// pipe as `python3 -i` does (a statement runs once it is complete).
    Repl(ReplArgs),
}

#[derive(clap::Args)]
struct ReplArgs {
    /// Language of the session.
    #[arg(short, long, value_enum, default_value = "python")]
    lang: LangArg,
    /// Boot the kernel instead of restoring the snapshot template.
    #[arg(long)]
    cold: bool,
    #[command(flatten)]
    vm: VmArgs,
}

#[derive(Subcommand)]
enum TemplateAction {
    /// Make the template for these VM settings now (if it is not there).
    Build(VmArgs),
    /// List the templates: where, how big, and which one these settings use.
    Status(VmArgs),
    /// Remove every template.
    Clear,
}

#[derive(Clone, Copy, ValueEnum)]
enum LangArg {
    Python,
    #[value(alias = "shell")]
    Sh,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Language of the code (default: from the file's extension, else python).
    #[arg(short, long, value_enum)]
    lang: Option<LangArg>,
    /// The code to run.
    #[arg(short = 'c', long = "code", conflicts_with = "file")]
    code: Option<String>,
    /// A file with the code to run; `-` reads it from stdin.
    #[arg(required_unless_present = "code")]
    file: Option<PathBuf>,
    /// Seconds the job may run before it is killed (0: no limit).
    #[arg(long, default_value_t = 30.0, value_parser = parse_timeout)]
    timeout: f64,
    /// An environment variable for the job, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory of the job in the guest (default: its home).
    #[arg(long)]
    cwd: Option<String>,
    /// Print one JSON object with the output, exit status and timings.
    #[arg(long)]
    json: bool,
    /// Bytes of stdout (and of stderr) kept before the rest is dropped.
    #[arg(long, default_value_t = proto::DEFAULT_OUTPUT_LIMIT)]
    output_limit: u32,
    /// Boot the kernel instead of restoring the snapshot template.
    #[arg(long)]
    cold: bool,
    /// Python: exec a fresh interpreter instead of forking the warm one.
    #[arg(long)]
    fresh: bool,
    /// The job's stdin, streamed from this file; `-`: vmexec's own stdin
    /// (when the code is not read from there). Default: /dev/null.
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Memory the job's processes may use together, in MiB (default: three
    /// quarters of the guest's); past it the job is OOM-killed.
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u32).range(1..))]
    memory_limit: Option<u32>,
    /// Put a local file into the guest before the job, LOCAL:GUEST (GUEST
    /// relative to the job's home, or absolute inside it; repeatable).
    #[arg(long, value_name = "LOCAL:GUEST", value_parser = parse_upload)]
    upload: Vec<(PathBuf, String)>,
    /// Get a guest file after the job, GUEST[:LOCAL] (LOCAL defaults to the
    /// file's name in the current directory; repeatable).
    #[arg(long, value_name = "GUEST[:LOCAL]", value_parser = parse_download)]
    download: Vec<(String, PathBuf)>,
    #[command(flatten)]
    vm: VmArgs,
}

/// What a VM is made of; a template is made for one combination.
#[derive(clap::Args)]
struct VmArgs {
    /// Guest memory in MiB (Python needs some 64 MiB to be useful).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=65536))]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    cpus: u32,
    /// Show the kernel console on stderr.
    #[arg(long)]
    debug: bool,
    /// Accelerator: auto probes KVM once and remembers the verdict.
    #[arg(long, default_value = "auto",
          value_parser = PossibleValuesParser::new(Accel::NAMES).try_map(|name| name.parse::<Accel>()))]
    accel: Accel,
    /// Guest kernel, vmlinux or bzImage (default: $PID1_KERNEL, else build/vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest root filesystem (default: $PID1_ROOTFS, else build/rootfs.erofs).
    #[arg(long)]
    rootfs: Option<PathBuf>,
}

impl VmArgs {
    fn config(&self) -> VmConfig {
        let mut config = VmConfig {
            memory_mb: self.memory,
            cpus: self.cpus,
            accel: self.accel,
            debug: self.debug,
            ..VmConfig::default()
        };
        if let Some(kernel) = &self.kernel {
            config.kernel = kernel.clone();
        }
        if let Some(rootfs) = &self.rootfs {
            config.rootfs = rootfs.clone();
        }
        config
    }
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    // The wire carries milliseconds in a u32: about 49 days.
    if !(0.0..=4_000_000.0).contains(&secs) {
        return Err(format!("`{text}`: give 0 (no limit) up to 4000000 seconds"));
    }
    Ok(secs)
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    Ok((name.to_owned(), value.to_owned()))
}

/// Reading the job's code, before any VM exists.
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error("cannot read the code from stdin")]
    Stdin(#[source] std::io::Error),
    #[error("cannot read the code file {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the stdin file {}", path.display())]
    StdinFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--stdin -: vmexec's stdin already holds the code")]
    StdinTwice,
    #[error("cannot read the upload {}", path.display())]
    Upload {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a run ended without the job's own exit status.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Vm(#[from] vmhost::Error),
    #[error("cannot {what} {path}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: FileError,
    },
    #[error("the session failed")]
    Session(#[from] vmhost::SessionError),
    #[error("cannot write the download {}", path.display())]
    Download {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure::Vm(e.into())
    }
}

impl From<vmhost::StartError> for Failure {
    fn from(e: vmhost::StartError) -> Self {
        Failure::Vm(e.into())
    }
}

impl Failure {
    /// The exit code, and the `kind` `--json` reports.
    fn classify(&self) -> (u8, String) {
        match self {
            Failure::Input(_) => (EXIT_NO_INPUT, "Input".to_owned()),
            Failure::Vm(vmhost::Error::Agent(AgentError::Refused { kind, .. })) => {
                (EXIT_REFUSED, format!("{kind:?}"))
            }
            Failure::Vm(vmhost::Error::Agent(AgentError::InvalidJob(_))) => {
                (EXIT_REFUSED, "InvalidJob".to_owned())
            }
            Failure::Vm(_) => (EXIT_FAILURE, "Vm".to_owned()),
            Failure::File { .. } | Failure::Download { .. } => (EXIT_FAILURE, "File".to_owned()),
            Failure::Session(_) => (EXIT_FAILURE, "Session".to_owned()),
        }
    }

    /// The error and its causes, `what failed: why: ...`.
    fn message(&self) -> String {
        let mut text = self.to_string();
        let mut cause = self.source();
        while let Some(e) = cause {
            // `transparent` variants repeat their inner error once.
            let line = e.to_string();
            if !text.ends_with(&line) {
                text = format!("{text}: {line}");
            }
            cause = e.source();
        }
        text
    }
}

fn main() -> ExitCode {
    // Ctrl-C: no QEMU, socket, temporary file or half-made template stays.
    let _ = ctrlc::set_handler(|| {
        vmhost::cleanup::interrupt();
        std::process::exit(130);
    });
    let args = match Cli::parse().command {
        Command::Run(args) => args,
        Command::Template(action) => return template(action),
        Command::Repl(args) => {
            return repl(args).unwrap_or_else(|failure| {
                eprintln!("vmexec: {}", failure.message());
                ExitCode::from(failure.classify().0)
            });
        }
    };
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
                println!("{}", json!({ "error": { "kind": kind, "message": message } }));
            } else {
                eprintln!("vmexec: {message}");
            }
            ExitCode::from(code)
        }
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
    if let Some(why) = vm.fallback() {
        eprintln!("vmexec: warning: {why}; booted cold");
    }
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
        let exit_code = if outcome.timed_out { -1 } else { outcome.code() };
        let object = json!({
            "stdout": String::from_utf8_lossy(&outcome.stdout),
            "stderr": String::from_utf8_lossy(&outcome.stderr),
            "exit_code": exit_code,
            "timed_out": outcome.timed_out,
            "stdout_truncated": outcome.stdout_truncated,
            "stderr_truncated": outcome.stderr_truncated,
            "peak_memory_bytes": outcome.peak_memory,
            "cpu_ms": round(outcome.cpu_time.as_secs_f64() * 1000.0),
            "start": start.name(),
            "boot_ms": round(times.boot_ms),
            "exec_ms": round(exec_ms),
            "total_ms": round(total_ms),
            "kernel_ms": round(times.kernel_ms),
            "init_ms": round(times.init_ms),
            "accel": accel.name(),
        });
        println!("{object}");
    }
    Ok(ExitCode::from(if outcome.timed_out { EXIT_TIMEOUT } else { (outcome.code() & 0xff) as u8 }))
}

/// `vmexec template ...`.
fn template(action: TemplateAction) -> ExitCode {
    let config = match &action {
        TemplateAction::Build(vm) | TemplateAction::Status(vm) => vm.config(),
        TemplateAction::Clear => VmConfig::default(),
    };
    let config = &config;
    // Before any VM ran here, KVM's verdict is not known: its template
    // would be the TCG one if the probe fails, as it does where KVM hangs.
    let accel = vmhost::accel::resolved(config.accel, &config.cache_dir).unwrap_or(Accel::Tcg);
    let fail = |what: &str, e: &dyn std::error::Error| {
        eprintln!("vmexec: {what}: {}", vmhost::template::chain(e));
        ExitCode::from(EXIT_FAILURE)
    };
    match action {
        TemplateAction::Build(_) => {
            let template = match Template::locate(config, accel) {
                Ok(template) => template,
                Err(e) => return fail("cannot make the template", &e),
            };
            if template.check(config).is_ok() {
                println!("{} (already made)", template.dir().display());
                return ExitCode::SUCCESS;
            }
            let started = Instant::now();
            match template.build(config, accel) {
                Ok(true) => {
                    println!(
                        "{} (made in {:.1} s)",
                        template.dir().display(),
                        started.elapsed().as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    eprintln!("vmexec: another process is making this template now");
                    ExitCode::from(EXIT_FAILURE)
                }
                Err(e) => fail("cannot make the template", &e),
            }
        }
        TemplateAction::Status(_) => match vmhost::template::list(config, accel) {
            Ok(all) if all.is_empty() => {
                println!("no templates in {}", config.cache_dir.join("templates").display());
                ExitCode::SUCCESS
            }
            Ok(all) => {
                for t in all {
                    let age = t.created.and_then(|c| c.elapsed().ok()).map_or(0, |a| a.as_secs());
                    println!(
                        "{}  {:.1} MiB on disk, {} MiB guest RAM, made {age} s ago{}",
                        t.dir.display(),
                        t.disk_bytes as f64 / (1 << 20) as f64,
                        t.ram_bytes >> 20,
                        if t.current { "  (used by these settings)" } else { "" }
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("cannot list the templates", &e),
        },
        TemplateAction::Clear => match vmhost::template::clear(&config.cache_dir) {
            Ok(n) => {
                println!("removed {n} template(s)");
                ExitCode::SUCCESS
            }
            Err(e) => fail("cannot remove the templates", &e),
        },
    }
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// `vmexec repl`: each line read goes to the session as a console takes
/// it; the output of each complete statement is printed once it ran. Exits
/// with the last step's status.
fn repl(args: ReplArgs) -> Result<ExitCode, Failure> {
    let lang = match args.lang {
        LangArg::Python => Lang::Python,
        LangArg::Sh => Lang::Shell,
    };
    let config = VmConfig { cold: args.cold, ..args.vm.config() };
    let mut vm = Vm::boot(&config)?;
    if let Some(why) = vm.fallback() {
        eprintln!("vmexec: warning: {why}; booted cold");
    }
    let terminal = std::io::stdin().is_terminal();
    let prompts = match lang {
        Lang::Shell => ("$ ", "> "),
        _ => (">>> ", "... "),
    };
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
    Ok(ExitCode::from(u8::try_from(last & 0xff).unwrap_or(1)))
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

fn parse_upload(arg: &str) -> Result<(PathBuf, String), String> {
    match arg.rsplit_once(':') {
        Some((local, guest)) if !local.is_empty() && !guest.is_empty() => Ok((local.into(), guest.into())),
        _ => Err(format!("expected LOCAL:GUEST, got {arg:?}")),
    }
}

fn parse_download(arg: &str) -> Result<(String, PathBuf), String> {
    let (guest, local) = match arg.split_once(':') {
        Some((guest, local)) => (guest, PathBuf::from(local)),
        None => (arg, PathBuf::from(arg.rsplit('/').next().unwrap_or(arg))),
    };
    if guest.is_empty() || local.as_os_str().is_empty() {
        return Err(format!("expected GUEST[:LOCAL], got {arg:?}"));
    }
    Ok((guest.into(), local))
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
    let from_extension = |path: &PathBuf| match path.extension().and_then(|e| e.to_str()) {
        Some("sh") => Some(Lang::Shell),
        Some("py") => Some(Lang::Python),
        _ => None,
    };
    let (code, guessed) = match (&args.code, &args.file) {
        (Some(code), _) => (code.clone().into_bytes(), None),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut code = Vec::new();
            std::io::stdin().read_to_end(&mut code).map_err(InputError::Stdin)?;
            (code, None)
        }
        (None, Some(path)) => {
            let code =
                std::fs::read(path).map_err(|source| InputError::File { path: path.clone(), source })?;
            (code, from_extension(path))
        }
        // clap requires one of them.
        (None, None) => unreachable!("clap requires -c CODE or FILE"),
    };
    let lang = match args.lang {
        Some(LangArg::Python) => Lang::Python,
        Some(LangArg::Sh) => Lang::Shell,
        None => guessed.or_else(|| from_shebang(&code)).unwrap_or(Lang::Python),
    };
    Ok((code, lang))
}

/// The language a `#!` line implies: Python for a Python interpreter (it
/// may then fork from the guest's warm one), else a script the guest's
/// kernel runs with the interpreter it names, as a shell job.
fn from_shebang(code: &[u8]) -> Option<Lang> {
    let code = code.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(code);
    let line = code.strip_prefix(b"#!")?.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let program = match words.next()? {
        env if env.ends_with("/env") => words.find(|w| !w.starts_with('-'))?,
        program => program,
    };
    let name = program.rsplit('/').next()?;
    Some(if name.starts_with("python3") || name == "python" { Lang::Python } else { Lang::Shell })
}
