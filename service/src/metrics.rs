//! Every metric the service exports, declared in one place with its unit,
//! rendered as Prometheus text on `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// How a run ended, as the metrics and the log line say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The job ran and exited (whatever its code).
    Exited,
    TimedOut,
    /// Bad input, or the init refused the job: no VM was harmed.
    Refused,
    /// The queue was full or its deadline passed.
    Rejected,
    /// The client went away; the job was killed.
    Cancelled,
    /// The VM died or stopped answering mid-run.
    VmLost,
    /// Anything else on the host's side.
    Failed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Exited => "exited",
            Outcome::TimedOut => "timed_out",
            Outcome::Refused => "refused",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::VmLost => "vm_lost",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Latency buckets in seconds: a warm run takes tens of milliseconds, a
/// restore a few hundred, a cold boot seconds, a job up to its timeout.
fn seconds() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
}

pub struct Metrics {
    registry: Registry,
    runs: Family<OutcomeLabel, Counter>,
    pub queue_seconds: Histogram,
    pub handout_seconds: Histogram,
    pub exec_seconds: Histogram,
    pub total_seconds: Histogram,
    pub pool_ready: Gauge,
    pub pool_warming: Gauge,
    pub vms_running: Gauge,
    pub sessions: Gauge,
    pub queue_depth: Gauge,
    pub restores: Counter,
    pub restore_failures: Counter,
    pub cold_boots: Counter,
    pub discarded: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pid1");
        let m = Metrics {
            runs: Family::default(),
            queue_seconds: seconds(),
            handout_seconds: seconds(),
            exec_seconds: seconds(),
            total_seconds: seconds(),
            pool_ready: Gauge::default(),
            pool_warming: Gauge::default(),
            vms_running: Gauge::default(),
            sessions: Gauge::default(),
            queue_depth: Gauge::default(),
            restores: Counter::default(),
            restore_failures: Counter::default(),
            cold_boots: Counter::default(),
            discarded: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("runs", "Runs and session steps, by how they ended", m.runs.clone());
        let s = Unit::Seconds;
        registry.register_with_unit(
            "run_queue",
            "Time a run waited for a VM",
            s.clone(),
            m.queue_seconds.clone(),
        );
        registry.register_with_unit(
            "run_handout",
            "Time to hand a checked VM to a run",
            s.clone(),
            m.handout_seconds.clone(),
        );
        registry.register_with_unit(
            "run_exec",
            "Time from sending a job to its result",
            s.clone(),
            m.exec_seconds.clone(),
        );
        registry.register_with_unit("run_total", "Time from request to result", s, m.total_seconds.clone());
        registry.register("pool_ready", "Warm VMs ready to hand out", m.pool_ready.clone());
        registry.register(
            "pool_warming",
            "VMs being restored and warmed for the pool",
            m.pool_warming.clone(),
        );
        registry.register("vms_running", "QEMU processes this service owns", m.vms_running.clone());
        registry.register("sessions", "Open sessions", m.sessions.clone());
        registry.register("queue_depth", "Runs waiting for a VM", m.queue_depth.clone());
        registry.register("restores", "VMs restored from the template", m.restores.clone());
        registry.register("restore_failures", "VM starts that failed", m.restore_failures.clone());
        registry.register(
            "cold_boots",
            "VMs that booted cold (no template to restore)",
            m.cold_boots.clone(),
        );
        registry.register(
            "pool_discarded",
            "Pooled VMs found dead or silent and replaced",
            m.discarded.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn count(&self, outcome: Outcome) {
        self.runs.get_or_create(&OutcomeLabel { outcome: outcome.name().to_owned() }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_unit() {
        let m = Metrics::default();
        m.count(Outcome::Exited);
        m.count(Outcome::Exited);
        m.count(Outcome::VmLost);
        m.total_seconds.observe(0.03);
        let text = m.render();
        assert!(text.contains("pid1_runs_total{outcome=\"exited\"} 2"), "{text}");
        assert!(text.contains("pid1_runs_total{outcome=\"vm_lost\"} 1"), "{text}");
        assert!(text.contains("pid1_run_total_seconds_count 1"), "{text}");
        for name in [
            "pid1_pool_ready",
            "pid1_vms_running",
            "pid1_queue_depth",
            "pid1_restores_total",
            "pid1_run_queue_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
    }
}
