//! `vmexec serve` for the tests: a service started with a private socket
//! and a private TMPDIR, spoken to by a small blocking HTTP/1.1 client
//! (`Connection: close`, chunked bodies decoded, NDJSON read line by line),
//! and its QEMU children counted from /proc.
//!
//! Each service runs under a watchdog shell that holds a pipe from the test
//! process: when the pipe closes (the [`Service`] is dropped, or the test
//! process dies however it dies) the shell sends the service SIGTERM, waits
//! for it and removes its directory. So a service kept in a `static`, which
//! is never dropped, still leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Pid;
use serde_json::Value;

use self::http::Wire;
pub use self::http::{Call, Response, Streaming};
use crate::{template_ready, text};

mod http;

/// How long any one wait of these tests may take: far past what a loaded
/// 2-core TCG host needs, short enough that a hang fails the test.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// Starts the service in the background, tells its pid, and on EOF of its
/// stdin stops it with SIGTERM, reaps it and removes its directory; it
/// exits with the service's status. The service's stdin is /dev/null (an
/// asynchronous list in a shell without job control).
const WATCHDOG: &str = r#"dir=$1; shift
"$@" >&2 &
service=$!
echo "$service"
read _ignored
kill -TERM "$service" 2>/dev/null
wait "$service"; status=$?
rm -rf "$dir"
exit "$status""#;

/// Where a service listens.
#[derive(Debug, Clone)]
pub enum Address {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// A running `vmexec serve`.
pub struct Service {
    watchdog: Child,
    /// Held open: closing it stops the service.
    lifeline: Option<ChildStdin>,
    pid: Pid,
    dir: PathBuf,
    address: Address,
    token: Option<String>,
}

impl Service {
    /// A service on a Unix socket in its own directory, with `args` after
    /// `--listen`; returns once it answers.
    pub fn unix(args: &[&str]) -> Service {
        let dir = private_dir();
        let address = Address::Unix(dir.join("service.sock"));
        Service::start(dir, address, None, args)
    }

    /// A service on TCP (a free port of 127.0.0.1) with a bearer token.
    pub fn tcp(token: &str, args: &[&str]) -> Service {
        let dir = private_dir();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{token}\n")).expect("write the token file");
        let mut all = vec!["--token-file", token_file.to_str().expect("a UTF-8 temp path")];
        all.extend_from_slice(args);
        Service::start(dir, Address::Tcp(free_port()), Some(token.to_owned()), &all)
    }

    fn start(dir: PathBuf, address: Address, token: Option<String>, args: &[&str]) -> Service {
        // Without the template every VM would boot cold, slowly.
        template_ready();
        let tmp = dir.join("tmp");
        std::fs::create_dir(&tmp).expect("make the service's TMPDIR");
        let log = std::fs::File::create(dir.join("stderr.log")).expect("make the service's log");
        let vmexec = crate::vmexec();
        let mut watchdog = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(&dir)
            .arg(vmexec.get_program())
            .args(["serve", "--listen", &address.to_string()])
            .args(args)
            .env("TMPDIR", &tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the service's watchdog");
        let lifeline = watchdog.stdin.take();
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read the service's pid");
        let pid = line.trim().parse().ok().and_then(Pid::from_raw).expect("the watchdog tells the pid");
        let service = Service { watchdog, lifeline, pid, dir, address, token };
        service.wait_for("the service to answer", || {
            assert!(service.is_running(), "the service exited:\n{}", service.log());
            service.try_send("GET", "/v1/health", &[], b"").is_ok_and(|r| r.status == 200)
        });
        service
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The service's TMPDIR, where its VMs keep their directories.
    pub fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// What the service wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Whether the service's process has not exited (a zombie has).
    pub fn is_running(&self) -> bool {
        process_state(self.pid).is_some_and(|state| state != 'Z')
    }

    /// Sends SIGTERM to the service itself (not through its watchdog).
    pub fn terminate(&self) {
        rustix::process::kill_process(self.pid, rustix::process::Signal::TERM).expect("signal the service");
    }

    /// Stops the service (SIGTERM) and gives its exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.lifeline = None;
        wait_child(&mut self.watchdog).unwrap_or_else(|| panic!("the service did not stop:\n{}", self.log()))
    }

    /// Waits until `ready` holds; panics with the service's log after
    /// [`PATIENCE`].
    pub fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ready() {
            assert!(Instant::now() < deadline, "never saw {what}; the service's log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // ---- requests ---------------------------------------------------------

    fn connect(&self) -> std::io::Result<Box<dyn Wire>> {
        let wire: Box<dyn Wire> = match &self.address {
            Address::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(PATIENCE))?;
                stream.set_write_timeout(Some(PATIENCE))?;
                Box::new(stream)
            }
            Address::Tcp(addr) => {
                let stream = TcpStream::connect(addr)?;
                stream.set_read_timeout(Some(PATIENCE))?;
                stream.set_write_timeout(Some(PATIENCE))?;
                Box::new(stream)
            }
        };
        Ok(wire)
    }

    /// Sends a request with exactly `headers` (the token is not added).
    fn write(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Call> {
        Call::send(self.connect()?, method, path, headers, body)
    }

    /// `headers` and the service's token, unless they carry one.
    fn with_token<'a>(
        &'a self,
        headers: &[(&'a str, &'a str)],
        auth: &'a mut String,
    ) -> Vec<(&'a str, &'a str)> {
        let mut all = headers.to_vec();
        if let Some(token) = &self.token
            && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            *auth = format!("Bearer {token}");
            all.push(("Authorization", auth.as_str()));
        }
        all
    }

    /// A request (with the service's token if it has one), or why it
    /// could not be made or answered.
    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut auth = String::new();
        self.write(method, path, &self.with_token(headers, &mut auth), body)?.try_answer()
    }

    /// Sends a request (with the service's token if it has one) and
    /// returns before its answer is read; dropping the [`Call`] hangs up.
    pub fn begin(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Call {
        let mut auth = String::new();
        self.write(method, path, &self.with_token(headers, &mut auth), body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; the service's log:\n{}", self.log()))
    }

    /// A request with exactly `headers`: no token unless they carry one.
    pub fn send_raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.write(method, path, headers, body)
            .and_then(Call::try_answer)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; the service's log:\n{}", self.log()))
    }

    /// A request, with the service's token if it has one.
    pub fn send(&self, method: &str, path: &str, body: &[u8]) -> Response {
        self.begin(method, path, &[], body).answer()
    }

    pub fn get(&self, path: &str) -> Response {
        self.send("GET", path, b"")
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.send("POST", path, body.to_string().as_bytes())
    }

    /// A run that must succeed: its result.
    pub fn run(&self, request: &Value) -> Value {
        let response = self.post("/v1/runs", request);
        assert_eq!(response.status, 200, "{request}: {}", response.text());
        response.json()
    }

    /// A streaming request to `path` (a run, a session's step): its answer,
    /// to be read line by line.
    pub fn stream(&self, path: &str, request: &Value) -> Streaming {
        self.begin("POST", path, &[("Accept", "application/x-ndjson")], request.to_string().as_bytes())
            .stream()
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Value {
        let response = self.get("/v1/health");
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    }

    /// One series of `GET /metrics`, named whole as the text has it (e.g.
    /// `pid1_runs_total{outcome="exited"}`); 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "{}", response.text());
        response
            .text()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    // ---- the machines -----------------------------------------------------

    /// The QEMU processes this service started that have not exited.
    pub fn qemus(&self) -> Vec<Pid> {
        let me = self.pid.as_raw_nonzero().get();
        processes()
            .filter(|&pid| {
                Stat::of(pid).is_some_and(|s| s.ppid == me && s.comm.contains("qemu") && s.state != 'Z')
            })
            .collect()
    }

    /// Waits until the pool is full and still, nothing runs and nothing
    /// waits, and the only QEMUs are the pooled ones (no session is open).
    pub fn settle(&self) {
        self.wait_for("the pool to settle", || {
            let health = self.health();
            let pool = &health["pool"];
            pool["ready"] == pool["target"]
                && pool["warming"] == 0
                && pool["in_use"] == 0
                && pool["waiting"] == 0
                && health["sessions"] == 0
                && pool["ready"].as_u64().and_then(|n| usize::try_from(n).ok()) == Some(self.qemus().len())
        });
    }

    /// Waits until none of `pids` is a live process.
    pub fn wait_gone(&self, what: &str, pids: &[Pid]) {
        self.wait_for(what, || pids.iter().all(|&pid| process_state(pid).is_none_or(|s| s == 'Z')));
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.lifeline = None;
        if wait_child(&mut self.watchdog).is_none() {
            let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
            let _ = self.watchdog.kill();
            let _ = self.watchdog.wait();
        }
    }
}

/// Runs `vmexec serve` with `args` expecting it to refuse to start: its
/// exit status and its stderr.
pub fn refused_start(args: &[&str]) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut child = crate::vmexec()
        .arg("serve")
        .args(args)
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("make the log"))
        .spawn()
        .expect("start vmexec serve");
    let status = wait_child(&mut child).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("vmexec serve {args:?} kept running")
    });
    (status, std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address")
}

/// A directory for one service, removed by its watchdog.
fn private_dir() -> PathBuf {
    tempfile::Builder::new().prefix("pid1-service-").tempdir().expect("a temp dir").keep()
}

/// Waits up to [`PATIENCE`] for `child` to exit.
fn wait_child(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The fields of /proc/PID/stat these tests read.
struct Stat {
    comm: String,
    state: char,
    ppid: i32,
}

impl Stat {
    fn of(pid: Pid) -> Option<Stat> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
        // The name is in parentheses and may hold spaces and parentheses.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some(Stat { comm, state, ppid })
    }
}

/// A process's state letter (`Z` for a zombie); `None` once it is reaped.
pub fn process_state(pid: Pid) -> Option<char> {
    Stat::of(pid).map(|s| s.state)
}

/// Every QEMU on the host whose command line names `path` (a service's
/// TMPDIR is on the command line of each of its QEMUs).
pub fn qemus_naming(path: &Path) -> Vec<Pid> {
    let path = path.to_string_lossy();
    processes()
        .filter(|&pid| {
            let cmdline =
                std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
            process_state(pid).is_some_and(|s| s != 'Z')
                && cmdline.windows(4).any(|w| w == b"qemu")
                && text(&cmdline).contains(&*path)
        })
        .collect()
}

/// Every process on the host.
fn processes() -> impl Iterator<Item = Pid> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok().and_then(Pid::from_raw))
}

/// Whether `path` exists (a socket file included).
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
