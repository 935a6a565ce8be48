//! Files in and out of a job: the upload of its input files before it is queued, and its output files sent
//! back after its tree is gone and before `exited`. The bytes go through [`JobDir`], which never leaves the
//! job's private directory.
//!
//! Uploads come first on the call: the declared files without inline content arrive as `input` chunks, in
//! declaration order, each adding up to exactly its size and ending with `last`. Anything else before they are
//! complete ends the call with `INVALID_ARGUMENT`, naming what was expected. An upload holds no worker slot
//! (the call is staged; see [`super::pool::Staging`]).

use std::collections::{BTreeSet, VecDeque};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::stdio::CHUNK_BYTES;
use super::supervise::{Ending, sleep_until_or_never};
use super::{Event, JobError};
use crate::config::files::{FilesPlan, InputPlan, MAX_PATH_BYTES};
use crate::containment::jobdir::{Entry, Found, JobDir};
use crate::pb::{self, execute_request::Msg, execute_response::Event as Ev};

/// How an upload ended early.
#[derive(Debug)]
pub(crate) enum UploadEnd {
    /// The call ended, or sent something else than what was expected.
    Ended(Ending),
    /// Writing failed (a full disk, say).
    Failed(std::io::Error),
    /// No chunk came for this long.
    Stalled(std::time::Duration),
}

/// What ends a call while its files are uploaded.
pub(crate) struct UploadWatch<'a> {
    /// The call ended (the response stream was dropped).
    pub(crate) cancelled: &'a CancellationToken,
    /// The server is draining (no new job starts) or shutting down.
    pub(crate) draining: &'a CancellationToken,
    /// The call's deadline.
    pub(crate) deadline: Option<Instant>,
    /// Longest wait for the next chunk (`upload_idle_timeout`).
    pub(crate) idle: std::time::Duration,
}

/// Writes the declared input files into `dir`: those with inline content (or none) at once, then the others
/// from the `input` chunks of `requests`.
pub(crate) async fn receive_inputs<S>(
    dir: &JobDir,
    files: &FilesPlan,
    requests: &mut S,
    watch: UploadWatch<'_>,
) -> Result<(), UploadEnd>
where
    S: Stream<Item = Result<pb::ExecuteRequest, tonic::Status>> + Unpin,
{
    let mut chunked: VecDeque<&InputPlan> = VecDeque::new();
    for input in &files.inputs {
        match &input.content {
            Some(content) => write_whole(dir, input, content).await.map_err(UploadEnd::Failed)?,
            None if input.size == 0 => write_whole(dir, input, &[]).await.map_err(UploadEnd::Failed)?,
            None => chunked.push_back(input),
        }
    }
    let inline: BTreeSet<&str> =
        files.inputs.iter().filter(|i| i.content.is_some() || i.size == 0).map(|i| i.path.as_str()).collect();
    let mut complete: BTreeSet<&str> = BTreeSet::new();
    let mut deadline = sleep_until_or_never(watch.deadline);
    while let Some(input) = chunked.pop_front() {
        let mut file = dir.create(&input.path, input.mode, false).map_err(UploadEnd::Failed)?;
        let mut received = 0u64;
        loop {
            let request = tokio::select! {
                biased;
                () = watch.cancelled.cancelled() => return Err(UploadEnd::Ended(Ending::Cancelled)),
                () = &mut deadline => return Err(UploadEnd::Ended(Ending::Deadline)),
                () = watch.draining.cancelled() => return Err(UploadEnd::Ended(Ending::Shutdown)),
                () = tokio::time::sleep(watch.idle) => return Err(UploadEnd::Stalled(watch.idle)),
                request = requests.next() => request,
            };
            let expected =
                || format!("`input` chunks of {} ({received} of its {} bytes so far)", input.path, input.size);
            let invalid = |m: String| Err(UploadEnd::Ended(Ending::Invalid(m)));
            let chunk = match request {
                None => {
                    return invalid(format!("the request stream ended while expecting {}", expected()));
                }
                Some(Err(status)) => return Err(UploadEnd::Ended(Ending::of_stream_error(&status, ""))),
                Some(Ok(pb::ExecuteRequest { msg: Some(Msg::Input(chunk)) })) => chunk,
                Some(Ok(pb::ExecuteRequest { msg: other })) => {
                    let kind = other.as_ref().map_or("a request with no field set", super::request_kind);
                    return invalid(format!(
                        "expected {}, got `{kind}`: stdin, signal and close_stdin may only follow the uploads",
                        expected()
                    ));
                }
            };
            if chunk.path != input.path {
                let why = if complete.contains(chunk.path.as_str()) {
                    "which is complete already (its `last` chunk came)"
                } else if chunked.iter().any(|i| i.path == chunk.path) {
                    "which comes later: files are sent in declaration order"
                } else if inline.contains(chunk.path.as_str()) {
                    "whose content came inline (or whose size is 0)"
                } else {
                    "which is not a declared input file"
                };
                return invalid(format!("expected {}, got a chunk of {} {why}", expected(), chunk.path));
            }
            let total = received.saturating_add(chunk.data.len() as u64);
            if total > input.size {
                return invalid(format!(
                    "input {}: {total} bytes sent, its declared size is {}",
                    input.path, input.size
                ));
            }
            write_blocking(&mut file, &chunk.data).map_err(UploadEnd::Failed)?;
            received = total;
            if chunk.last {
                if received != input.size {
                    return invalid(format!(
                        "input {} ended (`last`) after {received} of its {} bytes",
                        input.path, input.size
                    ));
                }
                complete.insert(input.path.as_str());
                break;
            }
        }
    }
    Ok(())
}

/// Writes a whole input file at once.
async fn write_whole(dir: &JobDir, input: &InputPlan, content: &[u8]) -> std::io::Result<()> {
    let mut file = dir.create(&input.path, input.mode, false)?;
    write_blocking(&mut file, content)
}

/// Writes to a file in place, telling the runtime this thread may block meanwhile (a write to the page
/// cache takes well under a millisecond per MiB; a slow disk must not stall other calls' tasks). Cheaper than
/// handing each chunk to another thread.
fn write_blocking(file: &mut std::fs::File, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    tokio::task::block_in_place(|| file.write_all(data))
}

/// Most entries in `exited.outputs` (and at most [`MAX_REPORT_BYTES`] of paths): `exited` must stay well
/// under a client's message limit (4 MiB by default) whatever a pattern matches. Matches beyond are neither
/// sent nor reported (the log says so).
pub(crate) const MAX_REPORTED: usize = 2000;
/// Most bytes of paths in `exited.outputs`.
pub(crate) const MAX_REPORT_BYTES: usize = 1 << 20;

/// Sends the job's output files as `output` chunks (back-pressure as for stdout) and returns what became of
/// each requested path and each pattern match, for `exited`. `inputs` count against `file_count`. Stops early
/// (`Err`) if the client is gone, the forced shutdown abandons it, or the call's `deadline` passes.
pub(crate) async fn send_outputs(
    dir: &JobDir,
    files: &FilesPlan,
    events: &mpsc::Sender<Event>,
    abandon: &CancellationToken,
    deadline: Option<Instant>,
) -> Result<Vec<pb::OutputFile>, JobError> {
    let limits = files.limits;
    let mut report: Vec<pb::OutputFile> = Vec::new();
    let mut report_bytes = 0usize;
    let mut listed: Option<Vec<Entry>> = None;
    // Each file's fate, so a file matched twice is sent once.
    let mut done: std::collections::BTreeMap<String, (pb::OutputState, u64)> = Default::default();
    let mut count = files.inputs.len() as u64;
    let mut total = 0u64;
    let mut deadline = sleep_until_or_never(deadline);
    for request in &files.outputs {
        let paths = match &request.glob {
            None => vec![request.pattern.clone()],
            Some(glob) => {
                let entries = listed.get_or_insert_with(|| list(dir));
                let matched: Vec<String> =
                    entries.iter().filter(|e| !e.dir && glob.is_match(&e.path)).map(|e| e.path.clone()).collect();
                if matched.is_empty() && report.len() < MAX_REPORTED && report_bytes < MAX_REPORT_BYTES {
                    report_bytes += request.pattern.len();
                    report.push(output_file(&request.pattern, pb::OutputState::Missing, 0));
                }
                matched
            }
        };
        for path in paths {
            if report.len() >= MAX_REPORTED || report_bytes >= MAX_REPORT_BYTES {
                warn!(reported = report.len(), "more output matches than `exited` can report; the rest are skipped");
                return Ok(report);
            }
            if let Some((state, size)) = done.get(&path) {
                // Matched by an earlier pattern: a literal request is still reported, a pattern's repeat is not.
                if request.glob.is_none() {
                    report.push(output_file(&path, *state, *size));
                }
                continue;
            }
            let found = tokio::task::block_in_place(|| dir.open_output(&path)).unwrap_or_else(|e| {
                warn!(%path, error = %e, "cannot look at an output file; reported as not regular");
                Found::NotRegular { size: 0 }
            });
            let (state, size) = match found {
                Found::Missing => (pb::OutputState::Missing, 0),
                Found::NotRegular { size } => (pb::OutputState::NotRegular, size),
                Found::File { size, .. }
                    if size > limits.output_file_bytes
                        || total.saturating_add(size) > limits.output_files_bytes
                        || count >= limits.file_count =>
                {
                    (pb::OutputState::TooLarge, size)
                }
                Found::File { file, size, mode } => {
                    let sent = tokio::select! {
                        sent = send_file(&path, file, size, mode, events, abandon) => sent?,
                        () = &mut deadline => return Err(JobError::DeadlineExceeded),
                    };
                    total += sent;
                    count += 1;
                    (pb::OutputState::Sent, sent)
                }
            };
            report_bytes += path.len();
            report.push(output_file(&path, state, size));
            done.insert(path, (state, size));
        }
    }
    Ok(report)
}

/// The job directory's entries for pattern matching; none (so every pattern is MISSING) if it cannot be read.
fn list(dir: &JobDir) -> Vec<Entry> {
    match tokio::task::block_in_place(|| dir.list(MAX_PATH_BYTES)) {
        Ok((entries, truncated)) => {
            if truncated {
                warn!(
                    entries = entries.len(),
                    "the job's directory has more entries than are matched against patterns"
                );
            }
            entries
        }
        Err(e) => {
            warn!(error = %e, "cannot list the job's directory for its output patterns");
            Vec::new()
        }
    }
}

/// The report when the job's directory itself is gone: every requested path and pattern is missing.
pub(crate) fn all_missing(files: &FilesPlan) -> Vec<pb::OutputFile> {
    files.outputs.iter().map(|o| output_file(&o.pattern, pb::OutputState::Missing, 0)).collect()
}

fn output_file(path: &str, state: pb::OutputState, size: u64) -> pb::OutputFile {
    pb::OutputFile { path: path.to_string(), state: state as i32, size }
}

/// Streams one file, at most `size` bytes (it cannot grow: the job's tree is gone), in chunks of at most
/// [`CHUNK_BYTES`], the last one flagged (an empty file is one empty `last` chunk). Returns the bytes sent.
async fn send_file(
    path: &str,
    file: std::fs::File,
    size: u64,
    mode: u32,
    events: &mpsc::Sender<Event>,
    abandon: &CancellationToken,
) -> Result<u64, JobError> {
    let mut file = tokio::fs::File::from_std(file).take(size);
    let mut sent = 0u64;
    let mut chunk = vec![0u8; CHUNK_BYTES.min(usize::try_from(size).unwrap_or(CHUNK_BYTES)).max(1)];
    let mut next = read_full(&mut file, &mut chunk).await.map_err(JobError::Files)?;
    loop {
        let data = chunk[..next].to_vec();
        sent += next as u64;
        // One chunk ahead: `last` is known when the next read comes back empty.
        let following = if next == 0 { 0 } else { read_full(&mut file, &mut chunk).await.map_err(JobError::Files)? };
        let last = following == 0;
        let event = Ok(pb::ExecuteResponse {
            event: Some(Ev::Output(pb::FileChunk { path: path.to_string(), data, last, mode })),
        });
        tokio::select! {
            sent = events.send(event) => if sent.is_err() {
                return Err(JobError::ClientGone);
            },
            () = abandon.cancelled() => return Err(JobError::ClientGone),
        }
        if last {
            return Ok(sent);
        }
        next = following;
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
async fn read_full<R: AsyncReadExt + Unpin>(reader: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
