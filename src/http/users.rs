//! People by id and by exact name: what lets a client show and find "ann" instead of
//! "user 6". Group payloads name their members too (`member_users`, see `Group::to_json`).

use serde_json::json;

use super::body::Fields;
use super::error::ApiError;
use super::handlers::{MAX_USERNAME, Reply, clean_name};
use crate::model::UserId;
use crate::state::AppState;

/// `GET /users/{id}`.
pub async fn user(state: &AppState, id: UserId) -> Reply {
    match state.store.user(id).await? {
        Some(user) => Ok(json!(user)),
        None => Err(ApiError::not_found("user_not_found", format!("No user with id {id}."))),
    }
}

/// `GET /users?username=`: the user of exactly this name. Surrounding blanks are trimmed,
/// as `POST /register` trims them, so no stored name can differ from the query only by them.
pub async fn find_user(state: &AppState, query: &Fields) -> Reply {
    let username = clean_name(query.text("username")?, "username", "invalid_username", MAX_USERNAME)?;
    match state.store.user_by_name(&username).await? {
        Some(user) => Ok(json!(user)),
        None => Err(ApiError::not_found("user_not_found", format!("No user is named {username:?}."))),
    }
}

/// `GET /users/{id}/presence`: whether the user has a session on a live node, and on how
/// many. Only `--routing node` keeps a presence store; in other modes the resource does not
/// exist (404 `presence_unavailable`, not a 5xx: nothing is failing).
pub async fn presence(state: &AppState, id: UserId) -> Reply {
    let Some(presence) = &state.presence else {
        return Err(ApiError::not_found(
            "presence_unavailable",
            "Presence is kept only by a fleet running with --routing node.",
        ));
    };
    if state.store.user(id).await?.is_none() {
        return Err(ApiError::not_found("user_not_found", format!("No user with id {id}.")));
    }
    let nodes = match presence.locate(&[id]).await {
        Ok(found) => found.get(&id).map_or(0, Vec::len),
        Err(e) => {
            tracing::warn!(error = %e, user_id = id, "presence lookup failed");
            return Err(ApiError::unavailable("presence_unavailable", "The presence store is unreachable; retry."));
        }
    };
    Ok(json!({ "user_id": id, "online": nodes > 0, "nodes": nodes }))
}
