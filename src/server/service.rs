//! The tonic service: requests in, events out. This is the only place a `tonic::Status` is built; every
//! error type of the modules below maps onto a status code here, with its message kept.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{PlanError, Prepared};
use crate::job::pool::AdmissionError;
use crate::job::{Call, Event, JobError, Jobs};
use crate::pb::{self, execute_request::Msg};
use crate::process::spawn::SpawnError;
use crate::server::auth::{AuthError, Scope, Tokens};

/// Events buffered per call between the job and the client. Small: a slow client slows the job instead.
const EVENTS_PER_CALL: usize = 4;

/// The `forkpool.v1.Executor` service.
#[derive(Debug)]
pub(crate) struct ExecutorService {
    jobs: Arc<Jobs>,
    config: Arc<Prepared>,
    tracker: TaskTracker,
}

impl ExecutorService {
    /// A service running jobs through `jobs`; job tasks are tracked by `tracker` so shutdown can wait for them.
    pub(crate) fn new(jobs: Arc<Jobs>, config: Arc<Prepared>, tracker: TaskTracker) -> Self {
        ExecutorService { jobs, config, tracker }
    }
}

/// A call's response stream. Dropping it (the call ended, for whatever reason) fires the job's
/// cancellation token: this is how a job learns that its client went away. With a heartbeat interval, it
/// yields a `heartbeat` event whenever nothing else came for that long, until the call's last event (only
/// while the client reads: an unread stream accumulates nothing).
struct CallStream {
    events: ReceiverStream<Event>,
    _cancel_on_drop: DropGuard,
    heartbeat: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    accepted: Instant,
    ended: bool,
}

impl Stream for CallStream {
    type Item = Result<pb::ExecuteResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.events).poll_next(cx) {
            Poll::Ready(item) => {
                let last = match &item {
                    Some(Ok(response)) => matches!(response.event, Some(pb::execute_response::Event::Exited(_))),
                    _ => true,
                };
                this.ended |= last;
                if let Some((interval, sleep)) = &mut this.heartbeat {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *interval);
                }
                Poll::Ready(item.map(|event| event.map_err(job_status)))
            }
            Poll::Pending => {
                let Some((interval, sleep)) = &mut this.heartbeat else { return Poll::Pending };
                if this.ended || sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                sleep.as_mut().reset(tokio::time::Instant::now() + *interval);
                let elapsed = prost_types::Duration::try_from(this.accepted.elapsed()).ok();
                let heartbeat = pb::execute_response::Event::Heartbeat(pb::Heartbeat { elapsed });
                Poll::Ready(Some(Ok(pb::ExecuteResponse { event: Some(heartbeat) })))
            }
        }
    }
}

#[tonic::async_trait]
impl pb::executor_server::Executor for ExecutorService {
    type ExecuteStream = Pin<Box<dyn Stream<Item = Result<pb::ExecuteResponse, Status>> + Send>>;

    async fn execute(
        &self,
        request: Request<Streaming<pb::ExecuteRequest>>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let deadline = grpc_timeout(request.metadata()).and_then(|t| Instant::now().checked_add(t));
        let peer = request.remote_addr();
        let scope = request.extensions().get::<Scope>().cloned().unwrap_or(Scope::Any);
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await
            .map_err(first_request_status)?
            .ok_or_else(|| Status::invalid_argument("empty request stream: the first message must be `start`"))?;
        let start = match first.msg {
            Some(Msg::Start(start)) => start,
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "the first message must be `start`, got `{}`",
                    crate::job::request_kind(&other)
                )));
            }
            None => return Err(Status::invalid_argument("the first message has no field set; it must be `start`")),
        };
        let catalog_job = (!start.job.is_empty()).then(|| start.job.clone());
        let plan = self.config.plan(start).map_err(plan_status)?;
        if !scope.allows(catalog_job.as_deref()) {
            return Err(Status::permission_denied(match catalog_job {
                Some(job) => format!("this token may not run job `{job}`"),
                None => "this token may not run raw commands".to_string(),
            }));
        }
        // Counted by the tracker from before admission: the drain closes the pool before it waits for the
        // tracker, so a call admitted at all is one the drain waits for.
        let tracked = self.tracker.token();
        let uploads = plan.files.as_ref().is_some_and(|f| !f.inputs.is_empty());
        let heartbeat = plan.heartbeat;
        let (admission, terminal) = self.jobs.admit(plan.terminal.is_some(), uploads).map_err(admission_status)?;
        let (events, receiver) = mpsc::channel(EVENTS_PER_CALL);
        let cancelled = CancellationToken::new();
        let call = Call { plan, admission, terminal, requests, events, cancelled: cancelled.clone(), deadline, peer };
        let jobs = Arc::clone(&self.jobs);
        tokio::spawn(async move {
            jobs.run(call).await;
            drop(tracked);
        });
        let stream = CallStream {
            events: ReceiverStream::new(receiver),
            _cancel_on_drop: cancelled.drop_guard(),
            heartbeat: heartbeat.map(|every| (every, Box::pin(tokio::time::sleep(every)))),
            accepted: Instant::now(),
            ended: false,
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_jobs(&self, _: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.config.job_infos(),
            raw_commands_allowed: self.config.allow_raw_commands,
        }))
    }

    async fn get_status(&self, _: Request<pb::GetStatusRequest>) -> Result<Response<pb::GetStatusResponse>, Status> {
        let pool = self.jobs.pool();
        let (running, queued) = pool.occupancy();
        let stats = self.jobs.metrics();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (mode, containment_detail) = self.jobs.containment().mode();
        Ok(Response::new(pb::GetStatusResponse {
            workers: count(pool.workers()),
            running: count(running),
            queued: count(queued),
            queue_capacity: count(pool.capacity()),
            started_total: stats.started.get(),
            finished_total: stats.finished.get(),
            cancelled_total: stats.cancelled.get(),
            timed_out_total: stats.timed_out.get(),
            rejected_total: stats.rejected.get(),
            orphans_reaped_total: self.jobs.registry().orphans_reaped(),
            containment: mode as i32,
            containment_detail,
        }))
    }
}

/// The authentication in front of the Executor service: with no tokens every call passes; otherwise a call
/// needs `authorization: Bearer <token>` and carries the token's [`Scope`] to the handler.
#[derive(Debug, Clone)]
pub(crate) struct Authenticate {
    tokens: Option<Arc<Tokens>>,
}

impl Authenticate {
    /// Checks calls against `tokens` (`None`: no authentication).
    pub(crate) fn new(tokens: Option<Tokens>) -> Self {
        Authenticate { tokens: tokens.map(Arc::new) }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else { return Ok(request) };
        let header = request.metadata().get("authorization").map(|v| v.as_bytes());
        match tokens.check(header) {
            Ok(scope) => {
                request.extensions_mut().insert(scope);
                Ok(request)
            }
            Err(e @ (AuthError::Missing | AuthError::Malformed | AuthError::Unknown)) => {
                Err(Status::unauthenticated(e.to_string()))
            }
        }
    }
}

/// The status for a failure to read the first request: tonic reports a request over the size limit as
/// `OUT_OF_RANGE` (gRPC servers say `RESOURCE_EXHAUSTED`) and one that does not decode as `INTERNAL` (it is the
/// client's: `INVALID_ARGUMENT`); transport errors pass through.
fn first_request_status(status: Status) -> Status {
    match crate::job::supervise::StreamError::of(&status) {
        crate::job::supervise::StreamError::Oversized => {
            Status::resource_exhausted(format!("request message too large: {}", status.message()))
        }
        crate::job::supervise::StreamError::Malformed => {
            Status::invalid_argument(format!("malformed request: {}", status.message()))
        }
        crate::job::supervise::StreamError::Transport => status,
    }
}

fn plan_status(e: PlanError) -> Status {
    match e {
        PlanError::InvalidArgument(m) => Status::invalid_argument(m),
        PlanError::NotFound(m) => Status::not_found(m),
        PlanError::PermissionDenied(m) => Status::permission_denied(m),
        PlanError::ResourceExhausted(m) => Status::resource_exhausted(m),
    }
}

/// Also the end of a health `Watch` when the server stops taking calls ([`super::health`]).
pub(super) fn admission_status(e: AdmissionError) -> Status {
    match e {
        AdmissionError::QueueFull { .. }
        | AdmissionError::TooManyTerminals { .. }
        | AdmissionError::TooManyUploads { .. } => Status::resource_exhausted(e.to_string()),
        AdmissionError::Closed => Status::unavailable(e.to_string()),
    }
}

fn job_status(e: JobError) -> Status {
    let message = e.to_string();
    match e {
        JobError::InvalidRequest(_) => Status::invalid_argument(message),
        JobError::MessageTooLarge(_) => Status::resource_exhausted(message),
        JobError::Spawn(SpawnError::Exec { .. }) => Status::failed_precondition(message),
        JobError::Spawn(SpawnError::InvalidCommand(_)) => Status::invalid_argument(message),
        JobError::Spawn(SpawnError::Resources(_) | SpawnError::Terminal(_)) | JobError::Stdio(_) => {
            Status::resource_exhausted(message)
        }
        // The OS refused a resource (fds, memory, processes): the same code whether a pipe or a cgroup
        // hit it. Anything else about the job's containment (a full disk, a missing tree) is the server's
        // trouble, not the request's.
        JobError::Containment(e) if is_resource_limit(&e) => Status::resource_exhausted(message),
        JobError::Spawn(SpawnError::SpawnerGone) | JobError::ShuttingDown | JobError::Containment(_) => {
            Status::unavailable(message)
        }
        JobError::Spawn(SpawnError::Cancelled) => Status::cancelled(message),
        JobError::DeadlineExceeded => Status::deadline_exceeded(message),
        JobError::Transport(code, _) => Status::new(code, message),
        JobError::Admission(e) => admission_status(e),
        // The disk is full or over quota, or a file too large for it: a resource; anything else is ours.
        JobError::Files(e)
            if is_resource_limit(&e) || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) =>
        {
            Status::resource_exhausted(message)
        }
        JobError::Files(_) => Status::internal(message),
        JobError::ClientGone => Status::cancelled(message),
        JobError::UploadStalled(_) => Status::deadline_exceeded(message),
        JobError::Internal(_) => Status::internal(message),
    }
}

/// Whether an OS error says a resource limit was hit (what `SpawnError::Resources` means for a spawn).
fn is_resource_limit(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(
            crate::containment::cgroup::os_error(e),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN)
        )
}

/// The call's deadline from the `grpc-timeout` header (`<= 8 digits><H|M|S|m|u|n>`). tonic enforces it only
/// until the response headers; for a streaming call the job enforces it. A malformed value is ignored.
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_keep_their_code_whatever_path_they_took() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let via_cgroup = crate::containment::cgroup::at_path(std::path::Path::new("/sys/fs/cgroup/x"), emfile);
        assert_eq!(job_status(JobError::Containment(via_cgroup)).code(), tonic::Code::ResourceExhausted);
        let via_pipe = JobError::Spawn(SpawnError::Resources(nix::errno::Errno::EMFILE));
        assert_eq!(job_status(via_pipe).code(), tonic::Code::ResourceExhausted);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(job_status(JobError::Containment(full)).code(), tonic::Code::Unavailable);
    }

    #[test]
    fn grpc_timeout_units() {
        let mut m = MetadataMap::new();
        for (v, d) in
            [("5S", Duration::from_secs(5)), ("250m", Duration::from_millis(250)), ("1H", Duration::from_secs(3600))]
        {
            m.insert("grpc-timeout", v.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&m), Some(d));
        }
        m.insert("grpc-timeout", "12X".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&m), None);
    }
}
