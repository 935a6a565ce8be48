//! The Prometheus endpoint: `--metrics-listen ADDR` serves the job metrics at `/metrics` (OpenMetrics text).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::job::metrics::Metrics;
use crate::job::pool::Pool;

/// Serves `/metrics` on `listener` until `stop` fires.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    pool: Arc<Pool>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = metrics.render(&pool);
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    body,
                )
            }
        }),
    );
    info!(%addr, "serving metrics at /metrics");
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
}
