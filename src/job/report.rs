//! The end of a call: exactly one `exited` event or one error status, never held up by a client that does not
//! read once a forced shutdown gives up on it.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use super::supervise::Ending;
use super::{Event, JobError, Jobs};
use crate::containment::JobEnd;
use crate::pb::{self, execute_response::Event as Ev};
use crate::process::registry::{ExitStatus, WorkerExit};

impl Jobs {
    /// Sends the call's last item for a job that ran: `exited`, or the error its ending calls for.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn report(
        &self,
        events: &mpsc::Sender<Event>,
        exit: Option<WorkerExit>,
        ending: Option<Ending>,
        end: JobEnd,
        wall_time: Duration,
        reaped: Vec<crate::process::registry::ReapedOrphan>,
        outputs: Vec<pb::OutputFile>,
    ) {
        let Some(mut exit) = exit else {
            return self.send(events, Err(JobError::Internal("the worker's exit status was lost"))).await;
        };
        // The job's own peak: its cgroup's where there is one; else `ru_maxrss` when it exceeds what the
        // server carried across exec (its memory's high-water mark, which only grows: read now, it is at least
        // what it was at the exec); else unknown (0).
        exit.max_rss_bytes = match end.memory_peak {
            Some(peak) => peak,
            None if exit.max_rss_bytes > own_memory_high_water() => exit.max_rss_bytes,
            None => 0,
        };
        let reason = Ending::exit_reason(ending.as_ref(), end.oom_killed);
        info!(
            status = ?exit.status,
            ending = ?ending,
            wall_ms = wall_time.as_millis() as u64,
            user_ms = exit.user_time.as_millis() as u64,
            system_ms = exit.system_time.as_millis() as u64,
            max_rss_bytes = exit.max_rss_bytes,
            orphans = reaped.len(),
            "exited"
        );
        match ending {
            Some(Ending::Cancelled) => {
                self.metrics.cancelled.inc();
            }
            Some(Ending::Deadline) => {
                self.metrics.cancelled.inc();
                self.send(events, Err(JobError::DeadlineExceeded)).await;
            }
            // The client's stream broke: counted as a call its client ended; told, if anyone still listens.
            Some(Ending::Transport(code, message)) => {
                self.metrics.cancelled.inc();
                self.send(events, Err(JobError::Transport(code, message))).await;
            }
            Some(Ending::Invalid(message)) => self.send(events, Err(JobError::InvalidRequest(message))).await,
            Some(Ending::TooLarge(message)) => self.send(events, Err(JobError::MessageTooLarge(message))).await,
            Some(Ending::Stdio(message)) => self.send(events, Err(JobError::Stdio(message))).await,
            Some(Ending::TimedOut) | Some(Ending::Shutdown) | Some(Ending::OutputLimit) | None => {
                if reason == pb::ExitReason::TimedOut {
                    self.metrics.timed_out.inc();
                }
                let exited = exited_event(&exit, reason, wall_time, reaped, outputs);
                self.send(events, Ok(response(Ev::Exited(exited)))).await;
            }
        }
    }

    /// Reports a call that ended before anything ran: its spawn was cancelled, or its upload ended early.
    pub(super) async fn report_unstarted(&self, events: &mpsc::Sender<Event>, ending: Ending) {
        match ending {
            Ending::Invalid(message) => self.send(events, Err(JobError::InvalidRequest(message))).await,
            Ending::TooLarge(message) => self.send(events, Err(JobError::MessageTooLarge(message))).await,
            Ending::Transport(code, message) => {
                self.metrics.cancelled.inc();
                self.send(events, Err(JobError::Transport(code, message))).await;
            }
            Ending::Deadline => {
                self.metrics.cancelled.inc();
                self.send(events, Err(JobError::DeadlineExceeded)).await;
            }
            Ending::Shutdown => {
                self.metrics.rejected("draining");
                self.send(events, Err(JobError::ShuttingDown)).await;
            }
            _ => {
                self.metrics.cancelled.inc();
            }
        }
    }

    /// Sends an event. If the client is gone there is nobody to tell; if it does not read, a forced shutdown
    /// abandons the event.
    pub(super) async fn send(&self, events: &mpsc::Sender<Event>, event: Event) {
        tokio::select! {
            _ = events.send(event) => {}
            () = self.abandon.cancelled() => {}
        }
    }
}

/// The server's memory high-water mark (`VmHWM`, bytes): what a worker's `ru_maxrss` starts from, since Linux
/// carries the spawning process's mark across exec. (Not `getrusage`: that also carries what the server's
/// own parent held when it was exec'd.) `u64::MAX` if it cannot be read, so nothing is mistaken for the job's.
fn own_memory_high_water() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok()))
        .map_or(u64::MAX, |kib: u64| kib * 1024)
}

pub(super) fn response(event: Ev) -> pb::ExecuteResponse {
    pb::ExecuteResponse { event: Some(event) }
}

fn proto_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn exited_event(
    exit: &WorkerExit,
    reason: pb::ExitReason,
    wall_time: Duration,
    reaped: Vec<crate::process::registry::ReapedOrphan>,
    outputs: Vec<pb::OutputFile>,
) -> pb::Exited {
    pb::Exited {
        status: Some(match exit.status {
            ExitStatus::Code(c) => pb::exited::Status::Code(c),
            ExitStatus::Signal(s) => pb::exited::Status::Signal(s),
        }),
        reason: reason as i32,
        wall_time: proto_duration(wall_time),
        user_time: proto_duration(exit.user_time),
        system_time: proto_duration(exit.system_time),
        max_rss_bytes: exit.max_rss_bytes,
        reaped: reaped
            .into_iter()
            .map(|o| pb::ReapedProcess {
                pid: u32::try_from(o.pid).unwrap_or(0),
                name: o.name,
                status: Some(match o.status {
                    ExitStatus::Code(c) => pb::reaped_process::Status::Code(c),
                    ExitStatus::Signal(s) => pb::reaped_process::Status::Signal(s),
                }),
            })
            .collect(),
        outputs,
    }
}
