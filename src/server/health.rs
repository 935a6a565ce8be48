//! The `grpc.health.v1` service: tonic-health's, except that every `Watch` stream ends, with `UNAVAILABLE`, at
//! the drain's GOAWAY (not at a `max_connection_age` one). A watcher that ignores GOAWAY would otherwise keep
//! its connection, and with it the end of the shutdown, open until the close grace ran out.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::job::pool::AdmissionError;

/// Sets the status of the server as a whole (`""`) and of the Executor service, which health checkers ask
/// about (either may be configured).
pub(crate) async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    for service in ["", super::SERVICE_NAME] {
        reporter.set_service_status(service, status).await;
    }
}

/// The health service for `reporter`'s statuses, whose watches end when `stop` fires.
pub(crate) fn service(reporter: HealthReporter, stop: CancellationToken) -> HealthServer<EndingHealth> {
    HealthServer::new(EndingHealth { inner: HealthService::from_health_reporter(reporter), stop })
}

/// tonic-health's service with watches that end at `stop`.
pub(crate) struct EndingHealth {
    inner: HealthService,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl Health for EndingHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = EndingWatch;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<EndingWatch>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(EndingWatch { inner, stop: Box::pin(self.stop.clone().cancelled_owned()), ended: false }))
    }
}

/// A status whenever it changes (the first at once), then `UNAVAILABLE` at the drain's GOAWAY.
pub(crate) struct EndingWatch {
    inner: tonic_health::server::WatchStream,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl Stream for EndingWatch {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // A change first (NOT_SERVING is set when the drain begins, before the stop), then the end.
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
            Poll::Ready(None) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if self.stop.as_mut().poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(Some(Err(super::service::admission_status(AdmissionError::Closed))));
        }
        Poll::Pending
    }
}
