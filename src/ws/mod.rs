//! WebSocket endpoint `/ws/{user_id}`: checks the request before upgrading (bad id 400,
//! unknown user 404, draining 503 + Retry-After), then runs a [`session`].

mod coalesce;
mod cursor;
pub mod protocol;
mod reader;
mod session;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::http::{ApiError, Body, Fields, bearer_token, path_id, request_token};
use crate::state::AppState;

pub async fn upgrade(
    state: &Arc<AppState>,
    mut req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let reject = |reason: &str, e: ApiError| {
        state.metrics.ws_upgrade_rejected.with_label_values(&[reason]).inc();
        e
    };
    let limited = |limit: &str| state.metrics.limit_rejections.with_label_values(&[limit]).inc();
    let config = &state.config;
    if state.lifecycle.is_draining() {
        let e = ApiError::unavailable("draining", "This node is draining; reconnect to another node.");
        return Err(reject("draining", e.retry_after(2)));
    }
    let user_id = path_id(raw_id, "user").map_err(|e| reject("bad_request", e))?;
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let e = ApiError::bad_request("not_websocket", "Expected a WebSocket upgrade request.");
        return Err(reject("bad_request", e));
    }
    if let Some(origin) = req.headers().get(hyper::header::ORIGIN) {
        let allowed = &config.allowed_origins;
        if !allowed.is_empty() && !allowed.iter().any(|o| o.as_bytes() == origin.as_bytes()) {
            let e = ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", "This Origin may not open WebSockets.");
            return Err(reject("origin", e));
        }
    }
    let query = Fields::from_query(req.uri().query().unwrap_or("").as_bytes()).map_err(|e| reject("bad_request", e))?;
    let token = request_token(&query, bearer_token(&req)).map_err(|e| reject("bad_request", e))?;
    let caller = crate::auth::caller(state.tokens.as_ref(), token.as_deref()).map_err(|e| reject("unauthorized", e))?;
    caller.require(user_id).map_err(|e| reject("forbidden", e))?;
    if state.metrics.ws_connections.get() >= config.max_connections as i64 {
        limited("connections");
        let e = ApiError::unavailable("over_capacity", "This node is at its connection limit; try another.");
        return Err(reject("over_capacity", e.retry_after(2)));
    }
    if state.hub.user_session_count(user_id) >= config.max_connections_per_user {
        limited("connections_per_user");
        let detail = format!("A user may hold at most {} sessions per node.", config.max_connections_per_user);
        let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_connections", detail);
        return Err(reject("too_many_connections", e.retry_after(5)));
    }
    match state.reads.user_exists(user_id).await {
        Ok(true) => {}
        Ok(false) => {
            let e = ApiError::not_found("user_not_found", format!("No user with id {user_id}."));
            return Err(reject("unknown_user", e));
        }
        Err(e) => return Err(reject("backend_unavailable", ApiError::store_unavailable(&e))),
    }
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
