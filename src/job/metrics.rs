//! The job counters and histograms: one set of numbers for `GetStatus` and for the Prometheus endpoint
//! (`crate::server::metrics` serves them).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::warn;

use super::pool::Pool;

/// A label naming why something happened.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    /// The reason.
    pub(crate) reason: &'static str,
}

/// Every metric of the server.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Jobs whose worker was spawned.
    pub(crate) started: Counter,
    /// Started jobs that have ended, for any reason.
    pub(crate) finished: Counter,
    /// Started jobs that have ended, by reason (`exited`, `timed_out`, `cancelled`, ...).
    pub(crate) finished_by_reason: Family<Reason, Counter>,
    /// Calls (queued or running) ended by their client: cancel, disconnect, deadline.
    pub(crate) cancelled: Counter,
    /// Jobs killed by their timeout.
    pub(crate) timed_out: Counter,
    /// Calls refused admission.
    pub(crate) rejected: Counter,
    /// Calls refused admission, by reason (`queue_full`, `uploads`, `terminals`, `draining`).
    pub(crate) rejected_by_reason: Family<Reason, Counter>,
    /// From a worker slot to the worker's exec.
    pub(crate) spawn_seconds: Histogram,
    /// From the decision to end a job early (cancel, deadline, timeout, ...) until its whole tree is dead
    /// and reaped.
    pub(crate) cancel_to_dead_seconds: Histogram,
    /// Processes other than workers reaped by the server (shared with the reaper).
    pub(crate) orphans_reaped: Counter,
    /// Job cgroups still populated after their job ended (after SIGKILL and a bounded wait).
    pub(crate) cgroups_populated_after_end: Counter,
    running: Gauge,
    queued: Gauge,
    registry: Registry,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0].into_iter()
}

impl Metrics {
    /// Fresh metrics; `orphans_reaped` is the reaper's counter.
    pub(crate) fn new(orphans_reaped: Counter) -> Self {
        let mut metrics = Metrics {
            started: Counter::default(),
            finished: Counter::default(),
            finished_by_reason: Family::default(),
            cancelled: Counter::default(),
            timed_out: Counter::default(),
            rejected: Counter::default(),
            rejected_by_reason: Family::default(),
            spawn_seconds: Histogram::new(latency_buckets()),
            cancel_to_dead_seconds: Histogram::new(latency_buckets()),
            orphans_reaped,
            cgroups_populated_after_end: Counter::default(),
            running: Gauge::default(),
            queued: Gauge::default(),
            registry: Registry::default(),
        };
        metrics.registry = metrics.register();
        metrics
    }

    /// Counts a finished job.
    pub(crate) fn finished(&self, reason: &'static str) {
        self.finished.inc();
        self.finished_by_reason.get_or_create(&Reason { reason }).inc();
    }

    /// Counts a refused call.
    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.inc();
        self.rejected_by_reason.get_or_create(&Reason { reason }).inc();
    }

    /// Records a duration in a histogram.
    pub(crate) fn observe(histogram: &Histogram, d: Duration) {
        histogram.observe(d.as_secs_f64());
    }

    /// The registry of every metric (each registered value shares its state with the field).
    fn register(&self) -> Registry {
        let mut r = Registry::with_prefix("forkpool");
        r.register("jobs_started", "Jobs whose worker was spawned", self.started.clone());
        r.register("jobs_finished", "Started jobs that ended, by reason", self.finished_by_reason.clone());
        r.register(
            "calls_cancelled",
            "Calls ended by their client (cancel, disconnect, deadline)",
            self.cancelled.clone(),
        );
        r.register("calls_rejected", "Calls refused admission, by reason", self.rejected_by_reason.clone());
        r.register("jobs_running", "Jobs running now", self.running.clone());
        r.register("calls_queued", "Calls waiting for a worker slot now", self.queued.clone());
        r.register("spawn_seconds", "From a worker slot to the worker's exec", self.spawn_seconds.clone());
        r.register(
            "cancel_to_dead_seconds",
            "From the decision to end a job early until its whole tree is dead and reaped",
            self.cancel_to_dead_seconds.clone(),
        );
        r.register("orphans_reaped", "Processes other than workers reaped by the server", self.orphans_reaped.clone());
        r.register(
            "cgroups_populated_after_end",
            "Job cgroups still populated after their job ended",
            self.cgroups_populated_after_end.clone(),
        );
        r
    }

    /// The OpenMetrics text, with the gauges read from `pool` now.
    pub(crate) fn render(&self, pool: &Pool) -> String {
        let (running, queued) = pool.occupancy();
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        self.queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            warn!(error = %e, "cannot encode metrics");
        }
        text
    }
}
