//! Routing: a plain `match` on method and path, one table per listener. Every answer is
//! counted under its route template, never under a raw path, so labels stay bounded.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};

use super::body::{Fields, path_id};
use super::error::{ApiError, Body, json_response};
use super::{admin, handlers, users};
use crate::auth::{self, Caller};
use crate::state::AppState;

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// REST, WebSocket and the page.
    Public,
    /// Operations: metrics, probes, drain, and the server API for backends.
    Admin,
}

pub async fn route(state: Arc<AppState>, listener: Listener, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (template, result) = match (listener, &method, segments.as_slice()) {
        (Listener::Public, &Method::GET, [""]) => {
            ("/", Ok(html(Bytes::from_static(crate::web::INDEX_HTML.as_bytes()))))
        }
        (Listener::Public, &Method::GET, ["openapi.yaml"]) => ("/openapi.yaml", Ok(openapi())),
        (Listener::Public, &Method::POST, ["register"]) => {
            ("/register", async { handlers::register(&state, form(&state, req).await?).await.map(ok_json) }.await)
        }
        (Listener::Public, &Method::POST, ["create_group"]) => {
            let bearer = bearer_token(&req);
            let reply = async { handlers::create_group(&state, form(&state, req).await?, bearer).await.map(ok_json) };
            ("/create_group", reply.await)
        }
        (Listener::Public, &Method::POST, ["send_message"]) => {
            let bearer = bearer_token(&req);
            let reply = async { handlers::send_message(&state, form(&state, req).await?, bearer).await.map(ok_json) };
            ("/send_message", reply.await)
        }
        (Listener::Public, &Method::GET, ["users"]) => {
            let reply = async {
                let query = Fields::from_query(req.uri().query().unwrap_or("").as_bytes())?;
                users::find_user(&state, &query).await.map(ok_json)
            };
            ("/users", reply.await)
        }
        (Listener::Public, &Method::GET, ["users", id]) => {
            let r = match path_id(id, "user") {
                Ok(user) => users::user(&state, user).await.map(ok_json),
                Err(e) => Err(e),
            };
            ("/users/{id}", r)
        }
        (Listener::Public, &Method::GET, ["users", id, "groups"]) => {
            let reply = async {
                let user = path_id(id, "user")?;
                query_caller(&state, &req)?.1.require(user)?;
                handlers::user_groups(&state, user).await.map(ok_json)
            };
            ("/users/{id}/groups", reply.await)
        }
        (Listener::Public, &Method::GET, ["users", id, "presence"]) => {
            let reply = async {
                let user = path_id(id, "user")?;
                // In token mode any signed-in user may see anyone's presence, as in a chat
                // client's contact list; anonymous callers may not.
                query_caller(&state, &req)?;
                users::presence(&state, user).await.map(ok_json)
            };
            ("/users/{id}/presence", reply.await)
        }
        (Listener::Public, &Method::GET, ["groups", id, "messages"]) => {
            let reply = async {
                let group = path_id(id, "group")?;
                let (query, caller) = query_caller(&state, &req)?;
                handlers::group_messages(&state, group, &query, caller).await.map(ok_json)
            };
            ("/groups/{id}/messages", reply.await)
        }
        (Listener::Public, &Method::GET, ["ws", id]) => {
            let id = (*id).to_owned();
            ("/ws/{user_id}", crate::ws::upgrade(&state, req, &id).await)
        }
        (Listener::Admin, &Method::POST, ["admin", "publish"]) => {
            ("/admin/publish", async { admin::publish(&state, form(&state, req).await?).await.map(ok_json) }.await)
        }
        (Listener::Admin, &Method::POST, ["admin", "token"]) => {
            ("/admin/token", async { admin::token(&state, form(&state, req).await?).await.map(ok_json) }.await)
        }
        (Listener::Admin, &Method::GET, ["admin", "info"]) => ("/admin/info", admin::info(&state).await.map(ok_json)),
        (Listener::Admin, &Method::POST, ["admin", "drain"]) => {
            state.lifecycle.drain();
            ("/admin/drain", Ok(json_response(StatusCode::ACCEPTED, &serde_json::json!({ "phase": "draining" }))))
        }
        (_, &Method::GET, ["healthz"]) => {
            ("/healthz", Ok(json_response(StatusCode::OK, &serde_json::json!({ "status": "ok", "node": state.node }))))
        }
        (_, &Method::GET, ["readyz"]) => {
            let (status, body) = handlers::readiness(&state.node, &state.readiness().await);
            ("/readyz", Ok(json_response(status, &body)))
        }
        (_, &Method::GET, ["metrics"]) => ("/metrics", Ok(metrics(&state))),
        (Listener::Public, _, ["" | "openapi.yaml" | "register" | "create_group" | "send_message" | "users"])
        | (
            Listener::Public,
            _,
            ["users", _] | ["users", _, "groups" | "presence"] | ["groups", _, "messages"] | ["ws", _],
        )
        | (Listener::Admin, _, ["admin", "drain" | "publish" | "token" | "info"])
        | (_, _, ["healthz" | "readyz" | "metrics"]) => (
            "method_not_allowed",
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here."),
            )),
        ),
        _ => ("unknown", Err(handlers::not_found_route())),
    };
    if let Err(e) = &result
        && e.code == "body_too_large"
    {
        state.metrics.limit_rejections.with_label_values(&["body_size"]).inc();
    }
    let mut res = result.unwrap_or_else(ApiError::into_response);
    if state.lifecycle.is_draining() && res.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Keep-alive off while draining, so clients move to other nodes.
        res.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    let m = &state.metrics;
    m.http_requests.with_label_values(&[template, res.status().as_str()]).inc();
    m.http_duration.with_label_values(&[template]).observe(started.elapsed().as_secs_f64());
    res
}

/// The token of `Authorization: Bearer <token>`, if any (signed-token mode).
pub fn bearer_token<B>(req: &Request<B>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

/// A request's token: its `token` field (body or query string), else its bearer token.
pub fn request_token(fields: &Fields, bearer: Option<String>) -> Result<Option<String>, ApiError> {
    Ok(fields.text("token")?.or(bearer))
}

/// The query string of a GET and who it comes from (401 in token mode without a valid token).
fn query_caller<B>(state: &AppState, req: &Request<B>) -> Result<(Fields, Caller), ApiError> {
    let query = Fields::from_query(req.uri().query().unwrap_or("").as_bytes())?;
    let caller = auth::caller(state.tokens.as_ref(), request_token(&query, bearer_token(req))?.as_deref())?;
    Ok((query, caller))
}

async fn form(state: &AppState, req: Request<Incoming>) -> Result<Fields, ApiError> {
    Fields::read(req, state.config.max_body_bytes).await
}

fn ok_json(v: serde_json::Value) -> Response<Body> {
    json_response(StatusCode::OK, &v)
}

fn html(page: Bytes) -> Response<Body> {
    let mut res = Response::new(Full::new(page));
    res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
    res
}

fn openapi() -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from_static(crate::web::OPENAPI_YAML.as_bytes())));
    res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/yaml"));
    res
}

fn metrics(state: &AppState) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(state.metrics.render())));
    res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
    res
}
