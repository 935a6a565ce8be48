//! A job's stdio on the server's side: pumps from its output to bounded chunks, and a feeder from the
//! client's stdin. The same code serves pipes and a terminal's master.
//!
//! A pump reads one of the worker's outputs (a pipe, or the pty master, which carries everything a terminal
//! job writes) and sends chunks of at most [`CHUNK_BYTES`] into the call's bounded response channel. When the
//! client reads slowly the channel fills, the pump stops reading, the pipe (or the terminal's buffer) fills,
//! and the job blocks in `write`: server memory stays flat however much the job writes. stdout and stderr
//! have a pump each, so a job writing a lot to both cannot deadlock.
//!
//! The end of a job is its worker's exit, never the end of its output: once the worker is gone (and its group
//! killed) a pump keeps reading while data keeps coming, to the end (EOF for a pipe; EIO for a pty master
//! once every slave is closed, which Linux returns only after the buffered output has been read), and stops
//! after [`SETTLE`] of silence, so a process that escaped the group while holding the pipe or terminal cannot
//! hang the call.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rustix::buffer::spare_capacity;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::terminal::Terminal;
use crate::process::spawn::WorkerIo;

/// One of a worker's stdio ends (a pipe end or the pty master), non-blocking and watched by the runtime;
/// shared by the tasks that use it (a pty master is read, written and resized), closed when the last goes.
pub(crate) type Watched = Arc<AsyncFd<OwnedFd>>;

fn watch(fd: OwnedFd) -> io::Result<Watched> {
    crate::process::spawn::watch(fd).map(Arc::new)
}

/// A running job's stdio, ready for its pumps and feeder.
#[derive(Debug)]
pub(crate) struct JobIo {
    /// Everything for `stdout` events: the stdout pipe, or the terminal.
    pub(crate) stdout: Watched,
    /// The stderr pipe; a terminal job has none.
    pub(crate) stderr: Option<Watched>,
    /// Where the client's stdin goes: the stdin pipe, or the terminal (typed keys).
    pub(crate) stdin: Watched,
    /// The terminal, for a terminal job.
    pub(crate) terminal: Option<Terminal>,
}

impl JobIo {
    /// Watches a new worker's stdio. On failure every end is closed, which the job sees as EOF or hangup.
    pub(crate) fn watch(io: WorkerIo) -> io::Result<JobIo> {
        Ok(match io {
            WorkerIo::Pipes { stdin, stdout, stderr } => {
                JobIo { stdout: watch(stdout)?, stderr: Some(watch(stderr)?), stdin: watch(stdin)?, terminal: None }
            }
            WorkerIo::Terminal { master } => {
                let master = watch(master)?;
                let terminal = Some(Terminal::new(Arc::clone(&master)));
                JobIo { stdout: Arc::clone(&master), stderr: None, stdin: master, terminal }
            }
        })
    }
}

/// Largest chunk sent in one message.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// How long a pump waits for more data once the worker is gone.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// How often a pump looks at a terminal that has no slave open while the worker still runs.
const HANGUP_RECHECK: Duration = Duration::from_millis(20);

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

/// Copies `reader` into `events`, each chunk wrapped by `wrap`, until its end (EOF; EIO from a pty master),
/// until `worker_gone` fired and it has been quiet for [`SETTLE`], until the receiver is dropped, until
/// `budget` runs out (the chunk that crosses it is cut at the cap), or until `abandon` fires while a chunk
/// waits for room (a forced shutdown). Returns why, and the bytes sent.
pub(crate) async fn pump<T>(
    reader: Watched,
    events: mpsc::Sender<T>,
    wrap: impl Fn(Vec<u8>) -> T,
    worker_gone: CancellationToken,
    budget: Option<std::sync::Arc<OutputBudget>>,
    abandon: CancellationToken,
) -> (PumpEnd, u64) {
    let mut sent = 0u64;
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
        let Ok(mut ready) = ready else { return (PumpEnd::Failed, sent) };
        // Allocated only while data is flowing: an idle call holds no buffer.
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        // EAGAIN becomes `WouldBlock`, on which `try_io` clears the readiness.
        let read = ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), spare_capacity(&mut chunk))?));
        match read {
            // Not ready after all: wait again.
            Err(_would_block) => {}
            Ok(Ok(0)) => return (PumpEnd::Eof, sent),
            // A pty master with no slave open. Final once the worker is gone; before that, the job may open its
            // terminal again (`/dev/tty` after closing 0, 1 and 2), and the master stays readable meanwhile:
            // look again after a pause rather than spin.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                if worker_gone.is_cancelled() {
                    return (PumpEnd::Eof, sent);
                }
                tokio::select! {
                    () = worker_gone.cancelled() => {}
                    () = tokio::time::sleep(HANGUP_RECHECK) => {}
                }
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return (PumpEnd::Failed, sent),
            Ok(Ok(n)) => {
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
        }
    }
}

/// Writes the client's stdin chunks to the worker in order until the channel closes or the job stops taking
/// input. Then, for a pipe, the server's end is closed, which the job sees as EOF; for a terminal (`eof_key`),
/// the EOF key (Ctrl-D) is typed once if the client closed stdin (its token fired), and the terminal stays
/// open.
pub(crate) async fn feed_stdin(
    writer: Watched,
    mut chunks: mpsc::Receiver<Vec<u8>>,
    eof_key: Option<(Terminal, CancellationToken)>,
) {
    while let Some(chunk) = chunks.recv().await {
        if write_all(&writer, &chunk).await.is_err() {
            // EPIPE (the job closed its stdin) or EIO (its terminal is gone). Later chunks are discarded by the
            // closed channel.
            return;
        }
    }
    if let Some((terminal, closed)) = eof_key
        && closed.is_cancelled()
        && let Some(eof) = terminal.eof_char()
    {
        let _ = write_all(&writer, &[eof]).await;
    }
}

/// Writes all of `data`, waiting for room as often as needed.
async fn write_all(writer: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut ready = writer.writable().await?;
        match ready.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), data)?)) {
            Err(_would_block) => {}
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => data = data.get(n..).unwrap_or_default(),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(())
}
