//! A run that takes far longer than a run does is watched as it hangs:
//! the service's old QEMUs are read from /proc (state, CPU time per
//! thread, the guest's console) twice, so a silent guest can be told from
//! a busy one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::TAIL_LINES;
use crate::clients::Shared;
use crate::harness::procfs::{USER_HZ, children, stat, stat_of};
use crate::harness::service::tail;

/// A run in flight this long is watched: runs take ~1–3 s here, even
/// with 8 VMs on 2 cores.
const STUCK_AFTER: Duration = Duration::from_secs(20);

/// A QEMU at least this old while a run is stuck is a suspect (younger
/// ones were started after the run began).
const SUSPECT_AGE: Duration = Duration::from_secs(15);

/// Between the two looks at a suspect: does its CPU time move?
const SECOND_LOOK: Duration = Duration::from_secs(10);

/// Time since boot in clock ticks, as /proc/PID/stat's start time is:
/// /proc/uptime has seconds to two decimals, which at USER_HZ = 100 are
/// ticks already.
fn uptime_ticks() -> u64 {
    let text = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs = text.split_whitespace().next().unwrap_or("0");
    let (whole, hundredths) = secs.split_once('.').unwrap_or((secs, "0"));
    whole.parse::<u64>().unwrap_or(0) * USER_HZ + hundredths.parse::<u64>().unwrap_or(0)
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

/// Watches for runs in flight past [`STUCK_AFTER`]; for each, looks twice
/// at the service's old QEMUs. Ends when the soak aborts it.
pub async fn watch(shared: Arc<Shared>, service: i32, seen: Arc<Mutex<BTreeMap<usize, String>>>) {
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
