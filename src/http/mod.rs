//! The HTTP side of a node: hyper 1.x HTTP/1.1 with upgrades, no framework. `serve` runs an
//! accept loop until told to stop, then lets in-flight requests finish. Upgraded WebSocket
//! connections leave hyper's graceful shutdown; the lifecycle tracks those sessions itself.

mod admin;
mod body;
mod error;
mod handlers;
mod linger;
mod router;
mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use body::{Fields, json_id, path_id};
pub use error::{ApiError, Body, json_response};
pub use router::{Listener, bearer_token, request_token};

use crate::state::AppState;

/// How long in-flight requests get to finish once the listener stops.
const GRACE: Duration = Duration::from_secs(30);

pub async fn serve(listener: TcpListener, state: Arc<AppState>, kind: Listener, stop: CancellationToken) {
    // hyper-util's GracefulShutdown does not take upgradeable connections, so connections
    // are tracked here and told to finish their in-flight request when `stop` fires.
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (stream, lingering) = match linger::split(stream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "cannot duplicate the connection's socket");
                continue;
            }
        };
        let conn_state = state.clone();
        let state = state.clone();
        // Set once a WebSocket took the socket over: then it is the session's to close.
        let upgraded = Arc::new(AtomicBool::new(false));
        let upgraded_by = upgraded.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            let upgraded = upgraded_by.clone();
            async move {
                let res = router::route(state, kind, req).await;
                if res.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                    upgraded.store(true, Ordering::Relaxed);
                }
                Ok::<_, std::convert::Infallible>(res)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(conn_state.config.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            let slowloris = res.as_ref().is_err_and(|e| e.is_timeout());
            if let Err(e) = res {
                if e.is_timeout() {
                    // Headers not sent in time: a slowloris, or a very slow client.
                    conn_state.metrics.limit_rejections.with_label_values(&["header_timeout"]).inc();
                }
                tracing::debug!(error = %e, %peer, "http connection ended with an error");
            }
            // A slowloris is cut, not waited for.
            if !upgraded.load(Ordering::Relaxed) && !slowloris {
                linger::linger(lingering).await;
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(GRACE, connections.wait()).await.is_err() {
        tracing::warn!(?kind, "in-flight requests did not finish in time");
    }
}
