//! The command line's arguments: what each command takes, and the parsers
//! that refuse a bad value before anything runs.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Subcommand, ValueEnum};
use vmhost::api::Language;
use vmhost::{Accel, VmConfig};

use crate::cmd::remote::{SERVER_ENV, Server};

#[derive(clap::Args)]
pub struct ReplArgs {
    /// Language of the session.
    #[arg(short, long, value_enum, default_value = "python")]
    pub lang: LangArg,
    /// Boot the kernel instead of restoring the snapshot template.
    #[arg(long)]
    pub cold: bool,
    /// Hold the session in a running service (`vmexec serve`) instead of
    /// a VM here: unix:PATH or http://HOST:PORT. The service runs whole
    /// cells, so vmexec sends each statement once it is complete, by the
    /// console's rules (Python: once nothing is open, a block at a blank
    /// line; shell: `bash -n`). Unlike `python3 -i`, a line at the left
    /// margin inside a block waits for the blank line with it, and bare
    /// expressions inside a block are not echoed.
    #[arg(long, value_name = "unix:PATH|http://HOST:PORT", env = SERVER_ENV,
          conflicts_with_all = ["cold", "memory", "cpus", "debug", "accel", "kernel", "rootfs", "offline", "no_preload"])]
    pub server: Option<Server>,
    /// With --server over http://: a file holding the service's bearer
    /// token (default: the token itself in $PID1_TOKEN).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
    /// With --server: seconds each statement may run (0: no limit; default
    /// 30, a service step's), so that a runaway one does not hold the
    /// service's VM; a local session's statements have no limit.
    #[arg(long, value_parser = parse_timeout, requires = "server")]
    pub timeout: Option<f64>,
    #[command(flatten)]
    pub vm: VmArgs,
}

#[derive(Subcommand)]
pub enum TemplateAction {
    /// Make the template for these VM settings now (if it is not there).
    Build(VmArgs),
    /// List the templates: where, how big, and which one these settings use.
    Status(VmArgs),
    /// Remove every template.
    Clear,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LangArg {
    Python,
    #[value(alias = "shell")]
    Sh,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Language of the code (default: from the file's extension, else python).
    #[arg(short, long, value_enum)]
    pub lang: Option<LangArg>,
    /// The code to run.
    #[arg(short = 'c', long = "code", conflicts_with = "file")]
    pub code: Option<String>,
    /// A file with the code to run; `-` reads it from stdin.
    #[arg(required_unless_present = "code")]
    pub file: Option<PathBuf>,
    /// Seconds the job may run before it is killed (0: no limit).
    #[arg(long, default_value_t = 30.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// An environment variable for the job, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory of the job in the guest (default: its home).
    #[arg(long)]
    pub cwd: Option<String>,
    /// Print one JSON object with the output, exit status and timings.
    #[arg(long)]
    pub json: bool,
    /// Bytes of stdout (and of stderr) kept before the rest is dropped.
    #[arg(long, default_value_t = proto::DEFAULT_OUTPUT_LIMIT)]
    pub output_limit: u32,
    /// Boot the kernel instead of restoring the snapshot template.
    #[arg(long)]
    pub cold: bool,
    /// Python: exec a fresh interpreter instead of forking the warm one.
    #[arg(long)]
    pub fresh: bool,
    /// The job's stdin, streamed from this file; `-`: vmexec's own stdin
    /// (when the code is not read from there). Default: /dev/null.
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,
    /// Memory the job's processes may use together, in MiB (default: three
    /// quarters of the guest's); past it the job is OOM-killed.
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u32).range(1..))]
    pub memory_limit: Option<u32>,
    /// Put a local file into the guest before the job, LOCAL:GUEST (GUEST
    /// relative to the job's home, or absolute inside it; repeatable).
    #[arg(long, value_name = "LOCAL:GUEST", value_parser = parse_upload)]
    pub upload: Vec<(PathBuf, String)>,
    /// Get a guest file after the job, GUEST[:LOCAL] (LOCAL defaults to the
    /// file's name in the current directory; repeatable).
    #[arg(long, value_name = "GUEST[:LOCAL]", value_parser = parse_download)]
    pub download: Vec<(String, PathBuf)>,
    /// Send the run to a running service (`vmexec serve`) instead of
    /// booting a VM here: unix:PATH or http://HOST:PORT. Output, exit codes
    /// and --json are a local run's. The service's VMs are its own, so
    /// --cold, --fresh and the VM flags are refused with it, and so is
    /// --cwd (its API has none); --stdin must be UTF-8 text. --package
    /// goes with the run (--offline and --no-preload are the service's).
    #[arg(long, value_name = "unix:PATH|http://HOST:PORT", env = SERVER_ENV,
          conflicts_with_all = ["cold", "fresh", "cwd", "memory", "cpus", "debug", "accel", "kernel", "rootfs", "offline", "no_preload"])]
    pub server: Option<Server>,
    /// With --server over http://: a file holding the service's bearer
    /// token (default: the token itself in $PID1_TOKEN).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub vm: VmArgs,
}

/// What a VM is made of; a template is made for one combination.
#[derive(clap::Args)]
pub struct VmArgs {
    /// Guest memory in MiB (Python needs some 64 MiB to be useful).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub cpus: u32,
    /// Show the kernel console on stderr.
    #[arg(long)]
    pub debug: bool,
    /// Accelerator: auto probes KVM once and remembers the verdict.
    #[arg(long, default_value = "auto",
          value_parser = PossibleValuesParser::new(Accel::NAMES).try_map(|name| name.parse::<Accel>()))]
    pub accel: Accel,
    /// Guest kernel, vmlinux or bzImage (default: $PID1_KERNEL, else build/vmlinux).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest root filesystem (default: $PID1_ROOTFS, else build/rootfs.erofs).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// A package for the guest's Python, as a pip requirement such as
    /// `numpy==2.1.3` (repeatable): resolved and installed on the host into
    /// a read-only layer, imported in its own template's zygote.
    #[arg(short = 'p', long = "package", value_name = "SPEC")]
    pub packages: Vec<String>,
    /// With --package: use only the packages cache, never a registry.
    #[arg(long)]
    pub offline: bool,
    /// With --package: do not import the set's modules in the template's
    /// zygote (a job imports them itself).
    #[arg(long)]
    pub no_preload: bool,
}

impl VmArgs {
    pub fn config(&self) -> VmConfig {
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

impl LangArg {
    pub fn language(self) -> Language {
        match self {
            LangArg::Python => Language::Python,
            LangArg::Sh => Language::Sh,
        }
    }
}

pub fn parse_timeout(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    // The wire carries milliseconds in a u32: about 49 days.
    if !(0.0..=4_000_000.0).contains(&secs) {
        return Err(format!("`{text}`: give 0 (no limit) up to 4000000 seconds"));
    }
    Ok(secs)
}

pub fn parse_env(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    Ok((name.to_owned(), value.to_owned()))
}

pub fn parse_upload(arg: &str) -> Result<(PathBuf, String), String> {
    match arg.rsplit_once(':') {
        Some((local, guest)) if !local.is_empty() && !guest.is_empty() => Ok((local.into(), guest.into())),
        _ => Err(format!("expected LOCAL:GUEST, got {arg:?}")),
    }
}

pub fn parse_download(arg: &str) -> Result<(String, PathBuf), String> {
    let (guest, local) = match arg.split_once(':') {
        Some((guest, local)) => (guest, PathBuf::from(local)),
        None => (arg, PathBuf::from(arg.rsplit('/').next().unwrap_or(arg))),
    };
    if guest.is_empty() || local.as_os_str().is_empty() {
        return Err(format!("expected GUEST[:LOCAL], got {arg:?}"));
    }
    Ok((guest.into(), local))
}

#[cfg(test)]
mod tests;
