//! The running phase of a job: relays the client's requests (stdin, close_stdin, signals, resizes) to the worker and
//! waits for the worker's exit, deciding when the job must end early (cancel, deadline, timeout, shutdown,
//! output cap, an invalid request) and starting the kill: SIGTERM + SIGCONT, SIGKILL after the grace.

use std::pin::Pin;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::terminal::Terminal;
use crate::config::window_size;
use crate::pb::{self, execute_request::Msg};
use crate::process::kill::GroupKiller;
use crate::process::registry::WorkerExit;

/// Why a running job is being killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    Cancelled,
    Deadline,
    TimedOut,
    Shutdown,
    OutputLimit,
    Invalid(String),
    TooLarge(String),
    /// The request stream failed below gRPC: the transport's code and message.
    Transport(tonic::Code, String),
    /// The job's stdio could not be relayed (the runtime refused to watch it).
    Stdio(String),
}

impl Ending {
    /// The `exited` event's reason for a job that ended this way (`None`: on its own), if it gets one.
    pub(crate) fn exit_reason(ending: Option<&Ending>, oom_killed: bool) -> pb::ExitReason {
        match ending {
            None if oom_killed => pb::ExitReason::MemoryLimit,
            None => pb::ExitReason::Exited,
            Some(Ending::TimedOut) => pb::ExitReason::TimedOut,
            Some(Ending::Shutdown) => pb::ExitReason::Shutdown,
            Some(Ending::OutputLimit) => pb::ExitReason::OutputLimit,
            // These end with an error status, or with nobody left to tell.
            Some(Ending::Cancelled | Ending::Deadline | Ending::Invalid(_) | Ending::TooLarge(_))
            | Some(Ending::Transport(..) | Ending::Stdio(_)) => pb::ExitReason::Unspecified,
        }
    }

    /// How a request-stream error ends the call (while uploading or running): the message of a malformed one
    /// ends with `aftermath`.
    pub(crate) fn of_stream_error(status: &tonic::Status, aftermath: &str) -> Ending {
        match StreamError::of(status) {
            StreamError::Oversized => Ending::TooLarge(status.message().to_string()),
            StreamError::Malformed => Ending::Invalid(format!("malformed request: {}{aftermath}", status.message())),
            StreamError::Transport => {
                debug!(%status, "request stream failed");
                Ending::Transport(status.code(), status.message().to_string())
            }
        }
    }

    /// The `reason` label of `forkpool_jobs_finished_total`.
    pub(crate) fn metric_label(ending: Option<&Ending>, oom_killed: bool) -> &'static str {
        match ending {
            None if oom_killed => "memory_limit",
            None => "exited",
            // A broken request stream is a client gone: counted as its cancel.
            Some(Ending::Cancelled | Ending::Transport(..)) => "cancelled",
            Some(Ending::Deadline) => "deadline",
            Some(Ending::TimedOut) => "timed_out",
            Some(Ending::Shutdown) => "shutdown",
            Some(Ending::OutputLimit) => "output_limit",
            Some(Ending::Invalid(_) | Ending::TooLarge(_)) => "invalid_request",
            Some(Ending::Stdio(_)) => "stdio_failed",
        }
    }
}

/// How the running phase ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The worker's exit (`None` only if the reaper's report was lost: a bug).
    pub(crate) exit: Option<WorkerExit>,
    /// Why the job was ended early, if it was.
    pub(crate) ending: Option<Ending>,
    /// When that was decided.
    pub(crate) ending_at: Option<Instant>,
}

/// At shutdown, a job's kill grace is capped by this: the drain was its grace already, and shutdown must
/// finish within seconds of the drain timeout.
const SHUTDOWN_KILL_GRACE: Duration = Duration::from_secs(1);

/// The running phase: relays requests and waits for the worker's exit, starting the kill when the job must
/// end early.
pub(crate) struct Supervisor<'a, S> {
    killer: &'a GroupKiller,
    kill_grace: Duration,
    requests: S,
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    /// Fired when the client closed stdin (see [`Supervisor::close_stdin`]).
    stdin_closed: CancellationToken,
    pending_stdin: Option<Vec<u8>>,
    requests_open: bool,
    terminal: Option<&'a Terminal>,
    ending: Option<Ending>,
}

impl<'a, S> Supervisor<'a, S>
where
    S: Stream<Item = Result<pb::ExecuteRequest, tonic::Status>> + Unpin,
{
    /// Supervises the worker `killer` ends, relaying `requests` (stdin into `stdin`, its close to
    /// `stdin_closed`, resizes to `terminal`).
    /// `early` is how the call ended if it did while the worker was being created (or why the job cannot go
    /// on): then the worker is killed at once.
    pub(crate) fn new(
        killer: &'a GroupKiller,
        kill_grace: Duration,
        requests: S,
        (stdin, stdin_closed): (mpsc::Sender<Vec<u8>>, CancellationToken),
        terminal: Option<&'a Terminal>,
        early: Option<Ending>,
    ) -> Self {
        Supervisor {
            killer,
            kill_grace,
            requests,
            stdin: Some(stdin),
            stdin_closed,
            pending_stdin: None,
            requests_open: true,
            terminal,
            ending: early,
        }
    }

    /// Runs until the worker is reaped; ends the job early when the call, its deadline, its timeout, the
    /// server, its output cap or an invalid request says so.
    pub(crate) async fn run(
        mut self,
        exit: oneshot::Receiver<WorkerExit>,
        cancelled: &CancellationToken,
        shutdown: &CancellationToken,
        deadline: Option<Instant>,
        timeout_at: Option<Instant>,
        over_limit: Option<&CancellationToken>,
    ) -> Outcome {
        let never = CancellationToken::new();
        let over_limit = over_limit.unwrap_or(&never);
        tokio::pin!(exit);
        let deadline = sleep_until_or_never(deadline);
        let timeout = sleep_until_or_never(timeout_at);
        let escalate = sleep_until_or_never(None);
        let (mut deadline, mut timeout, mut escalate) = (deadline, timeout, escalate);
        let mut escalation_armed = false;
        let mut ending_at = None;
        if self.ending.is_some() {
            // The call ended while the worker was being created: it may have exec'd before it could be
            // killed, so kill it (and its group) now, without grace.
            ending_at = Some(Instant::now());
            self.killer.kill();
        }
        loop {
            let ending = tokio::select! {
                biased;
                exit = &mut exit => return Outcome { exit: exit.ok(), ending: self.ending, ending_at },
                () = &mut escalate, if escalation_armed => {
                    escalation_armed = false;
                    self.killer.kill();
                    None
                }
                () = cancelled.cancelled(), if self.ending.is_none() => Some(Ending::Cancelled),
                () = shutdown.cancelled(), if self.ending.is_none() => Some(Ending::Shutdown),
                () = &mut deadline, if self.ending.is_none() => Some(Ending::Deadline),
                () = &mut timeout, if self.ending.is_none() => Some(Ending::TimedOut),
                () = over_limit.cancelled(), if self.ending.is_none() => Some(Ending::OutputLimit),
                permit = reserve(self.stdin.clone()), if self.pending_stdin.is_some() => {
                    match permit {
                        Some(permit) => {
                            permit.send(self.pending_stdin.take().unwrap_or_default());
                        }
                        None => {
                            // The job closed its stdin; discard what the client sends from now on.
                            self.pending_stdin = None;
                            self.stdin = None;
                        }
                    }
                    None
                }
                request = self.requests.next(),
                    if self.requests_open && self.pending_stdin.is_none() && self.ending.is_none() => {
                    self.on_request(request)
                }
            };
            if let Some(ending) = ending {
                info!(?ending, "ending the job");
                ending_at = Some(Instant::now());
                let grace =
                    if ending == Ending::Shutdown { self.kill_grace.min(SHUTDOWN_KILL_GRACE) } else { self.kill_grace };
                self.ending = Some(ending);
                if let Some(at) = self.killer.terminate(grace) {
                    escalate.as_mut().reset(at);
                    escalation_armed = true;
                }
            }
        }
    }

    /// The client closed the job's stdin (close_stdin or half-close): the feeder closes the pipe, or types a
    /// terminal's EOF key, once. Only then: a job's end alone closes the channel but types nothing.
    fn close_stdin(&mut self) {
        if self.stdin.take().is_some() {
            self.stdin_closed.cancel();
        }
    }

    /// Handles one request of a running job; returns an ending if the call must end.
    fn on_request(&mut self, request: Option<Result<pb::ExecuteRequest, tonic::Status>>) -> Option<Ending> {
        match request {
            // Half-close: the client has nothing more to send. Not a cancellation.
            None => {
                self.requests_open = false;
                self.close_stdin();
                None
            }
            Some(Err(status)) => Some(Ending::of_stream_error(&status, " (the job was killed)")),
            Some(Ok(request)) => match request.msg {
                Some(Msg::Stdin(data)) => {
                    if self.stdin.is_some() && !data.is_empty() {
                        self.pending_stdin = Some(data);
                    }
                    None
                }
                Some(Msg::CloseStdin(_)) => {
                    self.close_stdin();
                    None
                }
                Some(Msg::Signal(s)) => match signal_from_proto(s.signal) {
                    Ok(signal) => {
                        info!(%signal, "client sent a signal");
                        self.killer.signal(signal);
                        None
                    }
                    Err(message) => Some(Ending::Invalid(message)),
                },
                Some(Msg::Resize(resize)) => {
                    let Some(terminal) = self.terminal else {
                        return Some(Ending::Invalid(
                            "`resize` on a job without a terminal (start it with `terminal`); the job was killed"
                                .into(),
                        ));
                    };
                    match window_size(resize.rows, resize.cols) {
                        Ok((rows, cols)) => {
                            debug!(rows, cols, "resizing the terminal");
                            if let Err(e) = terminal.resize(rows, cols) {
                                debug!(error = %e, "cannot resize the terminal (the job is ending)");
                            }
                            None
                        }
                        Err(message) => Some(Ending::Invalid(format!("resize: {message} (the job was killed)"))),
                    }
                }
                Some(Msg::Input(chunk)) => Some(Ending::Invalid(format!(
                    "an `input` chunk of {} after every declared input file had arrived (the job was killed)",
                    chunk.path
                ))),
                Some(Msg::Start(_)) => Some(Ending::Invalid(
                    "a second `start` on the same call: one call runs one job (the running job was killed)".into(),
                )),
                None => Some(Ending::Invalid("a request with no field set".into())),
            },
        }
    }
}

/// Waits for room in the stdin channel; `None` once the job has closed its stdin.
async fn reserve(tx: Option<mpsc::Sender<Vec<u8>>>) -> Option<mpsc::OwnedPermit<Vec<u8>>> {
    tx?.reserve_owned().await.ok()
}

/// Maps the contract's signal enum to a real signal; `UNSPECIFIED` and unknown numbers are invalid.
pub(crate) fn signal_from_proto(value: i32) -> Result<Signal, String> {
    let signal = pb::Signal::try_from(value).map_err(|_| format!("unknown signal value {value}"))?;
    Ok(match signal {
        pb::Signal::Unspecified => return Err("signal is SIGNAL_UNSPECIFIED; name a signal".into()),
        pb::Signal::Hup => Signal::SIGHUP,
        pb::Signal::Int => Signal::SIGINT,
        pb::Signal::Quit => Signal::SIGQUIT,
        pb::Signal::Kill => Signal::SIGKILL,
        pb::Signal::Usr1 => Signal::SIGUSR1,
        pb::Signal::Usr2 => Signal::SIGUSR2,
        pb::Signal::Term => Signal::SIGTERM,
    })
}

/// A sleep until `at`, or practically forever.
pub(crate) fn sleep_until_or_never(at: Option<Instant>) -> Pin<Box<Sleep>> {
    // Far enough to never fire, near enough not to overflow the timer.
    let never = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    Box::pin(sleep_until(at.unwrap_or(never)))
}

/// What a request-stream error is. tonic's decoder builds its statuses itself, with no source; every error
/// of the transport below it (h2, hyper, the socket) arrives with its error as the status's source. So the
/// kind is read from the source and the code, never from the wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamError {
    /// A message over the size limit (the decoder's `OUT_OF_RANGE`, or a decompression over the limit).
    Oversized,
    /// The client sent something that is not a gRPC message of this call: it does not decode, a bad
    /// compression flag, a frame cut short by the end of the stream.
    Malformed,
    /// The transport failed under the call (the client reset the stream, the connection broke).
    Transport,
}

impl StreamError {
    pub(crate) fn of(status: &tonic::Status) -> StreamError {
        if std::error::Error::source(status).is_some() {
            return StreamError::Transport;
        }
        match status.code() {
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => StreamError::Oversized,
            _ => StreamError::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StreamError;

    #[test]
    fn request_stream_errors_are_classified_by_source_and_code() {
        let h2 = Box::new(h2::Error::from(h2::Reason::INTERNAL_ERROR));
        let transport = tonic::Status::from_error(h2);
        assert_eq!(StreamError::of(&transport), StreamError::Transport, "{transport:?}");
        let decode = tonic::Status::internal("failed to decode Protobuf message: invalid varint");
        assert_eq!(StreamError::of(&decode), StreamError::Malformed);
        let large = tonic::Status::out_of_range("Error, decoded message length too large");
        assert_eq!(StreamError::of(&large), StreamError::Oversized);
    }
}
