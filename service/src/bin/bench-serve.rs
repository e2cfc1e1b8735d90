//! `just bench-serve`: what the sandbox service buys. In one run, alternating,
//! a one-line job through `vmexec serve` (a warm VM from its pool, over its
//! Unix socket) against the same job as a whole `vmexec run` (a VM restored
//! from the template); then the service under load, a fresh VM per run:
//! runs per second, latency, the host CPU a run costs, the service's own
//! memory, and the memory of each idle pooled VM.
//!
//! Only ratios measured in one run mean much on a shared TCG machine.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use vmhost::api::{RunResult, StartKind};
use vmhost::{Job, Lang, Start, Vm, VmConfig};

/// Warm VMs of the service in the latency rounds: the service's default.
/// Every sample waits for the pool to be full, so its size only decides
/// how long the refill between samples takes.
const LATENCY_POOL: usize = 2;

/// VMs the service may hold at once in every phase: on 2 cores more than
/// ~4 QEMUs at once only queue behind each other for the CPU.
const MAX_VMS: usize = 4;

/// Warm VMs in the load runs: the service's default. Runs that find none
/// ready restore one on demand (unwarmed) while a slot is free.
const LOAD_POOL: usize = 2;

/// Idle pooled VMs whose memory is read: as many as the slots allow, so
/// the template's shared pages are split between several of ours.
const IDLE_POOL: usize = 4;

/// How long the pool may take to fill: four restores and warm-ups take
/// ~1 s each here; a loaded shared machine gets a wide margin.
const FILL_WAIT: Duration = Duration::from_secs(120);

/// How often health is asked while the pool fills.
const FILL_POLL: Duration = Duration::from_millis(20);

/// How long one run may take, client side: the job's default timeout (30 s)
/// and the service's margin past it (30 s), after at most the queue's
/// deadline (30 s).
const RUN_WAIT: Duration = Duration::from_secs(120);

/// Health, metrics, a connection: answered at once by a live service.
const QUICK_WAIT: Duration = Duration::from_secs(10);

/// How long SIGTERM may take: the service's grace (10 s) and some.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// How long idle pooled VMs are watched for the CPU they use idle.
const IDLE_WATCH: Duration = Duration::from_secs(2);

/// How often the service's RSS is read during a load run.
const RSS_SAMPLE: Duration = Duration::from_millis(50);

/// Clock ticks per second in /proc's CPU times: USER_HZ, which the kernel
/// fixes at 100 for user space on x86.
const USER_HZ: f64 = 100.0;

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{0}\nusage: bench-serve [--runs N] [--load-runs N] [--clients N,N,...] [--load-pool N]")]
    Usage(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Http { what: &'static str, source: hyper::Error },
    #[error("{what}: no answer within {} s", .after.as_secs())]
    Timeout { what: &'static str, after: Duration },
    #[error("the service {0}")]
    Service(String),
    #[error("a VM of this bench: {0}")]
    Vm(String),
    #[error("{what} said {got}")]
    Output { what: String, got: String },
}

type Result<T> = std::result::Result<T, BenchError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

struct Args {
    runs: usize,
    load_runs: usize,
    clients: Vec<usize>,
    load_pool: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { runs: 20, load_runs: 200, clients: vec![4, 16], load_pool: LOAD_POOL };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or_else(|| BenchError::Usage(format!("{flag} needs a value")))?;
        let number = |text: &str| {
            text.parse::<usize>()
                .ok()
                .filter(|n| *n > 0 || flag == "--load-pool")
                .ok_or_else(|| BenchError::Usage(format!("{flag}: `{text}` is not a count")))
        };
        match flag.as_str() {
            "--runs" => args.runs = number(&value)?,
            "--load-runs" => args.load_runs = number(&value)?,
            "--load-pool" => args.load_pool = number(&value)?,
            "--clients" => args.clients = value.split(',').map(number).collect::<Result<_>>()?,
            _ => return Err(BenchError::Usage(format!("unknown flag {flag}"))),
        }
    }
    Ok(args)
}

// ---- /proc --------------------------------------------------------------

/// What one process's /proc/PID/stat says (proc(5)), CPU in clock ticks.
struct Stat {
    ppid: i32,
    /// utime + stime: its own threads.
    cpu: u64,
    /// cutime + cstime: its children that it has waited for.
    reaped: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from after its last ')', where field 3 is.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        cpu: field(14)? + field(15)?,
        reaped: field(16)? + field(17)?,
    })
}

/// The live children of `parent`.
fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

/// A `Key:  N kB` figure of /proc/PID/status or smaps_rollup, in KiB.
fn kib(pid: i32, file: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')))?;
    line[key.len() + 1..].split_whitespace().next()?.parse().ok()
}

/// A QEMU's memory by what holds it, in KiB: (PSS, private).
#[derive(Default, Clone, Copy)]
struct Parts {
    /// The guest's RAM: the template's `ram` file mapped private, so its
    /// pages are shared until the guest writes them.
    guest: (u64, u64),
    /// TCG's translated code: QEMU's one anonymous read-write-execute
    /// mapping. KVM would have none.
    tcg: (u64, u64),
    /// QEMU itself: heap, libraries, device state.
    rest: (u64, u64),
}

/// /proc/PID/smaps, each mapping's PSS and private pages put in [`Parts`].
fn memory_parts(pid: i32) -> Parts {
    let mut parts = Parts::default();
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/smaps")) else { return parts };
    let mut at = &mut parts.rest;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(first), Some(second)) = (words.next(), words.next()) else { continue };
        if !first.ends_with(':') {
            // A mapping's header: range, permissions, offset, device, inode, path.
            let path = words.nth(3).unwrap_or("");
            at = if path.ends_with("/ram") && path.contains("/templates/") {
                &mut parts.guest
            } else if second == "rwxp" && path.is_empty() {
                &mut parts.tcg
            } else {
                &mut parts.rest
            };
            continue;
        }
        let kib: u64 = second.parse().unwrap_or(0);
        match first {
            "Pss:" => at.0 += kib,
            "Private_Clean:" | "Private_Dirty:" => at.1 += kib,
            _ => {}
        }
    }
    parts
}

/// Processes whose command line mentions `text`: a QEMU started for a VM
/// names its directory under the service's TMPDIR.
fn processes_naming(text: &str) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| String::from_utf8_lossy(&line).contains(text))
        })
        .collect()
}

/// QEMUs on the host, whoever's: they share the template's pages with ours.
fn qemus_on_host() -> usize {
    processes_naming("qemu-system").len()
}

// ---- HTTP over the service's socket ---------------------------------------

/// A connection's sending half; its other half is a task that ends when
/// this is dropped or the service closes the connection.
type Sender = SendRequest<Full<Bytes>>;

async fn connect(socket: &Path) -> Result<Sender> {
    let connecting = tokio::net::UnixStream::connect(socket);
    let stream = tokio::time::timeout(QUICK_WAIT, connecting)
        .await
        .map_err(|_| BenchError::Timeout { what: "connecting", after: QUICK_WAIT })?
        .map_err(io(format!("connecting to {}", socket.display())))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| BenchError::Http { what: "the HTTP handshake", source })?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request and its whole answer: the status and the body.
async fn exchange(
    sender: &mut Sender,
    method: Method,
    path: &str,
    body: Bytes,
    wait: Duration,
) -> Result<(u16, Bytes)> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("a request from constant parts");
    let answered = async {
        let http = |what| move |source| BenchError::Http { what, source };
        sender.ready().await.map_err(http("the connection"))?;
        let response = sender.send_request(request).await.map_err(http("the request"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(http("the response body"))?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(wait, answered)
        .await
        .map_err(|_| BenchError::Timeout { what: path_name(path), after: wait })?
}

fn path_name(path: &str) -> &'static str {
    match path {
        "/v1/runs" => "a run",
        "/v1/health" => "health",
        _ => "the service",
    }
}

/// A request on a connection of its own, as a simple client makes it.
async fn exchange_fresh(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
    wait: Duration,
) -> Result<(u16, Bytes)> {
    let mut sender = connect(socket).await?;
    exchange(&mut sender, method, path, body, wait).await
}

/// A run's result, or what the service said instead.
fn run_result(answer: (u16, Bytes)) -> Result<RunResult> {
    let (status, body) = answer;
    let text = || String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(BenchError::Output { what: format!("POST /v1/runs ({status})"), got: text() });
    }
    serde_json::from_slice(&body)
        .map_err(|e| BenchError::Output { what: format!("POST /v1/runs ({e})"), got: text() })
}

// ---- the service under test -----------------------------------------------

/// One `vmexec serve` of ours, with a private TMPDIR and its own log.
struct Service {
    child: Child,
    pid: i32,
    socket: PathBuf,
    log: PathBuf,
    tmp: PathBuf,
}

impl Service {
    fn start(work: &Work, name: &str, pool: usize) -> Result<Service> {
        let socket = work.dir.join(format!("{name}.sock"));
        let log = work.dir.join(format!("{name}.log"));
        let log_file = fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let mut command = Command::new(&work.vmexec);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--pool", &pool.to_string(), "--max-vms", &MAX_VMS.to_string()])
            .env("TMPDIR", &work.tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // Spawned as vmhost spawns QEMU: if this bench dies, so does the
        // service, and its QEMUs with it.
        let child = vmhost::qemu::process::spawn(command)
            .map_err(io(format!("starting {}", work.vmexec.display())))?;
        let pid = i32::try_from(child.id()).expect("a pid fits an i32");
        Ok(Service { child, pid, socket, log, tmp: work.tmp.clone() })
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => Err(BenchError::Service(format!("exited early; its log ends:\n{}", self.log_tail()))),
        }
    }

    async fn health(&self) -> Result<serde_json::Value> {
        let (status, body) =
            exchange_fresh(&self.socket, Method::GET, "/v1/health", Bytes::new(), QUICK_WAIT).await?;
        let health: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if status != 200 {
            return Err(BenchError::Output { what: "GET /v1/health".into(), got: health.to_string() });
        }
        Ok(health)
    }

    /// Waits until every warm VM the pool aims at is ready and none is
    /// being warmed, so a run taken now is a warm-pool hit and no refill
    /// competes with it for the CPU.
    async fn wait_full(&mut self) -> Result<()> {
        let deadline = Instant::now() + FILL_WAIT;
        loop {
            self.check_alive()?;
            // Until it listens, the socket refuses: that is not a failure.
            if let Ok(health) = self.health().await {
                let pool = &health["pool"];
                if health["template"]["state"] != "ready" {
                    return Err(BenchError::Service(format!("has no template: {}", health["template"])));
                }
                if pool["ready"] == pool["target"] && pool["warming"] == 0 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout { what: "the pool filling", after: FILL_WAIT });
            }
            tokio::time::sleep(FILL_POLL).await;
        }
    }

    /// The service's figures from /metrics, by name (labels included).
    async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let (_, body) =
            exchange_fresh(&self.socket, Method::GET, "/metrics", Bytes::new(), QUICK_WAIT).await?;
        let text = String::from_utf8_lossy(&body);
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect())
    }

    /// CPU ticks of the service and its VMs: its own, its reaped children's
    /// (cutime + cstime) and its live children's. Read while the service
    /// is idle, so no child is reaped between the two reads.
    fn cpu_ticks(&self) -> u64 {
        let own = stat(self.pid).map_or(0, |s| s.cpu + s.reaped);
        own + children(self.pid).into_iter().filter_map(stat).map(|s| s.cpu + s.reaped).sum::<u64>()
    }

    fn own_cpu_ticks(&self) -> u64 {
        stat(self.pid).map_or(0, |s| s.cpu)
    }

    /// SIGTERM, then the checks: it exited 0 within the grace and left no
    /// QEMU, no socket and no VM directory behind.
    fn stop(mut self) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(self.pid).expect("a child's pid is positive");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_WAIT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    return Err(BenchError::Service(format!(
                        "did not stop within {} s of SIGTERM",
                        STOP_WAIT.as_secs()
                    )));
                }
            }
        };
        let mut left = Vec::new();
        if !status.success() {
            left.push(format!("it exited with {status}; its log ends:\n{}", self.log_tail()));
        }
        left.extend(leftovers(&self.tmp));
        if self.socket.exists() {
            left.push(format!("its socket {}", self.socket.display()));
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(BenchError::Service(format!("left behind: {}", left.join("; "))))
        }
    }
}

impl Drop for Service {
    /// On an error path the service is asked to stop as on SIGTERM, so it
    /// cleans up; killed only if it does not. A SIGKILL leaves behind the
    /// directories of VMs still starting (their QEMUs die with it).
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VM directories and QEMUs left under a private TMPDIR.
fn leftovers(tmp: &Path) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(dir) = fs::read_dir(tmp) {
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with("vmexec-") {
                left.push(format!("the directory {}", entry.path().display()));
            }
        }
    }
    for pid in processes_naming(&tmp.display().to_string()) {
        left.push(format!("process {pid}"));
    }
    left
}

/// Where this bench keeps its services' sockets, logs and TMPDIR.
struct Work {
    dir: PathBuf,
    tmp: PathBuf,
    vmexec: PathBuf,
}

impl Work {
    fn new() -> Result<Work> {
        let dir = std::env::temp_dir().join(format!("bench-serve-{}", std::process::id()));
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let vmexec = std::env::current_exe().map_err(io("locating this program"))?.with_file_name("vmexec");
        Ok(Work { dir, tmp, vmexec })
    }
}

// ---- figures --------------------------------------------------------------

/// Nearest-rank percentile: the smallest sample with `p`% at or below it
/// (with 20 samples p95 is the 19th, p99 the largest).
fn percentile(values: &[f64], p: usize) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p * v.len()).div_ceil(100).max(1);
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn row(name: &str, values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!(
        "| {name} | {:.1} | {:.1} | {:.1} | {min:.1}–{max:.1} |",
        median(values),
        percentile(values, 95),
        percentile(values, 99)
    )
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

// ---- the latency rounds ---------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Python,
    Shell,
}

impl Kind {
    fn body(self) -> Bytes {
        Bytes::from_static(match self {
            Kind::Python => br#"{"code":"print(1)","language":"python"}"#,
            Kind::Shell => br#"{"code":"echo hi","language":"sh"}"#,
        })
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Python => "1\n",
            Kind::Shell => "hi\n",
        }
    }

    fn vmexec_args(self) -> [&'static str; 5] {
        match self {
            Kind::Python => ["run", "--lang", "python", "-c", "print(1)"],
            Kind::Shell => ["run", "--lang", "sh", "-c", "echo hi"],
        }
    }
}

/// One run through the service, timed by the client: request sent (or,
/// on a fresh connection, the connect begun) to the whole result read.
struct ServiceSample {
    client_ms: f64,
    result: RunResult,
}

fn checked(kind: Kind, result: RunResult) -> Result<RunResult> {
    if result.stdout != kind.expected() || result.exit_code != 0 {
        return Err(BenchError::Output {
            what: "a run".into(),
            got: format!("{:?}, exit {}", result.stdout, result.exit_code),
        });
    }
    Ok(result)
}

async fn service_run(socket: &Path, kept: Option<&mut Sender>, kind: Kind) -> Result<ServiceSample> {
    let began = Instant::now();
    let answer = match kept {
        Some(sender) => exchange(sender, Method::POST, "/v1/runs", kind.body(), RUN_WAIT).await?,
        None => exchange_fresh(socket, Method::POST, "/v1/runs", kind.body(), RUN_WAIT).await?,
    };
    let client_ms = ms(began);
    let result = checked(kind, run_result(answer)?)?;
    if result.start != StartKind::Pooled {
        return Err(BenchError::Output {
            what: "a run with the pool full".into(),
            got: format!("start {:?}", result.start),
        });
    }
    Ok(ServiceSample { client_ms, result })
}

/// One whole `vmexec run`, process start to exit.
fn vmexec_run(work: &Work, kind: Kind) -> Result<f64> {
    let began = Instant::now();
    let out = Command::new(&work.vmexec)
        .args(kind.vmexec_args())
        .env("TMPDIR", &work.tmp)
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {}", work.vmexec.display())))?;
    let took = ms(began);
    if !out.status.success() || out.stdout != kind.expected().as_bytes() || !out.stderr.is_empty() {
        let got = format!(
            "{:?} / {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return Err(BenchError::Output { what: "vmexec run".into(), got });
    }
    Ok(took)
}

/// Per kind: fresh connection, kept-alive connection, `vmexec run`.
#[derive(Default)]
struct Latency {
    fresh: Vec<ServiceSample>,
    kept: Vec<ServiceSample>,
    whole: Vec<f64>,
}

async fn latency(work: &Work, runs: usize) -> Result<[Latency; 2]> {
    let mut service = Service::start(work, "latency", LATENCY_POOL)?;
    service.wait_full().await?;
    let mut kept = connect(&service.socket).await?;
    // The kept connection's first request is not a run: its samples are
    // then all on a connection already open.
    exchange(&mut kept, Method::GET, "/v1/health", Bytes::new(), QUICK_WAIT).await?;
    let mut figures = [Latency::default(), Latency::default()];
    // Round 0 is not kept: the first of each kind pays for cold caches.
    for round in 0..=runs {
        for (i, kind) in [Kind::Python, Kind::Shell].into_iter().enumerate() {
            service.wait_full().await?;
            let fresh = service_run(&service.socket, None, kind).await?;
            service.wait_full().await?;
            if kept.is_closed() {
                kept = connect(&service.socket).await?;
                eprintln!("bench-serve: the kept-alive connection was closed; opened another");
            }
            let on_kept = service_run(&service.socket, Some(&mut kept), kind).await?;
            // `vmexec run` too starts with the service idle and its pool full.
            service.wait_full().await?;
            let whole = vmexec_run(work, kind)?;
            if round > 0 {
                figures[i].fresh.push(fresh);
                figures[i].kept.push(on_kept);
                figures[i].whole.push(whole);
            }
        }
        eprintln!("bench-serve: latency round {round}/{runs} done");
    }
    drop(kept);
    service.stop()?;
    Ok(figures)
}

/// One figure of a service sample.
type Pick = fn(&ServiceSample) -> f64;

fn print_latency(figures: &[Latency; 2]) {
    println!("| ms, client side | median | p95 | p99 | min–max |");
    println!("|---|---|---|---|---|");
    for (kind, f) in ["Python `print(1)`", "bash `echo hi`"].iter().zip(figures) {
        let client = |s: &[ServiceSample]| s.iter().map(|s| s.client_ms).collect::<Vec<_>>();
        println!("{}", row(&format!("{kind}: service, fresh connection"), &client(&f.fresh)));
        println!("{}", row(&format!("{kind}: service, kept-alive connection"), &client(&f.kept)));
        println!("{}", row(&format!("{kind}: `vmexec run`, start → exit"), &f.whole));
    }
    println!();
    println!("| median ratio | Python | bash |");
    println!("|---|---|---|");
    let ratio = |f: &Latency, kept: bool| {
        let samples = if kept { &f.kept } else { &f.fresh };
        median(&f.whole) / median(&samples.iter().map(|s| s.client_ms).collect::<Vec<_>>())
    };
    for (name, kept) in
        [("`vmexec run` / service, fresh connection", false), ("`vmexec run` / service, kept alive", true)]
    {
        println!("| {name} | {:.2}× | {:.2}× |", ratio(&figures[0], kept), ratio(&figures[1], kept));
    }
    println!();
    println!(
        "Where a service run's time goes (medians, ms; fresh connection; the service's own figures from the result):"
    );
    println!();
    println!("| ms | Python | bash |");
    println!("|---|---|---|");
    let part = |f: &Latency, pick: Pick| median(&f.fresh.iter().map(pick).collect::<Vec<_>>());
    let parts: [(&str, Pick); 5] = [
        ("hand-out: taken from the pool, pinged (`boot_ms`)", |s| s.result.boot_ms),
        ("job sent → exited (`exec_ms`)", |s| s.result.exec_ms),
        ("request in → result made (`total_ms`)", |s| s.result.total_ms),
        ("the rest: connect, HTTP, JSON, the VM killed and reaped", |s| s.client_ms - s.result.total_ms),
        ("client side, connect → result read", |s| s.client_ms),
    ];
    for (name, pick) in parts {
        println!("| {name} | {:.1} | {:.1} |", part(&figures[0], pick), part(&figures[1], pick));
    }
}

// ---- idle pooled VMs ------------------------------------------------------

/// One idle pooled VM's host memory (smaps_rollup) and idle CPU.
struct IdleVm {
    parts: Parts,
    pss_kib: u64,
    rss_kib: u64,
    private_kib: u64,
    idle_cpu_percent: f64,
}

async fn idle_memory(work: &Work) -> Result<(Vec<IdleVm>, usize)> {
    let mut service = Service::start(work, "idle", IDLE_POOL)?;
    service.wait_full().await?;
    let vms = children(service.pid);
    let before: Vec<u64> = vms.iter().map(|&pid| stat(pid).map_or(0, |s| s.cpu)).collect();
    tokio::time::sleep(IDLE_WATCH).await;
    let others = qemus_on_host().saturating_sub(vms.len());
    let mut idle = Vec::new();
    for (&pid, before) in vms.iter().zip(before) {
        let rollup = |key| kib(pid, "smaps_rollup", key).unwrap_or(0);
        let after = stat(pid).map_or(0, |s| s.cpu);
        idle.push(IdleVm {
            parts: memory_parts(pid),
            pss_kib: rollup("Pss"),
            rss_kib: rollup("Rss"),
            private_kib: rollup("Private_Clean") + rollup("Private_Dirty"),
            idle_cpu_percent: after.saturating_sub(before) as f64 / USER_HZ / IDLE_WATCH.as_secs_f64()
                * 100.0,
        });
    }
    service.stop()?;
    Ok((idle, others))
}

// ---- jobs in sequence in one VM -------------------------------------------

/// The pool's warm-up jobs (`service/src/pool.rs`), then the run a pooled
/// VM is handed out for, then more of the same: how warm "warmed" is.
const SEQUENCE: [(Lang, &str); 8] = [
    (Lang::Python, "import os, sys, json\nprint('warm')"),
    (Lang::Shell, "echo warm"),
    (Lang::Python, "print(1)"),
    (Lang::Python, "print(1)"),
    (Lang::Python, "print(1)"),
    (Lang::Python, "print(1)"),
    (Lang::Shell, "echo hi"),
    (Lang::Shell, "echo hi"),
];

/// VMs restored for [`SEQUENCE`], one after another.
const SEQUENCE_VMS: usize = 5;

/// Send → exit of each job of [`SEQUENCE`] in fresh restored VMs, by
/// position.
fn job_sequence() -> Result<Vec<Vec<f64>>> {
    let config = VmConfig::default();
    let mut times = vec![Vec::new(); SEQUENCE.len()];
    for _ in 0..SEQUENCE_VMS {
        let vm_error = |e: &dyn std::error::Error| BenchError::Vm(vmhost::error::chain(e));
        let mut vm = Vm::boot(&config).map_err(|e| vm_error(&e))?;
        if vm.start() != Start::Restored {
            return Err(BenchError::Vm(format!("booted cold: {:?}", vm.fallback().map(|f| f.to_string()))));
        }
        for (i, (lang, code)) in SEQUENCE.iter().enumerate() {
            let sent = Instant::now();
            let out = vm.agent().run(&Job::new(*lang, *code), |_, _| {}).map_err(|e| vm_error(&e))?;
            times[i].push(ms(sent));
            if out.code() != 0 {
                return Err(BenchError::Vm(format!("{code:?} exited {}", out.code())));
            }
        }
        vm.shutdown();
    }
    Ok(times)
}

fn print_sequence(times: &[Vec<f64>]) {
    println!(
        "Jobs in sequence in one restored VM, send → exit (medians of {SEQUENCE_VMS} VMs, ms): jobs 1–2 are the pool's warm-up, job 3 what a pooled run gets:"
    );
    println!();
    println!("| job | code | median | min–max |");
    println!("|---|---|---|---|");
    for (i, ((_, code), t)) in SEQUENCE.iter().zip(times).enumerate() {
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.iter().copied().fold(0.0, f64::max);
        println!("| {} | `{}` | {:.1} | {min:.1}–{max:.1} |", i + 1, code.replace('\n', "; "), median(t));
    }
}

// ---- the load runs --------------------------------------------------------

struct Load {
    clients: usize,
    runs: usize,
    latencies: Vec<f64>,
    failures: Vec<String>,
    pooled: usize,
    seconds: f64,
    cpu_per_run: f64,
    service_cpu_per_run: f64,
    bench_cpu_per_run: f64,
    peak_rss_kib: u64,
    hwm_kib: u64,
    handout_ms: f64,
    exec_ms: f64,
}

/// One client: fresh connection per run, runs until `runs` are taken.
async fn client(socket: PathBuf, next: Arc<AtomicUsize>, runs: usize) -> Vec<(f64, Result<RunResult>)> {
    let mut done = Vec::new();
    while next.fetch_add(1, Ordering::Relaxed) < runs {
        let began = Instant::now();
        let answer = exchange_fresh(&socket, Method::POST, "/v1/runs", Kind::Python.body(), RUN_WAIT).await;
        let took = ms(began);
        done.push((took, answer.and_then(run_result).and_then(|r| checked(Kind::Python, r))));
    }
    done
}

/// This bench's own CPU ticks: it shares the cores with what it measures.
fn bench_cpu_ticks() -> u64 {
    stat(i32::try_from(std::process::id()).expect("a pid fits an i32")).map_or(0, |s| s.cpu)
}

async fn load(work: &Work, clients: usize, runs: usize, pool: usize) -> Result<Load> {
    let mut service = Service::start(work, &format!("load-{clients}"), pool)?;
    service.wait_full().await?;
    let (cpu_before, own_before, bench_before) =
        (service.cpu_ticks(), service.own_cpu_ticks(), bench_cpu_ticks());
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pid, peak) = (service.pid, Arc::clone(&peak_rss));
        tokio::spawn(async move {
            loop {
                if let Some(rss) = kib(pid, "status", "VmRSS") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(RSS_SAMPLE).await;
            }
        })
    };
    let began = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> =
        (0..clients).map(|_| tokio::spawn(client(service.socket.clone(), Arc::clone(&next), runs))).collect();
    let mut done = Vec::new();
    for task in tasks {
        done.extend(task.await.unwrap_or_default());
    }
    let seconds = began.elapsed().as_secs_f64();
    // The runs used VMs warmed before they began; the CPU is read once as
    // many are warmed again, so it covers `runs` VMs' whole lives.
    service.wait_full().await?;
    let cpu = service.cpu_ticks().saturating_sub(cpu_before);
    let own = service.own_cpu_ticks().saturating_sub(own_before);
    let bench = bench_cpu_ticks().saturating_sub(bench_before);
    sampler.abort();
    let metrics = service.metrics().await?;
    let mean_ms = |name: &str| {
        let sum = metrics.get(&format!("{name}_sum")).copied().unwrap_or(f64::NAN);
        sum / metrics.get(&format!("{name}_count")).copied().unwrap_or(f64::NAN) * 1000.0
    };
    let figures = Load {
        clients,
        runs,
        latencies: done.iter().map(|(ms, _)| *ms).collect(),
        failures: done.iter().filter_map(|(_, r)| r.as_ref().err().map(|e| e.to_string())).collect(),
        pooled: done.iter().filter(|(_, r)| r.as_ref().is_ok_and(|r| r.start == StartKind::Pooled)).count(),
        seconds,
        cpu_per_run: cpu as f64 / USER_HZ / runs as f64,
        service_cpu_per_run: own as f64 / USER_HZ / runs as f64,
        bench_cpu_per_run: bench as f64 / USER_HZ / runs as f64,
        peak_rss_kib: peak_rss.load(Ordering::Relaxed),
        hwm_kib: kib(service.pid, "status", "VmHWM").unwrap_or(0),
        handout_ms: mean_ms("pid1_run_handout_seconds"),
        exec_ms: mean_ms("pid1_run_exec_seconds"),
    };
    service.stop()?;
    Ok(figures)
}

fn print_load(loads: &[Load], pool: usize) {
    println!(
        "Load: a fresh VM per run, `--pool {pool} --max-vms {MAX_VMS}`, Python `print(1)`, a fresh connection per run:"
    );
    println!();
    println!(
        "| clients | runs | failed | warm-pool hits | runs/s | p50 ms | p95 ms | p99 ms | host CPU s/run (service + QEMUs) | of it the service's own | bench client s/run | service RSS peak MiB (VmHWM) | mean hand-out ms | mean job ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for l in loads {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.3} | {:.4} | {:.4} | {:.1} ({:.1}) | {:.0} | {:.0} |",
            l.clients,
            l.runs,
            l.failures.len(),
            l.pooled,
            (l.runs - l.failures.len()) as f64 / l.seconds,
            percentile(&l.latencies, 50),
            percentile(&l.latencies, 95),
            percentile(&l.latencies, 99),
            l.cpu_per_run,
            l.service_cpu_per_run,
            l.bench_cpu_per_run,
            l.peak_rss_kib as f64 / 1024.0,
            l.hwm_kib as f64 / 1024.0,
            l.handout_ms,
            l.exec_ms,
        );
    }
    for l in loads {
        for failure in &l.failures {
            println!("failure ({} clients): {failure}", l.clients);
        }
    }
}

fn print_idle(idle: &[IdleVm], others: usize) {
    let mib = |pick: fn(&IdleVm) -> u64| idle.iter().map(|v| pick(v) as f64 / 1024.0).collect::<Vec<_>>();
    let (pss, rss, private) = (mib(|v| v.pss_kib), mib(|v| v.rss_kib), mib(|v| v.private_kib));
    let cpu: Vec<f64> = idle.iter().map(|v| v.idle_cpu_percent).collect();
    println!(
        "Idle pooled VMs (`--pool {IDLE_POOL}`, {} VMs, {others} other QEMUs on the host sharing the template's pages), smaps_rollup:",
        idle.len()
    );
    println!();
    println!("| per idle pooled VM | median | min–max |");
    println!("|---|---|---|");
    let line = |name: &str, v: &[f64], unit: &str| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        println!("| {name} | {:.1} {unit} | {min:.1}–{max:.1} |", median(v));
    };
    line("PSS", &pss, "MiB");
    line("RSS", &rss, "MiB");
    line("private (its own pages: what one more VM costs)", &private, "MiB");
    let part = |pick: fn(&Parts) -> (u64, u64)| {
        let (pss, private): (Vec<f64>, Vec<f64>) =
            idle.iter().map(|v| pick(&v.parts)).map(|(a, b)| (a as f64 / 1024.0, b as f64 / 1024.0)).unzip();
        (pss, private)
    };
    for (name, pick) in [
        ("guest RAM (the template's pages, copied once written)", (|p| p.guest) as fn(&Parts) -> (u64, u64)),
        ("TCG's translated code", |p| p.tcg),
        ("QEMU's own (heap, libraries, devices)", |p| p.rest),
    ] {
        let (pss, private) = part(pick);
        line(&format!("of the PSS: {name}"), &pss, "MiB");
        line(&format!("of the private: {name}"), &private, "MiB");
    }
    line(&format!("CPU while idle, over {} s", IDLE_WATCH.as_secs()), &cpu, "%");
}

// ---- the run --------------------------------------------------------------

async fn bench(args: &Args, work: &Work) -> Result<bool> {
    if !work.vmexec.is_file() {
        return Err(BenchError::Service(format!(
            "binary is missing: build it with `cargo build --release -p vmexec` ({})",
            work.vmexec.display()
        )));
    }
    let latency = latency(work, args.runs).await?;
    let (idle, others) = idle_memory(work).await?;
    let sequence = job_sequence()?;
    let mut loads = Vec::new();
    for &clients in &args.clients {
        eprintln!("bench-serve: load, {clients} clients, {} runs", args.load_runs);
        loads.push(load(work, clients, args.load_runs, args.load_pool).await?);
    }

    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "bench-serve: {} runs of each kind, alternating; {cpus} host CPUs; guest 1 vCPU / 256 MiB; service `--pool {LATENCY_POOL} --max-vms {MAX_VMS}`.",
        args.runs
    );
    println!(
        "Every service sample waited for the pool to be full (health: pool.ready == pool.target, none warming) and was a warm-pool hit (its result says start: pooled); every `vmexec run` began the same way, with the service idle. One untimed round came first."
    );
    println!();
    print_latency(&latency);
    println!();
    print_sequence(&sequence);
    println!();
    print_idle(&idle, others);
    println!();
    print_load(&loads, args.load_pool);
    println!();
    Ok(loads.iter().all(|l| l.failures.is_empty()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let args = parse_args()?;
        let work = Work::new()?;
        let outcome = bench(&args, &work).await;
        // The logs stay where a failure can be read.
        if matches!(outcome, Ok(true)) {
            let _ = fs::remove_dir_all(&work.dir);
        } else {
            eprintln!("bench-serve: the services' logs are in {}", work.dir.display());
        }
        outcome
    };
    match outcome.await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench-serve: some runs failed (listed above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench-serve: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
