//! REST handlers (docs/api.md). Each validates its input, calls the store and the
//! backplane in the order that keeps the delivery promise (docs/delivery.md), and answers
//! JSON.

use hyper::StatusCode;
use serde_json::json;

use super::body::Fields;
use super::error::ApiError;
use super::router::request_token;
use crate::auth::{self, Caller};
use crate::backplane::{Channel, Envelope};
use crate::model::{Group, GroupId, UserId, now_ms, rfc3339_millis};
use crate::state::{AppState, Readiness};
use crate::store::{NewMessage, Page};
use crate::ws::protocol;

pub type Reply = Result<serde_json::Value, ApiError>;

pub(super) const MAX_USERNAME: usize = 64;
const MAX_GROUP_NAME: usize = 128;
const MAX_CLIENT_MSG_ID: usize = 64;
const MAX_HISTORY: u32 = 500;

/// A trimmed name of 1..=max characters without control characters.
pub(super) fn clean_name(
    value: Option<String>,
    field: &str,
    code: &'static str,
    max: usize,
) -> Result<String, ApiError> {
    let value = value.unwrap_or_default();
    let name = value.trim();
    let len = name.chars().count();
    if len == 0 || len > max || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            code,
            format!("`{field}` must be 1 to {max} characters with no control characters."),
        ));
    }
    Ok(name.to_owned())
}

pub async fn register(state: &AppState, f: Fields) -> Reply {
    let username = clean_name(f.text("username")?, "username", "invalid_username", MAX_USERNAME)?;
    let user = state.store.create_user(&username).await?;
    tracing::info!(user_id = user.user_id, username = %user.username, node = %state.node, "user registered");
    let mut body = json!({ "user_id": user.user_id, "username": user.username });
    if let Some(tokens) = &state.tokens {
        let (token, expires) = tokens.issue(user.user_id, now_ms() / 1000);
        body["token"] = token.into();
        body["token_expires_at"] = rfc3339_millis(expires.saturating_mul(1000)).into();
    }
    Ok(body)
}

pub async fn create_group(state: &AppState, f: Fields, bearer: Option<String>) -> Reply {
    let created_by = f.require_id("created_by")?;
    auth::caller(state.tokens.as_ref(), request_token(&f, bearer)?.as_deref())?.require(created_by)?;
    let name = match f.text("name")?.or(f.text("groupName")?) {
        Some(n) if !n.trim().is_empty() => clean_name(Some(n), "name", "invalid_name", MAX_GROUP_NAME)?,
        _ => "Conversation".to_owned(),
    };
    let mut members = f.ids("user_ids")?;
    members.push(created_by);
    members.sort_unstable();
    members.dedup();
    if members.len() < 2 {
        return Err(ApiError::bad_request(
            "invalid_members",
            "`user_ids` must name at least one user besides the creator.",
        ));
    }
    if members.len() > state.config.max_group_members {
        state.metrics.limit_rejections.with_label_values(&["group_members"]).inc();
        return Err(ApiError::bad_request(
            "too_many_members",
            format!("A group has at most {} members.", state.config.max_group_members),
        ));
    }
    let (group, created) = state.store.create_group(&name, created_by, &members).await?;
    if created {
        tracing::info!(group_id = group.group_id, created_by, members = ?group.members, node = %state.node, "group created");
        announce_group(state, &group).await;
    }
    let users = state.store.users(&group.members).await?;
    let mut body = group.to_json(&users);
    body["created"] = created.into();
    Ok(body)
}

/// Tells every member's node about a new group (`user:{id}`), so connected members
/// subscribe and get `group_joined` without reconnecting. Best effort: a member who misses
/// it picks the group up at the next connect or backplane resync.
async fn announce_group(state: &AppState, group: &Group) {
    let users = match state.store.users(&group.members).await {
        Ok(users) => users,
        Err(e) => {
            tracing::warn!(error = %e, group_id = group.group_id, "could not name the members of a new group");
            return;
        }
    };
    let frame = protocol::group_joined(group, &users);
    let payload = Envelope::Joined { group_id: group.group_id, frame }.encode();
    for &member in &group.members {
        if let Err(e) = state.hub.backplane().publish(&[(Channel::User(member), payload.clone())]).await {
            tracing::warn!(error = %e, group_id = group.group_id, "could not announce group");
        }
    }
}

pub async fn send_message(state: &AppState, f: Fields, bearer: Option<String>) -> Reply {
    let sender_id = f.require_id("sender_id")?;
    auth::caller(state.tokens.as_ref(), request_token(&f, bearer)?.as_deref())?.require(sender_id)?;
    let (content, client_msg_id) = message_text(state, &f)?;
    let (group_id, members) = target(state, &f, sender_id).await?;
    require_member(state, sender_id, &members).await?;
    // Limited only once the sender is known to be a member, so unknown ids hold no bucket.
    if let Err(wait) = state.send_limiter.check(sender_id) {
        state.metrics.limit_rejections.with_label_values(&["send_rate"]).inc();
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many messages; at most {} per second.", state.config.send_rate),
        )
        .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64));
    }
    deliver(state, group_id, sender_id, content, client_msg_id).await
}

/// The validated `content` and optional `client_msg_id` of a message to send.
pub(super) fn message_text(state: &AppState, f: &Fields) -> Result<(String, Option<String>), ApiError> {
    let content = f.text("content")?.unwrap_or_default();
    if content.trim().is_empty() {
        return Err(ApiError::bad_request("empty_content", "`content` must not be empty."));
    }
    if content.len() > state.config.max_message_bytes {
        state.metrics.limit_rejections.with_label_values(&["message_size"]).inc();
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("`content` is larger than {} bytes.", state.config.max_message_bytes),
        ));
    }
    let client_msg_id = f.text("client_msg_id")?.filter(|s| !s.is_empty());
    if let Some(id) = &client_msg_id
        && (id.len() > MAX_CLIENT_MSG_ID || id.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "invalid_client_msg_id",
            format!("`client_msg_id` must be at most {MAX_CLIENT_MSG_ID} bytes without control characters."),
        ));
    }
    Ok((content, client_msg_id))
}

/// The group a message from `sender_id` goes to and its members: `group_id`, or the
/// one-to-one conversation with `receiver_id` (created on first use).
pub(super) async fn target(
    state: &AppState,
    f: &Fields,
    sender_id: UserId,
) -> Result<(GroupId, Vec<UserId>), ApiError> {
    Ok(match (f.id("group_id")?, f.id("receiver_id")?) {
        (Some(g), None) => {
            let members = state
                .store
                .group_members(g)
                .await?
                .ok_or_else(|| ApiError::not_found("group_not_found", format!("No group with id {g}.")))?;
            (g, members)
        }
        (None, Some(receiver)) => {
            if receiver == sender_id {
                return Err(ApiError::bad_request("invalid_receiver", "`receiver_id` must be another user."));
            }
            let (group, created) = state.store.create_group("Conversation", sender_id, &[receiver]).await?;
            if created {
                announce_group(state, &group).await;
            }
            (group.group_id, group.members)
        }
        _ => {
            return Err(ApiError::bad_request("invalid_target", "Give exactly one of `group_id` and `receiver_id`."));
        }
    })
}

/// Refuses a sender who is not a member (404 when the user does not exist at all).
pub(super) async fn require_member(state: &AppState, sender_id: UserId, members: &[UserId]) -> Result<(), ApiError> {
    if !members.contains(&sender_id) {
        if state.store.user(sender_id).await?.is_none() {
            return Err(ApiError::not_found("user_not_found", format!("No user with id {sender_id}.")));
        }
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not_a_member", "The sender is not a member of this group."));
    }
    Ok(())
}

/// The durable path of an accepted message, shared by `send_message` and the server API:
/// group commit (store, then publish), then the JSON answer.
pub(super) async fn deliver(
    state: &AppState,
    group_id: GroupId,
    sender_id: UserId,
    content: String,
    client_msg_id: Option<String>,
) -> Reply {
    let new = NewMessage { group_id, sender_id, content, client_msg_id, sent_at_ms: now_ms() };
    let (message, created) = state.commits.send(new).await?;
    state.metrics.messages_sent.inc();
    tracing::info!(message_id = message.message_id, group_id, sender_id, duplicate = !created, node = %state.node, "message sent");
    Ok(json!({
        "message_id": message.message_id,
        "group_id": group_id,
        "seq": message.seq,
        "timestamp": rfc3339_millis(message.sent_at_ms),
        "duplicate": !created,
    }))
}

pub async fn user_groups(state: &AppState, user: UserId) -> Reply {
    if state.store.user(user).await?.is_none() {
        return Err(ApiError::not_found("user_not_found", format!("No user with id {user}.")));
    }
    let groups = state.store.user_groups(user).await?;
    let members: Vec<UserId> = groups.iter().flat_map(|g| g.members.iter().copied()).collect();
    let users = state.store.users(&members).await?;
    Ok(serde_json::Value::Array(groups.iter().map(|g| g.to_json(&users)).collect()))
}

pub async fn group_messages(state: &AppState, group: GroupId, query: &Fields, caller: Caller) -> Reply {
    let limit = match query.id("limit") {
        Ok(None) => 100,
        Ok(Some(n)) if n <= i64::from(MAX_HISTORY) => n as u32,
        _ => {
            return Err(ApiError::bad_request("invalid_limit", format!("`limit` must be 1 to {MAX_HISTORY}.")));
        }
    };
    let page = Page { after: query.id("after")?, before: query.id("before")?, limit };
    let Some(members) = state.store.group_members(group).await? else {
        return Err(ApiError::not_found("group_not_found", format!("No group with id {group}.")));
    };
    caller.require_member(&members)?;
    let messages = state.store.messages(group, page).await?;
    Ok(serde_json::Value::Array(messages.iter().map(|m| m.to_json()).collect()))
}

/// `/readyz`: 200 when the node is ready, 503 otherwise, with the phase and each backend.
pub fn readiness(node: &str, r: &Readiness) -> (StatusCode, serde_json::Value) {
    let ready = r.ready();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "phase": r.phase.as_str(),
        "node": node,
        "backends": r.backends.by_name().iter().map(|(n, up)| (n.to_string(), json!(up_or_down(*up)))).collect::<serde_json::Map<_, _>>(),
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

/// A backend's status as `/readyz` and `/admin/info` spell it.
pub(super) fn up_or_down(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

pub fn not_found_route() -> ApiError {
    ApiError::not_found("route_not_found", "No such route.")
}
