//! Pipes to bounded chunks.
//!
//! A pump reads one of the worker's output pipes and sends chunks of at most [`CHUNK_BYTES`] into the call's
//! bounded response channel. When the client reads slowly the channel fills, the pump stops reading, the pipe
//! fills, and the job blocks in `write`: server memory stays flat however much the job writes. stdout and
//! stderr have a pump each, so a job writing a lot to both cannot deadlock.
//!
//! The end of a job is its worker's exit, never the end of its pipes: once the worker is gone (and its group
//! killed) a pump keeps reading only while data keeps coming, and stops after [`SETTLE`] of silence, so a
//! process that escaped the group while holding the pipe cannot hang the call.

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest chunk sent in one message.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// How long a pump waits for more data once the worker is gone.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// The output cap shared by a job's two pumps: total stdout + stderr bytes.
#[derive(Debug)]
pub(crate) struct OutputBudget {
    remaining: std::sync::atomic::AtomicU64,
    /// Fired when the job tried to write more than the cap.
    pub(crate) exceeded: CancellationToken,
}

impl OutputBudget {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: u64) -> Self {
        OutputBudget { remaining: bytes.into(), exceeded: CancellationToken::new() }
    }

    /// Takes up to `n` bytes from the budget; returns how many may be sent.
    fn take(&self, n: u64) -> u64 {
        use std::sync::atomic::Ordering;
        let previous = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| Some(left.saturating_sub(n)))
            .unwrap_or(0);
        let granted = previous.min(n);
        if granted < n {
            self.exceeded.cancel();
        }
        granted
    }
}

/// Why a pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PumpEnd {
    /// The pipe reached EOF: every writer is gone.
    Eof,
    /// The worker is gone and nothing came for [`SETTLE`].
    Settled,
    /// The receiver is gone (the call ended).
    ReceiverGone,
    /// Reading failed.
    Failed,
    /// The output cap was reached.
    OverLimit,
    /// A forced shutdown gave up on a client that does not read.
    Abandoned,
}

/// Copies `fd` into `events`, each chunk wrapped by `wrap`, until EOF, until `worker_gone` fired and the
/// pipe has been quiet for [`SETTLE`], until the receiver is dropped, until `budget` runs out (the
/// chunk that crosses it is cut at the cap), or until `abandon` fires while a chunk waits for room (a
/// forced shutdown). Returns why, and the bytes sent.
pub(crate) async fn pump<T>(
    fd: OwnedFd,
    events: mpsc::Sender<T>,
    wrap: impl Fn(Vec<u8>) -> T,
    worker_gone: CancellationToken,
    budget: Option<std::sync::Arc<OutputBudget>>,
    abandon: CancellationToken,
) -> (PumpEnd, u64) {
    let mut sent = 0u64;
    let Ok(reader) = pipe::Receiver::from_owned_fd(fd) else { return (PumpEnd::Failed, sent) };
    loop {
        let ready = if worker_gone.is_cancelled() {
            match tokio::time::timeout(SETTLE, reader.readable()).await {
                Ok(ready) => ready,
                Err(_) => return (PumpEnd::Settled, sent),
            }
        } else {
            tokio::select! {
                ready = reader.readable() => ready,
                () = worker_gone.cancelled() => continue,
            }
        };
        if ready.is_err() {
            return (PumpEnd::Failed, sent);
        }
        // Allocated only while data is flowing: an idle call holds no buffer.
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        match reader.try_read_buf(&mut chunk) {
            Ok(0) => return (PumpEnd::Eof, sent),
            Ok(n) => {
                let allowed = budget.as_ref().map_or(n as u64, |b| b.take(n as u64));
                chunk.truncate(allowed as usize);
                if chunk.len() < CHUNK_BYTES / 4 {
                    chunk.shrink_to_fit();
                }
                sent += allowed;
                if !chunk.is_empty() {
                    tokio::select! {
                        result = events.send(wrap(chunk)) => if result.is_err() {
                            return (PumpEnd::ReceiverGone, sent);
                        },
                        () = abandon.cancelled() => return (PumpEnd::Abandoned, sent),
                    }
                }
                if allowed < n as u64 {
                    // Over the cap: stop reading but keep the pipe open, so the job blocks in `write` until
                    // it is killed (closing it would let SIGPIPE end the job first, as if on its own).
                    tokio::select! {
                        () = worker_gone.cancelled() => {}
                        () = abandon.cancelled() => {}
                    }
                    return (PumpEnd::OverLimit, sent);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return (PumpEnd::Failed, sent),
        }
    }
}

/// Writes the client's stdin chunks to the worker's stdin in order until the channel closes (close_stdin or
/// half-close: the pipe is then closed, which the job sees as EOF) or the job closes its end.
pub(crate) async fn feed_stdin(fd: OwnedFd, mut chunks: mpsc::Receiver<Vec<u8>>) {
    use tokio::io::AsyncWriteExt;
    let Ok(mut writer) = pipe::Sender::from_owned_fd(fd) else { return };
    while let Some(chunk) = chunks.recv().await {
        if writer.write_all(&chunk).await.is_err() {
            // EPIPE: the job closed its stdin. Later chunks are discarded by the closed channel.
            return;
        }
    }
}
