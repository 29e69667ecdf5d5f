//! The server API: what an application's backend calls on the admin listener (never exposed
//! publicly, never behind a user's token) to act on the gateway.
//!
//! - `POST /admin/publish`: a message into a group, or to a user (their one-to-one
//!   conversation with the sender), on behalf of a user or of the system. It takes the same
//!   durable path as `send_message`, so it is in history, in every recipient's inbox and live
//!   on every node before the 200.
//! - `POST /admin/token`: a token for a user, for backends that authenticate users
//!   themselves and hand the gateway's token on (token mode only).
//! - `GET /admin/info`: what this node is and what it is connected to.

use hyper::StatusCode;
use serde_json::json;

use super::body::Fields;
use super::error::ApiError;
use super::handlers::{self, Reply};
use crate::model::{UserId, now_ms, rfc3339_millis};
use crate::state::AppState;

/// The sender id of system messages: no user has it (ids start at 1).
pub const SYSTEM_SENDER: UserId = 0;

pub async fn publish(state: &AppState, f: Fields) -> Reply {
    let (content, client_msg_id) = handlers::message_text(state, &f)?;
    let sender = match f.id("sender_id")? {
        Some(sender) => sender,
        None if f.id("receiver_id")?.is_some() => {
            return Err(ApiError::bad_request(
                "invalid_target",
                "A message to a user goes into their conversation with `sender_id`; give one, or a `group_id`.",
            ));
        }
        None => SYSTEM_SENDER,
    };
    let (group_id, members) = handlers::target(state, &f, sender).await?;
    if sender != SYSTEM_SENDER {
        handlers::require_member(state, sender, &members).await?;
    }
    handlers::deliver(state, group_id, sender, content, client_msg_id).await
}

pub async fn token(state: &AppState, f: Fields) -> Reply {
    let Some(tokens) = &state.tokens else {
        return Err(ApiError::new(StatusCode::CONFLICT, "token_mode_off", "This node runs without --token-secret."));
    };
    let user = f.require_id("user_id")?;
    if state.store.user(user).await?.is_none() {
        return Err(ApiError::not_found("user_not_found", format!("No user with id {user}.")));
    }
    let (token, expires) = tokens.issue(user, now_ms() / 1000);
    Ok(json!({ "user_id": user, "token": token, "token_expires_at": rfc3339_millis(expires.saturating_mul(1000)) }))
}

pub async fn info(state: &AppState) -> Reply {
    let backends = state.check_backends().await;
    let config = &state.config;
    let store = if config.database_url.starts_with("sqlite:") { "sqlite" } else { "mysql" };
    let inbox = if config.mongodb_url.is_some() { "mongodb" } else { "sql" };
    let backplane = if config.redis_url.is_some() { "redis" } else { "memory" };
    let backend = |kind: &str, up: bool| json!({ "kind": kind, "status": handlers::up_or_down(up) });
    Ok(json!({
        "node": state.node,
        "version": env!("CARGO_PKG_VERSION"),
        "phase": state.lifecycle.phase().as_str(),
        "sessions": state.hub.session_count(),
        "routing": state.config.routing.name(),
        "token_mode": state.tokens.is_some(),
        "backends": {
            "store": backend(store, backends.store),
            "inbox": backend(inbox, backends.inbox),
            "backplane": backend(backplane, backends.backplane),
        },
    }))
}
