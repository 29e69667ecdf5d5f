//! Fuzz target for the two parsers that read untrusted bytes before anything else does:
//! `Fields` (REST bodies and query strings) and `parse_client_text` (WebSocket text frames).
//! Properties: no panic; every decoding error is a 4xx; an accepted ack holds only positive
//! ids and no more than `MAX_ACK_IDS`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::http::{ApiError, Fields};
use switchboard::ws::protocol::{ClientFrame, MAX_ACK_IDS, ProtocolError, parse_client_text};

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
    Some(""),
];

const NAMES: &[&str] = &[
    "username",
    "name",
    "groupName",
    "created_by",
    "user_ids",
    "sender_id",
    "group_id",
    "receiver_id",
    "content",
    "client_msg_id",
    "after",
    "before",
    "limit",
];

fn client_error(e: &ApiError) {
    assert!(e.status.is_client_error(), "status {} for {}", e.status, e.code);
}

fn exercise(f: &Fields) {
    for name in NAMES {
        if let Err(e) = f.text(name) {
            client_error(&e);
        }
        match f.id(name) {
            Ok(Some(id)) => assert!(id >= 1),
            Ok(None) => {}
            Err(e) => client_error(&e),
        }
        match f.ids(name) {
            Ok(ids) => assert!(ids.iter().all(|id| *id >= 1)),
            Err(e) => client_error(&e),
        }
        if let Err(e) = f.require_id(name) {
            client_error(&e);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    match Fields::parse(content_type, body) {
        Ok(f) => exercise(&f),
        Err(e) => client_error(&e),
    }
    if let Ok(text) = std::str::from_utf8(body) {
        match Fields::from_query(text.as_bytes()) {
            Ok(f) => exercise(&f),
            Err(e) => client_error(&e),
        }
        match parse_client_text(text) {
            Ok(ClientFrame::Ack(ids)) => assert!(ids.len() <= MAX_ACK_IDS && ids.iter().all(|id| *id >= 1)),
            Ok(ClientFrame::Heartbeat) => {}
            Err(ProtocolError::UnknownType(t)) => assert!(t.chars().count() <= 32),
            Err(ProtocolError::Binary) => panic!("a text frame reported as binary"),
            Err(ProtocolError::NotJson | ProtocolError::BadAck) => {}
        }
    }
});
