//! WebSocket endpoint `/ws/{user_id}`: checks the request before upgrading (bad id 400,
//! unknown user 404, draining 503 + Retry-After), then runs a [`session`].

pub mod protocol;
mod session;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::app::AppState;
use crate::http::{ApiError, Body, Fields, parse_id};

pub async fn upgrade(
    state: &Arc<AppState>,
    mut req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let reject = |reason: &str, e: ApiError| {
        state.metrics.ws_upgrade_rejected.with_label_values(&[reason]).inc();
        e
    };
    if state.lifecycle.is_draining() {
        return Err(reject(
            "draining",
            ApiError::unavailable("draining", "This node is draining; reconnect to another node.").retry_after(2),
        ));
    }
    let Some(user_id) = parse_id(&serde_json::Value::String(raw_id.to_owned())) else {
        return Err(reject(
            "bad_request",
            ApiError::bad_request("invalid_id", "The user id must be a positive integer."),
        ));
    };
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Err(reject(
            "bad_request",
            ApiError::bad_request("not_websocket", "Expected a WebSocket upgrade request."),
        ));
    }
    match state.store.user(user_id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(reject(
                "unknown_user",
                ApiError::not_found("user_not_found", format!("No user with id {user_id}.")),
            ));
        }
        Err(e) => return Err(reject("backend_unavailable", e.into())),
    }
    let query = Fields::from_query(req.uri().query().unwrap_or(""));
    let ack_mode = matches!(query.text("ack").ok().flatten().as_deref(), Some("1" | "true"));
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut req).map_err(|e| {
        reject("bad_request", ApiError::bad_request("bad_handshake", format!("Bad WebSocket handshake: {e}.")))
    })?;
    let session_state = state.clone();
    state.sessions.spawn(async move {
        match upgrade.await {
            Ok(ws) => session::run(session_state, ws, user_id, ack_mode).await,
            Err(e) => tracing::debug!(error = %e, user_id, "upgrade failed"),
        }
    });
    let (parts, _) = response.into_parts();
    let mut res = Response::from_parts(parts, Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    Ok(res)
}
