//! `just soak`: many runs through one `vmexec serve`, a fresh VM each, from
//! concurrent clients: Python and shell jobs, each printing a nonce of its
//! own and a value computed from its own input (code, stdin, environment,
//! an uploaded file, a downloaded one), every answer checked. At the end
//! the service gets SIGTERM and must leave no QEMU, socket or VM directory
//! behind. Exits non-zero on any failure.
//!
//! A run that takes far longer than a run does is watched as it hangs: the
//! service's old QEMUs are read from /proc (state, CPU time, the guest's
//! console) twice, so a silent guest can be told from a busy one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use vmhost::api::{RunResult, base64};

/// How long the pool may take to fill at the start.
const FILL_WAIT: Duration = Duration::from_secs(120);

/// How long one run may take, client side: the job's default timeout
/// (30 s), the service's margin past it (30 s), after at most the queue's
/// deadline (30 s).
const RUN_WAIT: Duration = Duration::from_secs(120);

/// Health, metrics, a connection: answered at once by a live service.
const QUICK_WAIT: Duration = Duration::from_secs(10);

/// How long SIGTERM may take: the service's grace (10 s) and some.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// A run in flight this long is watched: runs take ~1–3 s here, even
/// with 8 VMs on 2 cores.
const STUCK_AFTER: Duration = Duration::from_secs(20);

/// A QEMU at least this old while a run is stuck is a suspect (younger
/// ones were started after the run began).
const SUSPECT_AGE: Duration = Duration::from_secs(15);

/// Between the two looks at a suspect: does its CPU time move?
const SECOND_LOOK: Duration = Duration::from_secs(10);

/// Lines of a guest console or of the service log shown with a failure.
const TAIL_LINES: usize = 40;

/// Clock ticks per second in /proc's times: USER_HZ, 100 on x86.
const USER_HZ: u64 = 100;

#[derive(Debug, thiserror::Error)]
enum SoakError {
    #[error("{0}\nusage: soak [--runs N] [--clients N] [--pool N] [--max-vms N]")]
    Usage(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Http { what: &'static str, source: hyper::Error },
    #[error("{what}: no answer within {} s", .after.as_secs())]
    Timeout { what: &'static str, after: Duration },
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the result does not parse ({source}): {body}")]
    Json { source: serde_json::Error, body: String },
    #[error("wrong answer: {0}")]
    Wrong(String),
    #[error("the service {0}")]
    Service(String),
}

type Result<T> = std::result::Result<T, SoakError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SoakError {
    let what = what.into();
    move |source| SoakError::Io { what, source }
}

struct Args {
    runs: usize,
    clients: usize,
    pool: usize,
    max_vms: usize,
}

fn parse_args() -> Result<Args> {
    // The pool and the VMs at once default to the service's own defaults:
    // the soak tries the service as it ships.
    let mut args = Args {
        runs: 2000,
        clients: 8,
        pool: vmserve::options::DEFAULT_POOL,
        max_vms: vmserve::options::DEFAULT_MAX_VMS,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or_else(|| SoakError::Usage(format!("{flag} needs a value")))?;
        let number = value
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0 || flag == "--pool")
            .ok_or_else(|| SoakError::Usage(format!("{flag}: `{value}` is not a count")))?;
        match flag.as_str() {
            "--runs" => args.runs = number,
            "--clients" => args.clients = number,
            "--pool" => args.pool = number,
            "--max-vms" => args.max_vms = number,
            _ => return Err(SoakError::Usage(format!("unknown flag {flag}"))),
        }
    }
    Ok(args)
}

// ---- the jobs -------------------------------------------------------------

/// What a run does; each proves it was its own run by its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Python: the nonce and a sum computed from `k`, both in the code.
    PyCompute,
    /// bash: the same with shell arithmetic.
    ShCompute,
    /// Python: the nonce from stdin, reversed; stderr and an exit code.
    PyStdin,
    /// Python: the nonce and `k` from the environment.
    PyEnv,
    /// bash: the nonce in an uploaded file, written to one downloaded.
    ShFiles,
}

const KINDS: [Kind; 5] = [Kind::PyCompute, Kind::ShCompute, Kind::PyStdin, Kind::PyEnv, Kind::ShFiles];

/// One run: its request and the answer it must get.
struct Job {
    kind: Kind,
    request: serde_json::Value,
    stdout: String,
    stderr: String,
    exit_code: i32,
    /// A downloaded file's content, base64.
    file: Option<String>,
}

fn job(kind: Kind, nonce: &str, k: u64) -> Job {
    use serde_json::json;
    let (request, stdout) = match kind {
        Kind::PyCompute => (
            json!({"language": "python",
                   "code": format!("n = '{nonce}'\nk = {k}\nprint(n, sum(i * i for i in range(k)) % 1000003)")}),
            format!("{nonce} {}\n", (0..k).map(|i| i * i).sum::<u64>() % 1_000_003),
        ),
        Kind::ShCompute => (
            json!({"language": "sh", "code": format!("n={nonce}; k={k}; echo \"$n $(( (k * k + 7) % 1000003 ))\"")}),
            format!("{nonce} {}\n", (k * k + 7) % 1_000_003),
        ),
        Kind::PyStdin => (
            json!({"language": "python", "stdin": nonce,
                   "code": format!("import sys\ns = sys.stdin.read()\nprint(s[::-1], len(s))\nprint(s, file=sys.stderr)\nsys.exit({})", 1 + k % 5)}),
            format!("{} {}\n", nonce.chars().rev().collect::<String>(), nonce.len()),
        ),
        Kind::PyEnv => (
            json!({"language": "python", "env": {"NONCE": nonce, "K": k.to_string()},
                   "code": "import os\nn = os.environ['NONCE']\nk = int(os.environ['K'])\nprint(n, k * 7 + len(n))"}),
            format!("{nonce} {}\n", k * 7 + nonce.len() as u64),
        ),
        Kind::ShFiles => (
            json!({"language": "sh",
                   "files": [{"path": "in.txt", "content": base64(format!("{nonce}\n").as_bytes())}],
                   "download": ["out.txt"],
                   "code": format!("read -r n < in.txt\necho \"$n-{k}\" > out.txt\necho \"$n $(( {k} * 3 ))\"")}),
            format!("{nonce} {}\n", k * 3),
        ),
    };
    Job {
        kind,
        request,
        stdout,
        stderr: if kind == Kind::PyStdin { format!("{nonce}\n") } else { String::new() },
        exit_code: if kind == Kind::PyStdin { i32::try_from(1 + k % 5).expect("small") } else { 0 },
        file: (kind == Kind::ShFiles).then(|| base64(format!("{nonce}-{k}\n").as_bytes())),
    }
}

impl Job {
    fn check(&self, result: &RunResult) -> Result<()> {
        let mut wrong = Vec::new();
        if result.stdout != self.stdout {
            wrong.push(format!("stdout {:?}, wanted {:?}", result.stdout, self.stdout));
        }
        if result.stderr != self.stderr {
            wrong.push(format!("stderr {:?}, wanted {:?}", result.stderr, self.stderr));
        }
        if result.exit_code != self.exit_code || result.timed_out {
            wrong.push(format!(
                "exit {} (timed out: {}), wanted {}",
                result.exit_code, result.timed_out, self.exit_code
            ));
        }
        if let Some(file) = &self.file {
            match result.files.as_slice() {
                [got] if got.path == "out.txt" && got.content == *file => {}
                got => wrong.push(format!("files {got:?}, wanted out.txt = {file}")),
            }
        }
        if wrong.is_empty() { Ok(()) } else { Err(SoakError::Wrong(wrong.join("; "))) }
    }
}

/// splitmix64: nonces that no two runs share, from one seed of the kernel's.
struct Nonces(u64);

impl Nonces {
    fn new() -> Result<Nonces> {
        let mut seed = [0u8; 8];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(io("reading /dev/urandom"))?;
        Ok(Nonces(u64::from_le_bytes(seed)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

// ---- /proc --------------------------------------------------------------

/// What /proc/PID/stat says (proc(5)); times in clock ticks.
struct Stat {
    state: char,
    ppid: i32,
    cpu: u64,
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// One thread's figures, from /proc/PID/task/TID/stat (the same fields).
fn stat_of(pid: i32, tid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // Fields are counted from after the command name's last ')': field 3.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        cpu: field(14)? + field(15)?,
        start: field(22)?,
    })
}

fn pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).collect()
}

fn children(parent: i32) -> Vec<i32> {
    pids().into_iter().filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent)).collect()
}

/// Processes whose command line mentions `text`.
fn processes_naming(text: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| String::from_utf8_lossy(&line).contains(text))
        })
        .collect()
}

/// Time since boot in clock ticks, as /proc/PID/stat's start time is:
/// /proc/uptime has seconds to two decimals, which at USER_HZ = 100 are
/// ticks already.
fn uptime_ticks() -> u64 {
    let text = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs = text.split_whitespace().next().unwrap_or("0");
    let (whole, hundredths) = secs.split_once('.').unwrap_or((secs, "0"));
    whole.parse::<u64>().unwrap_or(0) * USER_HZ + hundredths.parse::<u64>().unwrap_or(0)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The guest console of a QEMU: its directory is gone once the VM
/// serves, but QEMU holds the file open, and /proc opens it still.
fn console(pid: i32) -> String {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return "(no /proc fd)".into() };
    for fd in fds.flatten() {
        let target = fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy().contains("console.log") {
            let text =
                fs::read(fd.path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            return tail(&text, TAIL_LINES);
        }
    }
    "(no console file open)".into()
}

/// What can be seen of a QEMU from outside: state, CPU time, where it
/// waits, and its guest's console.
fn look(pid: i32) -> String {
    let Some(s) = stat(pid) else { return format!("QEMU {pid}: gone") };
    let age = uptime_ticks().saturating_sub(s.start) / USER_HZ;
    // Per thread: a vCPU thread ("CPU 0/TCG") running tells a busy guest
    // from one that waits, and where it waits.
    let mut threads = String::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for tid in tasks.flatten().filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok()) {
            let read =
                |file: &str| fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}")).unwrap_or_default();
            let (state, cpu) = stat_of(pid, tid).map_or(('?', 0), |t| (t.state, t.cpu));
            let _ = writeln!(
                threads,
                "  thread {tid} {:?}: state {state}, CPU {:.2} s, wchan {}",
                read("comm").trim(),
                cpu as f64 / USER_HZ as f64,
                read("wchan")
            );
        }
    }
    format!(
        "QEMU {pid}: state {}, {age} s old, CPU {:.2} s\n{threads}its console ends:\n{}",
        s.state,
        s.cpu as f64 / USER_HZ as f64,
        console(pid)
    )
}

// ---- HTTP over the service's socket ---------------------------------------

type Sender = SendRequest<Full<Bytes>>;

/// A request on a connection of its own (a simple client's), and its whole
/// answer. The connection's task ends with the exchange.
async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Bytes,
    wait: Duration,
) -> Result<(u16, Bytes)> {
    let exchanged = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(io(format!("connecting to {}", socket.display())))?;
        let http = |what| move |source| SoakError::Http { what, source };
        let (mut sender, connection): (Sender, _) =
            http1::handshake(TokioIo::new(stream)).await.map_err(http("the HTTP handshake"))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a request from constant parts");
        let response = sender.send_request(request).await.map_err(http("the request"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(http("the response body"))?;
        Ok((status, body.to_bytes()))
    };
    let what = if path == "/v1/runs" { "a run" } else { "the service" };
    tokio::time::timeout(wait, exchanged).await.map_err(|_| SoakError::Timeout { what, after: wait })?
}

// ---- the service ----------------------------------------------------------

struct Service {
    child: Child,
    pid: i32,
    socket: PathBuf,
    log: PathBuf,
    tmp: PathBuf,
}

impl Service {
    fn start(dir: &Path, args: &Args) -> Result<Service> {
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let socket = dir.join("soak.sock");
        let log = dir.join("service.log");
        let log_file = fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let vmexec = std::env::current_exe().map_err(io("locating this program"))?.with_file_name("vmexec");
        let mut command = Command::new(&vmexec);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(["--pool", &args.pool.to_string(), "--max-vms", &args.max_vms.to_string()])
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // As vmhost spawns QEMU: if the soak dies, the service dies too.
        let child =
            vmhost::qemu::process::spawn(command).map_err(io(format!("starting {}", vmexec.display())))?;
        let pid = i32::try_from(child.id()).expect("a pid fits an i32");
        Ok(Service { child, pid, socket, log, tmp })
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_full(&mut self) -> Result<()> {
        let deadline = Instant::now() + FILL_WAIT;
        loop {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return Err(SoakError::Service(format!(
                    "exited early; its log ends:\n{}",
                    tail(&self.log_text(), 20)
                )));
            }
            if let Ok((200, body)) =
                exchange(&self.socket, Method::GET, "/v1/health", Bytes::new(), QUICK_WAIT).await
            {
                let health: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if health["pool"]["ready"] == health["pool"]["target"] {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(SoakError::Timeout { what: "the pool filling", after: FILL_WAIT });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pid1_runs_total` by outcome, from /metrics.
    async fn outcomes(&self) -> Result<BTreeMap<String, f64>> {
        let (_, body) = exchange(&self.socket, Method::GET, "/metrics", Bytes::new(), QUICK_WAIT).await?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("pid1_"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                let wanted = name.starts_with("pid1_runs_total")
                    || ["restores", "restore_failures", "cold_boots", "discarded"]
                        .iter()
                        .any(|n| name.contains(n));
                if !wanted {
                    return None;
                }
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect())
    }

    /// SIGTERM, then: it exited 0 within the grace and left no QEMU, no
    /// socket and no VM directory. Every leftover, in words.
    fn stop(mut self) -> Vec<String> {
        let pid = rustix::process::Pid::from_raw(self.pid).expect("a child's pid is positive");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_WAIT;
        let mut left = Vec::new();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    left.push(format!("the service exited with {status}"));
                    break;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    left.push(format!(
                        "the service did not stop within {} s of SIGTERM",
                        STOP_WAIT.as_secs()
                    ));
                    break;
                }
            }
        }
        if let Ok(dir) = fs::read_dir(&self.tmp) {
            for entry in dir.flatten() {
                left.push(format!("{} in its TMPDIR", entry.path().display()));
            }
        }
        for pid in processes_naming(&self.tmp.display().to_string()) {
            left.push(format!("process {pid}, which names its TMPDIR"));
        }
        if self.socket.exists() {
            left.push(format!("its socket {}", self.socket.display()));
        }
        left
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

// ---- the soak -------------------------------------------------------------

struct Done {
    run: usize,
    kind: Kind,
    ms: f64,
    /// Seconds into the soak when it ended.
    at: f64,
    error: Option<SoakError>,
}

/// What the clients share.
struct Shared {
    socket: PathBuf,
    jobs: Vec<Job>,
    next: AtomicUsize,
    began: Instant,
    /// Runs in flight and when each began.
    in_flight: Mutex<BTreeMap<usize, Instant>>,
}

async fn client(shared: Arc<Shared>) -> Vec<Done> {
    let mut done = Vec::new();
    loop {
        let run = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = shared.jobs.get(run) else { break };
        let began = Instant::now();
        shared.in_flight.lock().expect("not poisoned").insert(run, began);
        let body = Bytes::from(job.request.to_string());
        let answer = exchange(&shared.socket, Method::POST, "/v1/runs", body, RUN_WAIT).await;
        let error = answer
            .and_then(|(status, body)| {
                let text = || String::from_utf8_lossy(&body).into_owned();
                if status != 200 {
                    return Err(SoakError::Status { status, body: text() });
                }
                serde_json::from_slice::<RunResult>(&body)
                    .map_err(|source| SoakError::Json { source, body: text() })
            })
            .and_then(|result| job.check(&result))
            .err();
        shared.in_flight.lock().expect("not poisoned").remove(&run);
        let ms = began.elapsed().as_secs_f64() * 1000.0;
        done.push(Done { run, kind: job.kind, ms, at: shared.began.elapsed().as_secs_f64(), error });
        if (run + 1).is_multiple_of(100) {
            eprintln!("soak: {} runs sent", run + 1);
        }
    }
    done
}

/// Watches for runs in flight past [`STUCK_AFTER`]; for each, looks twice
/// at the service's old QEMUs. Ends when the soak aborts it.
async fn watch(shared: Arc<Shared>, service: i32, seen: Arc<Mutex<BTreeMap<usize, String>>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stuck: Vec<(usize, Duration)> = {
            let in_flight = shared.in_flight.lock().expect("not poisoned");
            let seen = seen.lock().expect("not poisoned");
            in_flight
                .iter()
                .map(|(&run, began)| (run, began.elapsed()))
                .filter(|(run, took)| *took > STUCK_AFTER && !seen.contains_key(run))
                .collect()
        };
        for (run, took) in stuck {
            let now = uptime_ticks();
            let suspects: Vec<i32> = children(service)
                .into_iter()
                .filter(|&pid| {
                    stat(pid).is_some_and(|s| now.saturating_sub(s.start) >= SUSPECT_AGE.as_secs() * USER_HZ)
                })
                .collect();
            let mut report = format!(
                "run {run} in flight for {:.0} s; the service's QEMUs that old:\n",
                took.as_secs_f64()
            );
            for &pid in &suspects {
                let _ = writeln!(report, "{}", look(pid));
            }
            tokio::time::sleep(SECOND_LOOK).await;
            let _ = writeln!(report, "{} s later:", SECOND_LOOK.as_secs());
            for &pid in &suspects {
                let _ = writeln!(report, "{}", look(pid));
            }
            eprintln!("soak: {report}");
            seen.lock().expect("not poisoned").insert(run, report);
        }
    }
}

fn percentile(values: &[f64], p: usize) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p * v.len()).div_ceil(100).max(1);
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

async fn soak(args: &Args, dir: &Path) -> Result<bool> {
    let mut nonces = Nonces::new()?;
    let jobs = (0..args.runs)
        .map(|i| {
            let nonce = format!("{:016x}", nonces.next());
            job(KINDS[i % KINDS.len()], &nonce, 1000 + nonces.next() % 20_000)
        })
        .collect();
    let mut service = Service::start(dir, args)?;
    service.wait_full().await?;
    eprintln!(
        "soak: {} runs, {} clients, service --pool {} --max-vms {}",
        args.runs, args.clients, args.pool, args.max_vms
    );
    let shared = Arc::new(Shared {
        socket: service.socket.clone(),
        jobs,
        next: AtomicUsize::new(0),
        began: Instant::now(),
        in_flight: Mutex::new(BTreeMap::new()),
    });
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let watcher = tokio::spawn(watch(Arc::clone(&shared), service.pid, Arc::clone(&seen)));
    let tasks: Vec<_> = (0..args.clients).map(|_| tokio::spawn(client(Arc::clone(&shared)))).collect();
    let mut done = Vec::new();
    for task in tasks {
        done.extend(task.await.unwrap_or_default());
    }
    let seconds = shared.began.elapsed().as_secs_f64();
    watcher.abort();
    let outcomes = service.outcomes().await;
    let log = service.log_text();
    let left = service.stop();

    done.sort_by_key(|d| d.run);
    let failed: Vec<&Done> = done.iter().filter(|d| d.error.is_some()).collect();
    let ms: Vec<f64> = done.iter().map(|d| d.ms).collect();
    println!(
        "soak: {} runs, {} clients, `--pool {} --max-vms {}`, a fresh VM each",
        done.len(),
        args.clients,
        args.pool,
        args.max_vms
    );
    println!("| kind | runs | failed |");
    println!("|---|---|---|");
    for kind in KINDS {
        let runs = done.iter().filter(|d| d.kind == kind).count();
        println!("| {kind:?} | {runs} | {} |", failed.iter().filter(|d| d.kind == kind).count());
    }
    println!(
        "{} ok, {} failed, {:.0} s, {:.2} runs/s, latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        done.len() - failed.len(),
        failed.len(),
        seconds,
        done.len() as f64 / seconds,
        percentile(&ms, 50),
        percentile(&ms, 99),
        percentile(&ms, 100)
    );
    match outcomes {
        Ok(outcomes) => {
            for (name, value) in outcomes {
                println!("metrics: {name} {value}");
            }
        }
        Err(e) => println!("metrics: unreadable: {e}"),
    }
    let seen = seen.lock().expect("not poisoned");
    for d in &failed {
        let error = d.error.as_ref().expect("a failure");
        println!("FAILED run {} ({:?}) after {:.0} ms, {:.1} s in: {error}", d.run, d.kind, d.ms, d.at);
        if let Some(report) = seen.get(&d.run) {
            println!("{report}");
        }
    }
    for (run, report) in seen.iter() {
        if !failed.iter().any(|d| d.run == *run) {
            println!("slow but right: {report}");
        }
    }
    let unusual: Vec<&str> =
        log.lines().filter(|l| !l.contains("outcome=\"exited\"") && !l.contains("INFO")).collect();
    if !failed.is_empty() || !unusual.is_empty() {
        println!("the service's log, all but its exited runs and INFO lines (last {TAIL_LINES}):");
        println!("{}", tail(&unusual.join("\n"), TAIL_LINES));
    }
    for l in &left {
        println!("LEFT BEHIND: {l}");
    }
    if left.is_empty() {
        println!("after SIGTERM: the service exited 0; no QEMU, no socket, no vmexec-* directory left");
    }
    Ok(failed.is_empty() && left.is_empty() && done.len() == args.runs)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let args = parse_args()?;
        let dir = std::env::temp_dir().join(format!("soak-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let outcome = soak(&args, &dir).await;
        // The log stays where a failure can be read.
        if matches!(outcome, Ok(true)) {
            let _ = fs::remove_dir_all(&dir);
        } else {
            eprintln!("soak: the service's log is {}", dir.join("service.log").display());
        }
        outcome
    };
    match outcome.await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
