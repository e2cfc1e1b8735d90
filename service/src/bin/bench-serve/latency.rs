//! The latency rounds: a one-line job through the service, on a fresh
//! connection and on one kept alive, against the same job as a whole
//! `vmexec run`, alternating, each begun with the service idle and its
//! pool full; and their table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use hyper::Method;
use vmhost::api::{RunResult, StartKind};

use crate::harness;
use crate::harness::client::{QUICK_WAIT, RUN_WAIT, Sender, connect, exchange, exchange_fresh, run_result};
use crate::harness::error::{ServiceError, io};
use crate::harness::figures::{median, ms, percentile};
use crate::harness::service::Fill;
use crate::work::{self, Work};
use crate::{LATENCY_POOL, Result};

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Python,
    Shell,
}

impl Kind {
    pub fn body(self) -> Bytes {
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

pub fn checked(kind: Kind, result: RunResult) -> harness::error::Result<RunResult> {
    if result.stdout != kind.expected() || result.exit_code != 0 {
        return Err(ServiceError::Output {
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
        return Err(ServiceError::Output {
            what: "a run with the pool full".into(),
            got: format!("start {:?}", result.start),
        }
        .into());
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
        return Err(ServiceError::Output { what: "vmexec run".into(), got }.into());
    }
    Ok(took)
}

/// Per kind: fresh connection, kept-alive connection, `vmexec run`.
#[derive(Default)]
pub struct Latency {
    fresh: Vec<ServiceSample>,
    kept: Vec<ServiceSample>,
    whole: Vec<f64>,
}

pub async fn latency(work: &Work, runs: usize) -> Result<[Latency; 2]> {
    let mut service = work.start("latency", LATENCY_POOL)?;
    service.wait_full(Fill::Settled).await?;
    let mut kept = connect(&service.socket).await?;
    // The kept connection's first request is not a run: its samples are
    // then all on a connection already open.
    exchange(&mut kept, Method::GET, "/v1/health", Bytes::new(), QUICK_WAIT).await?;
    let mut figures = [Latency::default(), Latency::default()];
    // Round 0 is not kept: the first of each kind pays for cold caches.
    for round in 0..=runs {
        for (i, kind) in [Kind::Python, Kind::Shell].into_iter().enumerate() {
            service.wait_full(Fill::Settled).await?;
            let fresh = service_run(&service.socket, None, kind).await?;
            service.wait_full(Fill::Settled).await?;
            if kept.is_closed() {
                kept = connect(&service.socket).await?;
                eprintln!("bench-serve: the kept-alive connection was closed; opened another");
            }
            let on_kept = service_run(&service.socket, Some(&mut kept), kind).await?;
            // `vmexec run` too starts with the service idle and its pool full.
            service.wait_full(Fill::Settled).await?;
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
    work::stop(service)?;
    Ok(figures)
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

/// One figure of a service sample.
type Pick = fn(&ServiceSample) -> f64;

pub fn print_latency(figures: &[Latency; 2]) {
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
