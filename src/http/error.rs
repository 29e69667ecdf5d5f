//! The one mapping from failures to HTTP answers. Every error is JSON,
//! `{"detail": "<sentence>", "code": "<snake_case>"}`; a client's mistake is a 4xx, a backend
//! outage a 503, and nothing a client sends can produce a 500.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};

use crate::store::StoreError;

pub type Body = Full<Bytes>;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds for a `Retry-After` header (draining, rate limits, outages).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(1)
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "detail": self.detail, "code": self.code });
        let mut res = json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        res
    }
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    res
}

impl ApiError {
    /// 503 for a store that failed (logged); the client retries.
    pub fn store_unavailable(e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "store unavailable");
        Self::unavailable("store_unavailable", "The message store is unavailable; retry shortly.")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => {
                Self::new(StatusCode::CONFLICT, "username_taken", "That username is already taken.")
            }
            StoreError::UnknownUsers(ids) => Self::not_found("user_not_found", format!("No user with id {ids:?}.")),
            StoreError::ClientMsgIdReused => Self::new(
                StatusCode::CONFLICT,
                "client_msg_id_reused",
                "This client_msg_id was already used for a different message.",
            ),
            StoreError::Unavailable(_) | StoreError::Migration(_) | StoreError::Closed => Self::store_unavailable(&e),
        }
    }
}
