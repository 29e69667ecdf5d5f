//! Request decoding: form-urlencoded (what an HTML form sends) or JSON, into one field
//! list that handlers read by name. Unknown fields are ignored; a field given twice with
//! different values is refused unless it is a list.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::Value;

use super::error::ApiError;
use crate::model::parse_id;

#[derive(Debug, Default)]
pub struct Fields {
    items: Vec<(String, Value)>,
}

impl Fields {
    /// Reads the body (at most `limit` bytes) and decodes it by content type. A media type
    /// that cannot be decoded, or a declared length over the limit, is refused before a byte
    /// of the body is read (the connection's close then drains it; see `linger`).
    pub async fn read(req: Request<Incoming>, limit: usize) -> Result<Fields, ApiError> {
        let content_type =
            req.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        media_kind(content_type.as_deref())?;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("The request body is larger than {limit} bytes."),
            )
        };
        if hyper::body::Body::size_hint(req.body()).lower() > limit as u64 {
            return Err(too_large());
        }
        let body = match Limited::new(req.into_body(), limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
            Err(_) => {
                return Err(ApiError::bad_request("invalid_body", "The request body could not be read."));
            }
        };
        Self::parse(content_type.as_deref(), &body)
    }

    /// Decodes a body; pure, so it can be fuzzed.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Fields, ApiError> {
        let kind = media_kind(content_type)?;
        let looks_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if kind == "application/json" || (kind.is_empty() && looks_json) {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request("invalid_json", format!("The body is not valid JSON: {e}.")))?;
            let Value::Object(map) = value else {
                return Err(ApiError::bad_request("invalid_json", "The JSON body must be an object."));
            };
            return Ok(Fields { items: map.into_iter().collect() });
        }
        Self::from_query(body)
    }

    /// Decodes a query string (or form body). Every name and value must be UTF-8 once
    /// percent-decoded: a lossy decoding would store U+FFFD in place of what the client sent,
    /// so `%ff` anywhere is a 400 rather than silently altered text.
    pub fn from_query(query: &[u8]) -> Result<Fields, ApiError> {
        let items = query
            .split(|&b| b == b'&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let mut parts = pair.splitn(2, |&b| b == b'=');
                let name = decode_component(parts.next().unwrap_or_default())?;
                let value = decode_component(parts.next().unwrap_or_default())?;
                Ok((name, Value::String(value)))
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Fields { items })
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.items.iter().filter(move |(k, _)| k == name).map(|(_, v)| v)
    }

    /// The single value of a field; a repeated field must repeat the same value.
    fn one<'a>(&'a self, name: &'a str) -> Result<Option<&'a Value>, ApiError> {
        let mut values = self.all(name);
        let first = values.next();
        if let Some(first) = first
            && values.any(|v| v != first)
        {
            return Err(ApiError::bad_request("duplicate_field", format!("`{name}` is given more than once.")));
        }
        Ok(first.filter(|v| !v.is_null()))
    }

    /// A text field. Numbers are accepted as their decimal text.
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.one(name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(ApiError::bad_request("invalid_field", format!("`{name}` must be a string."))),
        }
    }

    /// A positive id, as a JSON number or a decimal string.
    pub fn id(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.one(name)? {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(v) => json_id(v).map(Some).ok_or_else(|| invalid_id(name)),
        }
    }

    /// A required positive id.
    pub fn require_id(&self, name: &str) -> Result<i64, ApiError> {
        self.id(name)?.ok_or_else(|| ApiError::bad_request("missing_field", format!("`{name}` is required.")))
    }

    /// A list of ids: a JSON array, comma-separated text, or the field repeated.
    pub fn ids(&self, name: &str) -> Result<Vec<i64>, ApiError> {
        let mut out = Vec::new();
        for v in self.all(name) {
            match v {
                Value::Array(items) => {
                    for item in items {
                        out.push(json_id(item).ok_or_else(|| invalid_id(name))?);
                    }
                }
                Value::String(s) => {
                    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        out.push(parse_id(part).ok_or_else(|| invalid_id(name))?);
                    }
                }
                Value::Null => {}
                other => out.push(json_id(other).ok_or_else(|| invalid_id(name))?),
            }
        }
        Ok(out)
    }
}

/// The media type of a body this decoder reads: JSON, a form, or none given (415 otherwise).
fn media_kind(content_type: Option<&str>) -> Result<String, ApiError> {
    let kind = content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match kind.as_str() {
        "" | "application/json" | "application/x-www-form-urlencoded" => Ok(kind),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send application/x-www-form-urlencoded or application/json.",
        )),
    }
}

/// One `application/x-www-form-urlencoded` name or value: `+` is a space, then `%XX` escapes.
fn decode_component(raw: &[u8]) -> Result<String, ApiError> {
    let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("invalid_encoding", "A field is not valid UTF-8 once percent-decoded."))
}

fn invalid_id(name: &str) -> ApiError {
    ApiError::bad_request("invalid_id", format!("`{name}` must be a positive integer id."))
}

/// A positive 64-bit id from a JSON number or a decimal string.
pub fn json_id(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().filter(|id| *id > 0),
        Value::String(s) => parse_id(s),
        _ => None,
    }
}

/// The id in a path segment (`/users/{id}`, `/ws/{user_id}`); `what` names it in the 400.
pub fn path_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    parse_id(raw)
        .ok_or_else(|| ApiError::bad_request("invalid_id", format!("The {what} id must be a positive integer.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_json_give_the_same_fields() {
        let form = Fields::parse(Some("application/x-www-form-urlencoded"), b"sender_id=3&content=hi+there&x=1")
            .expect("form");
        let json =
            Fields::parse(Some("application/json"), br#"{"sender_id":3,"content":"hi there","x":[1]}"#).expect("json");
        for f in [&form, &json] {
            assert_eq!(f.require_id("sender_id").expect("id"), 3);
            assert_eq!(f.text("content").expect("text").as_deref(), Some("hi there"));
        }
    }

    #[test]
    fn id_lists_in_every_spelling() {
        let a = Fields::parse(None, b"user_ids=2,3&user_ids=4").expect("form");
        assert_eq!(a.ids("user_ids").expect("ids"), vec![2, 3, 4]);
        let b = Fields::parse(None, br#"{"user_ids":[2,"3"]}"#).expect("json");
        assert_eq!(b.ids("user_ids").expect("ids"), vec![2, 3]);
        let c = Fields::parse(None, br#"{"user_ids":"5"}"#).expect("json");
        assert_eq!(c.ids("user_ids").expect("ids"), vec![5]);
        assert!(Fields::parse(None, b"user_ids=1,x").expect("form").ids("user_ids").is_err());
    }

    #[test]
    fn bad_ids_and_bodies_are_client_errors() {
        for bad in ["0", "-1", "1.5", "abc", "99999999999999999999", "1e3"] {
            let f = Fields::from_query(format!("id={bad}").as_bytes()).expect("decodes");
            let e = f.id("id").expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(Fields::parse(Some("application/json"), b"{nope").expect_err("bad json").code, "invalid_json");
        assert_eq!(Fields::parse(Some("application/json"), b"[1]").expect_err("not an object").code, "invalid_json");
        assert_eq!(
            Fields::parse(Some("text/plain"), b"x").expect_err("media").status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(Fields::parse(None, b"a=1&a=2").expect("form").id("a").expect_err("dup").code, "duplicate_field");
        assert_eq!(Fields::parse(None, b"a=1&a=1").expect("form").id("a").expect("same twice"), Some(1));
    }

    #[test]
    fn invalid_utf8_after_percent_decoding_is_refused_in_names_and_values() {
        for bad in [&b"content=%ff%fe"[..], b"%ff=1", b"a=1&b=%c3", b"content=ok&x=\xff"] {
            let e = Fields::parse(None, bad).expect_err("invalid UTF-8");
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_encoding"), "{bad:?}");
        }
        let f = Fields::parse(None, b"content=%C3%A9t%C3%A9+%2B1&empty=&flag").expect("valid UTF-8");
        assert_eq!(f.text("content").expect("text").as_deref(), Some("\u{e9}t\u{e9} +1"));
        assert_eq!(f.text("empty").expect("text").as_deref(), Some(""));
        assert_eq!(f.text("flag").expect("text").as_deref(), Some(""));
    }
}
