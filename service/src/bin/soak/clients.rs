//! The soak's clients: each takes the next job, sends it on a connection
//! of its own and checks the answer, while the runs in flight are kept
//! where the watcher sees them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use hyper::Method;

use crate::SoakError;
use crate::harness::client::{RUN_WAIT, exchange_fresh, run_result};
use crate::jobs::{Job, Kind};

pub struct Done {
    pub run: usize,
    pub kind: Kind,
    pub ms: f64,
    /// Seconds into the soak when it ended.
    pub at: f64,
    pub error: Option<SoakError>,
}

/// What the clients share.
pub struct Shared {
    pub socket: PathBuf,
    pub jobs: Vec<Job>,
    pub next: AtomicUsize,
    pub began: Instant,
    /// Runs in flight and when each began.
    pub in_flight: Mutex<BTreeMap<usize, Instant>>,
}

/// One client: a fresh connection per run, runs until every job is taken.
pub async fn client(shared: Arc<Shared>) -> Vec<Done> {
    let mut done = Vec::new();
    loop {
        let run = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = shared.jobs.get(run) else { break };
        let began = Instant::now();
        shared.in_flight.lock().expect("not poisoned").insert(run, began);
        let body = Bytes::from(job.request.to_string());
        let answer = exchange_fresh(&shared.socket, Method::POST, "/v1/runs", body, RUN_WAIT).await;
        let error =
            answer.and_then(run_result).map_err(SoakError::from).and_then(|result| job.check(&result)).err();
        shared.in_flight.lock().expect("not poisoned").remove(&run);
        let ms = began.elapsed().as_secs_f64() * 1000.0;
        done.push(Done { run, kind: job.kind, ms, at: shared.began.elapsed().as_secs_f64(), error });
        if (run + 1).is_multiple_of(100) {
            eprintln!("soak: {} runs sent", run + 1);
        }
    }
    done
}
