//! `vmexec serve`: the sandbox service, a warm pool of VMs behind an HTTP
//! API (see the `vmserve` crate), until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vmserve::options::{self, Listen, Options};

use crate::args::VmArgs;
use crate::failure::EXIT_FAILURE;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where to listen: unix:PATH (mode 0600) or tcp:HOST:PORT (needs
    /// --token-file). Default: unix:$XDG_RUNTIME_DIR/pid1.sock, else
    /// unix:/tmp/pid1-UID.sock.
    #[arg(long, value_name = "unix:PATH|tcp:HOST:PORT")]
    pub listen: Option<Listen>,
    /// A file holding the bearer token every request must carry.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Warm VMs kept ready to hand out.
    #[arg(long, default_value_t = options::DEFAULT_POOL)]
    pub pool: usize,
    /// Most VMs at once: pooled, running and held by sessions.
    #[arg(long, default_value_t = options::DEFAULT_MAX_VMS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub max_vms: usize,
    /// Runs that may wait for a VM when all are busy; past it, 503.
    #[arg(long, default_value_t = options::DEFAULT_QUEUE)]
    pub queue: usize,
    /// Seconds a run may wait for a VM before it gets 503.
    #[arg(long, default_value_t = options::DEFAULT_QUEUE_TIMEOUT.as_secs_f64())]
    pub queue_timeout: f64,
    /// Seconds SIGTERM lets running runs finish before they are killed.
    #[arg(long, default_value_t = options::DEFAULT_GRACE.as_secs_f64())]
    pub grace: f64,
    /// Seconds a session may sit idle before it is closed.
    #[arg(long, default_value_t = options::DEFAULT_SESSION_IDLE.as_secs_f64())]
    pub session_idle: f64,
    /// A set of packages (pip requirements) to keep warm VMs of too, e.g.
    /// `--pool-packages numpy==2.1.3 pandas==2.2.3`: a run naming this set
    /// is handed a warm VM with its layer and its modules imported.
    #[arg(long, value_name = "SPEC", num_args = 1..)]
    pub pool_packages: Vec<String>,
    #[command(flatten)]
    pub vm: VmArgs,
}

/// The default socket: the user's runtime directory, else /tmp.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| d.is_absolute()) {
        Some(dir) => dir.join("pid1.sock"),
        None => PathBuf::from(format!("/tmp/pid1-{}.sock", rustix::process::getuid().as_raw())),
    }
}

fn seconds(name: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("--{name}: `{secs}` is not a number of seconds"))
}

fn options(args: ServeArgs) -> Result<Options, String> {
    let listen = args.listen.unwrap_or_else(|| Listen::Unix(default_socket()));
    let mut options = Options::new(listen);
    if let Some(file) = &args.token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("the token file {} is empty", file.display()));
        }
        options.token = Some(token.to_owned());
    }
    options.pool = args.pool;
    options.max_vms = args.max_vms;
    options.queue = args.queue;
    options.queue_timeout = seconds("queue-timeout", args.queue_timeout)?;
    options.grace = seconds("grace", args.grace)?;
    options.session_idle = seconds("session-idle", args.session_idle)?;
    if !args.vm.packages.is_empty() {
        return Err("-p/--package names one run's packages; runs sent to the service name theirs in \
                    `packages`, and --pool-packages SPEC... keeps a set warm"
            .into());
    }
    vmhost::packages::Requirements::parse(&args.pool_packages)
        .map_err(|e| format!("--pool-packages: {e}"))?;
    options.vm = args.vm.config();
    options.packages = vmhost::packages::PackageOptions {
        offline: args.vm.offline,
        preload: !args.vm.no_preload,
        ..vmhost::packages::PackageOptions::new(&options.vm.cache_dir)
    };
    options.pool_packages = args.pool_packages;
    Ok(options)
}

pub fn main(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let options = match options(args) {
        Ok(options) => options,
        Err(why) => {
            eprintln!("vmexec serve: {why}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vmexec serve: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(vmserve::serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmexec serve: {}", vmhost::error::chain(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
