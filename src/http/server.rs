//! The accept loop: HTTP/1.1 connections served by hyper with the limits that keep slow,
//! oversized or numerous clients from exhausting the service (docs/operations.md#hostile-clients).
//! `axum::serve` has no knobs for these, so the loop is ours.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::HostileLimits;
use crate::metrics::Metrics;

/// Serves `router` on `listener` until `stop_accepting` completes, then closes the
/// listener, lets every connection finish the request in hand, and returns once all are
/// closed (idle ones at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HostileLimits,
    metrics: &Metrics,
    stop_accepting: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // hyper starts this clock whenever it waits for a request head, so it also ends
        // an idle keep-alive connection.
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop_accepting);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    pause_after_accept_error(e).await;
                    continue;
                }
            },
            () = &mut stop_accepting => break,
        };
        // Past the limit the connection is closed at once rather than left in the
        // backlog: a prober (or a good client) then fails fast and can go elsewhere,
        // instead of hanging until slow clients time out.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            tracing::debug!(%remote, "connection limit reached (CARTBUS_MAX_CONNECTIONS): closing a new connection");
            continue;
        };
        let open = metrics.http_connections.clone();
        open.inc();
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and malformed requests: the client's problem.
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Accepting fails for two kinds of reason: the one connection went wrong (reset before
/// it was accepted), or the process is out of file descriptors. A short pause lets the
/// latter clear instead of spinning.
async fn pause_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "cannot accept connections; retrying shortly");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
