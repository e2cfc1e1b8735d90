//! What a service is started with: where it listens, who may call it, and
//! the sizes of its pool, its queue and its waits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use vmhost::VmConfig;
use vmhost::packages::PackageOptions;

/// Where the service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket, made mode 0600: only its owner may connect.
    Unix(PathBuf),
    /// TCP, which requires a bearer token.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/pid1.sock".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp:") {
            return addr
                .parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("tcp:{addr}: {e} (give HOST:PORT, e.g. tcp:127.0.0.1:8470)"));
        }
        Err(format!("`{text}`: give unix:PATH or tcp:HOST:PORT"))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// Warm VMs kept ready when nobody says: two hand out two runs at once
/// without a restore, and cost ~40 MiB of host memory each (PSS).
pub const DEFAULT_POOL: usize = 2;

/// VMs at once when nobody says: on a 2-core TCG host more only queue
/// behind each other for the CPU.
pub const DEFAULT_MAX_VMS: usize = 8;

/// Runs that may wait for a VM when all are busy.
pub const DEFAULT_QUEUE: usize = 64;

/// How long a run waits for a VM before it is turned away with 503.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long SIGTERM lets running runs finish before they are killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How long a session may sit idle before it is closed.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(300);

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: Listen,
    /// Required on TCP: every request must carry `Authorization: Bearer`.
    pub token: Option<String>,
    pub pool: usize,
    pub max_vms: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
    pub grace: Duration,
    pub session_idle: Duration,
    pub vm: VmConfig,
    /// How runs' packages are resolved and kept.
    pub packages: PackageOptions,
    /// A set of packages the pool keeps warm VMs of, beside the default
    /// (no packages).
    pub pool_packages: Vec<String>,
}

impl Options {
    pub fn new(listen: Listen) -> Options {
        Options {
            listen,
            token: None,
            pool: DEFAULT_POOL,
            max_vms: DEFAULT_MAX_VMS,
            queue: DEFAULT_QUEUE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            grace: DEFAULT_GRACE,
            session_idle: DEFAULT_SESSION_IDLE,
            packages: PackageOptions::new(&VmConfig::default().cache_dir),
            vm: VmConfig::default(),
            pool_packages: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_or_say_what_is_wanted() {
        assert_eq!("unix:/tmp/s".parse(), Ok(Listen::Unix("/tmp/s".into())));
        assert_eq!("tcp:127.0.0.1:8470".parse(), Ok(Listen::Tcp("127.0.0.1:8470".parse().unwrap())));
        assert!("unix:".parse::<Listen>().unwrap_err().contains("socket path"));
        assert!("tcp:localhost".parse::<Listen>().unwrap_err().contains("HOST:PORT"));
        assert!("http://x".parse::<Listen>().unwrap_err().contains("unix:PATH"));
        assert_eq!(Listen::Unix("/a".into()).to_string(), "unix:/a");
    }
}
