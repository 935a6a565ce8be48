//! The transport's own floor for the stdout row: the same stream forkpool sends (64 KiB `stdout` messages
//! through a 4-deep channel, then `exited`), served by a minimal gRPC server with no job behind it, on its own
//! runtime and threads, with the server's HTTP/2 windows and frame size, to the same client over loopback. What
//! forkpool adds to it (the pipe, the job, the pump) is the difference between the two rows; what the floor
//! itself costs against `head | cat` is HTTP/2 and protobuf: framing, a copy into each message, its encoding,
//! the socket, and the client's decoding.

use std::net::SocketAddr;

use forkpool::pb::{self, execute_response::Event, executor_server};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// forkpool's output chunk.
const CHUNK_BYTES: u64 = 64 * 1024;

/// Serves `bytes` of zeros as `stdout` to every `Execute` call.
struct Zeros {
    bytes: u64,
}

#[tonic::async_trait]
impl executor_server::Executor for Zeros {
    type ExecuteStream = ReceiverStream<Result<pb::ExecuteResponse, Status>>;

    async fn execute(
        &self,
        _request: Request<Streaming<pb::ExecuteRequest>>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let (events, receiver) = mpsc::channel(4);
        let mut left = self.bytes;
        tokio::spawn(async move {
            while left > 0 {
                // A buffer per message, as the pump reads one per chunk.
                let n = left.min(CHUNK_BYTES);
                let event = Event::Stdout(vec![0u8; n as usize]);
                if events.send(Ok(pb::ExecuteResponse { event: Some(event) })).await.is_err() {
                    return;
                }
                left -= n;
            }
            let exited = Event::Exited(pb::Exited::default());
            let _ = events.send(Ok(pb::ExecuteResponse { event: Some(exited) })).await;
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented("a transport floor"))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Err(Status::unimplemented("a transport floor"))
    }
}

/// Starts the floor's server on 127.0.0.1 (a thread with a runtime of its own, for the life of the process);
/// returns its URL.
pub(super) fn start(bytes: u64) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("transport-floor".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        let Ok(runtime) = runtime else { return };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .initial_stream_window_size(Some(forkpool::server::STREAM_WINDOW_BYTES))
                .initial_connection_window_size(Some(forkpool::server::CONNECTION_WINDOW_BYTES))
                .max_frame_size(Some(forkpool::server::MAX_FRAME_BYTES))
                .add_service(executor_server::ExecutorServer::new(Zeros { bytes }))
                .serve_with_incoming(incoming)
                .await;
        });
    })?;
    Ok(format!("http://{addr}"))
}
