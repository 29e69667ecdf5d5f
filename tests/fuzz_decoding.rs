//! Randomized tests of request decoding (`Fields`) and client-frame parsing
//! (`parse_client_text`): tens of thousands of random and mutated inputs, checking that
//! nothing panics, that every decoding error is a 4xx, and that valid input round-trips.
//!
//! Each test draws its own seed and prints it on failure; set `SWITCHBOARD_FUZZ_SEED` to
//! replay one, and `SWITCHBOARD_FUZZ_CASES` to change the number of cases per test.
//! `fuzz/` holds the coverage-guided cargo-fuzz target for the same two functions.

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use switchboard::http::{ApiError, Fields, json_id};
use switchboard::ws::protocol::{ClientFrame, MAX_ACK_IDS, ProtocolError, parse_client_text};

/// Field names the handlers read, plus a few they do not.
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
    "ack",
    "type",
    "",
    "x y",
];

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some(""),
    Some(";"),
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("Application/JSON"),
    Some(" application/json "),
    Some("application/x-www-form-urlencoded"),
    Some("application/x-www-form-urlencoded; charset=UTF-8"),
    Some("APPLICATION/X-WWW-FORM-URLENCODED;"),
    Some("text/plain"),
    Some("multipart/form-data; boundary=x"),
    Some("application/jsonx"),
    Some("application/ld+json"),
    Some("json"),
];

/// Bits of input that tend to matter to these parsers.
const ATOMS: &[&str] = &[
    "0",
    "1",
    "2",
    "-1",
    "+1",
    "01",
    "007",
    " 5 ",
    "1.5",
    "1e3",
    "1E3",
    "0x10",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "99999999999999999999",
    "-9223372036854775808",
    "",
    " ",
    ",",
    ",,",
    "1,2",
    "1, 2 ,3",
    "1,x",
    "null",
    "true",
    "[]",
    "{}",
    "[1]",
    "%",
    "%2",
    "%ZZ",
    "%FF",
    "%C3%A9",
    "%00",
    "+",
    "&",
    "=",
    "==",
    "&&",
    "\u{0}",
    "\u{7}",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{200b}",
    "\u{feff}",
    "é",
    "😀",
    "\\",
    "\"",
    "\\u0000",
    "\\ud800",
    "'",
    "heartbeat",
    "ack",
    "type",
    "message_ids",
];

/// A reproducible source of cases: the seed comes from the environment or is drawn, and is
/// part of every failure message.
struct Gen {
    rng: StdRng,
    seed: u64,
}

impl Gen {
    fn new() -> Self {
        let seed = std::env::var("SWITCHBOARD_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random::<u64>());
        Self { rng: StdRng::seed_from_u64(seed), seed }
    }

    fn cases() -> usize {
        std::env::var("SWITCHBOARD_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000)
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn id(&mut self) -> i64 {
        match self.below(4) {
            0 => self.rng.random_range(1..=10),
            1 => self.rng.random_range(1..=i64::from(u32::MAX)),
            2 => i64::MAX - self.rng.random_range(0..=10),
            _ => self.rng.random_range(1..=i64::MAX),
        }
    }

    fn char(&mut self) -> char {
        match self.below(6) {
            0..=2 => char::from(self.rng.random_range(0x20u8..0x7f)),
            3 => char::from(self.rng.random_range(0u8..0x20)),
            4 => *self.pick(&['é', 'ß', '€', '😀', '\u{85}', '\u{a0}', '\u{2028}', '\u{fffd}', '\u{10ffff}']),
            _ => self.rng.random::<char>(),
        }
    }

    /// Random text built from atoms and characters.
    fn text(&mut self) -> String {
        let parts = self.below(6);
        let mut s = String::new();
        for _ in 0..parts {
            if self.chance(0.5) {
                let atom = *self.pick(ATOMS);
                s.push_str(atom);
            } else {
                for _ in 0..self.below(8) {
                    s.push(self.char());
                }
            }
        }
        s
    }

    fn json_value(&mut self, depth: u32) -> Value {
        let kinds = if depth == 0 { 6 } else { 8 };
        match self.below(kinds) {
            0 => Value::Null,
            1 => Value::Bool(self.chance(0.5)),
            2 => json!(self.rng.random::<i64>()),
            3 => json!(self.id()),
            4 => match self.below(4) {
                0 => json!(self.rng.random::<u64>()),
                1 => json!(self.rng.random_range(-1e6..1e6f64)),
                2 => json!(1.0),
                _ => json!(0),
            },
            5 => Value::String(if self.chance(0.3) { self.id().to_string() } else { self.text() }),
            6 => Value::Array((0..self.below(5)).map(|_| self.json_value(depth - 1)).collect()),
            _ => {
                let mut map = serde_json::Map::new();
                for _ in 0..self.below(5) {
                    let key = if self.chance(0.7) { (*self.pick(NAMES)).to_owned() } else { self.text() };
                    map.insert(key, self.json_value(depth - 1));
                }
                Value::Object(map)
            }
        }
    }

    fn json_object(&mut self) -> Value {
        let mut map = serde_json::Map::new();
        for _ in 0..self.below(7) {
            let key = if self.chance(0.8) { (*self.pick(NAMES)).to_owned() } else { self.text() };
            map.insert(key, self.json_value(2));
        }
        Value::Object(map)
    }

    /// A form body, sometimes properly encoded, sometimes raw.
    fn form(&mut self) -> String {
        let mut pairs = Vec::new();
        for _ in 0..self.below(7) {
            let key = if self.chance(0.8) { (*self.pick(NAMES)).to_owned() } else { self.text() };
            let value = if self.chance(0.3) { self.id().to_string() } else { self.text() };
            pairs.push((key, value));
        }
        if self.chance(0.5) {
            form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish()
        } else {
            pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
        }
    }

    /// A few random edits: flips, inserts of meaningful bytes, deletions, cuts, repeats.
    fn mutate(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        const SPICE: &[u8] = b"{}[]\",:\\%&=+,0123456789-.eE \t\n\x00\x7f\x80\xbf\xc3\xe2\xf0\xff";
        for _ in 0..1 + self.below(4) {
            let len = bytes.len();
            match self.below(6) {
                0 if len > 0 => {
                    let i = self.below(len);
                    bytes[i] ^= 1 << self.below(8);
                }
                1 => {
                    let i = self.below(len + 1);
                    let b = *self.pick(SPICE);
                    bytes.insert(i, b);
                }
                2 if len > 0 => {
                    let i = self.below(len);
                    bytes.remove(i);
                }
                3 if len > 0 => bytes.truncate(self.below(len)),
                4 if len > 0 => {
                    let start = self.below(len);
                    let end = start + self.below(len - start + 1);
                    let chunk = bytes[start..end].to_vec();
                    let at = self.below(len + 1);
                    bytes.splice(at..at, chunk);
                }
                _ => {
                    let i = self.below(len + 1);
                    let b = self.rng.random::<u8>();
                    bytes.insert(i, b);
                }
            }
        }
        bytes
    }

    fn body(&mut self) -> Vec<u8> {
        let base = match self.below(5) {
            0 => self.form().into_bytes(),
            1 | 2 => self.json_object().to_string().into_bytes(),
            3 => self.json_value(3).to_string().into_bytes(),
            _ => (0..self.below(64)).map(|_| self.rng.random::<u8>()).collect(),
        };
        if self.chance(0.5) { self.mutate(base) } else { base }
    }

    /// Runs one case; a panic becomes a failure that names the seed and the input.
    fn check(&self, input: &dyn Debug, case: impl FnOnce()) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(case)) {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            panic!("seed {} (SWITCHBOARD_FUZZ_SEED={}): input {input:?}: {msg}", self.seed, self.seed);
        }
    }
}

fn assert_client_error(e: &ApiError, what: &str) {
    assert!(e.status.is_client_error(), "{what}: status {} ({})", e.status, e.code);
    assert!(!e.code.is_empty() && !e.detail.is_empty(), "{what}: empty code or detail");
    assert!(e.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{what}: code {:?} is not snake_case", e.code);
}

/// Calls every accessor on every name and checks what the handlers rely on.
fn exercise(f: &Fields) {
    for &name in NAMES {
        match f.text(name) {
            Ok(_) => {}
            Err(e) => assert_client_error(&e, &format!("text({name:?})")),
        }
        let id = f.id(name);
        let ids = f.ids(name);
        match &id {
            Ok(Some(n)) => {
                assert!(*n >= 1, "id({name:?}) gave {n}");
                // A single valid id reads as a list of that id (repeated as often as given).
                let list = ids.as_ref().unwrap_or_else(|e| panic!("id({name:?}) = {n} but ids() failed: {}", e.code));
                assert!(!list.is_empty() && list.iter().all(|x| x == n), "id({name:?}) = {n} but ids() = {list:?}");
            }
            Ok(None) => {
                let list = ids.as_ref().unwrap_or_else(|e| panic!("id({name:?}) absent but ids() failed: {}", e.code));
                assert!(list.is_empty(), "id({name:?}) absent but ids() = {list:?}");
            }
            Err(e) => assert_client_error(e, &format!("id({name:?})")),
        }
        match &ids {
            Ok(list) => assert!(list.iter().all(|x| *x >= 1), "ids({name:?}) = {list:?}"),
            Err(e) => assert_client_error(e, &format!("ids({name:?})")),
        }
        match f.require_id(name) {
            Ok(n) => assert_eq!(id.as_ref().ok().copied().flatten(), Some(n), "require_id({name:?})"),
            Err(e) => assert_client_error(&e, &format!("require_id({name:?})")),
        }
    }
}

fn media_kind(content_type: Option<&str>) -> String {
    content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

#[test]
fn random_and_mutated_bodies_never_panic_and_fail_with_4xx() {
    let mut g = Gen::new();
    let mut accepted = 0usize;
    for _ in 0..Gen::cases() {
        let content_type = if g.chance(0.9) { *g.pick(CONTENT_TYPES) } else { Some("text/x-garbage") };
        let body = g.body();
        g.check(&(content_type, String::from_utf8_lossy(&body)), || {
            let kind = media_kind(content_type);
            match Fields::parse(content_type, &body) {
                Ok(f) => {
                    accepted += 1;
                    assert!(
                        kind.is_empty() || kind == "application/json" || kind == "application/x-www-form-urlencoded",
                        "media type {kind:?} was accepted"
                    );
                    exercise(&f);
                }
                Err(e) => {
                    assert_client_error(&e, "parse");
                    let expected = match kind.as_str() {
                        "application/json" => "invalid_json",
                        "" if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => "invalid_json",
                        "" | "application/x-www-form-urlencoded" => "invalid_encoding",
                        _ => "unsupported_media_type",
                    };
                    assert_eq!(e.code, expected, "media type {kind:?}");
                    if expected == "unsupported_media_type" {
                        assert_eq!(e.status.as_u16(), 415);
                    } else {
                        assert_eq!(e.status.as_u16(), 400);
                    }
                }
            }
        });
    }
    assert!(accepted > Gen::cases() / 10, "too few bodies decoded ({accepted}); the generator is off");
}

#[test]
fn form_bodies_decode_like_query_strings() {
    let mut g = Gen::new();
    for _ in 0..Gen::cases() {
        let mut body = g.form().into_bytes();
        if g.chance(0.5) {
            body = g.mutate(body);
        }
        g.check(&String::from_utf8_lossy(&body), || {
            // A form body and a query string decode alike: both refuse what is not UTF-8
            // once percent-decoded, and agree field for field on the rest.
            let parsed = Fields::parse(Some("application/x-www-form-urlencoded"), &body);
            match (parsed, Fields::from_query(&body)) {
                (Ok(parsed), Ok(query)) => {
                    assert_eq!(format!("{parsed:?}"), format!("{query:?}"));
                    exercise(&query);
                }
                (Err(a), Err(b)) => assert_eq!((a.code, b.code), ("invalid_encoding", "invalid_encoding")),
                (a, b) => panic!("form and query disagree: {a:?} / {b:?}"),
            }
        });
    }
}

#[test]
fn random_query_strings_never_panic() {
    let mut g = Gen::new();
    for _ in 0..Gen::cases() {
        let query = if g.chance(0.5) { g.form() } else { g.text() };
        g.check(&query, || match Fields::from_query(query.as_bytes()) {
            Ok(f) => exercise(&f),
            Err(e) => assert_eq!(e.code, "invalid_encoding"),
        });
    }
}

#[test]
fn ids_round_trip_in_every_spelling() {
    let mut g = Gen::new();
    for _ in 0..Gen::cases() / 4 {
        let n = g.id();
        let padded = format!("{}{n}{}", " ".repeat(g.below(3)), " ".repeat(g.below(3)));
        let zeros = format!("{}{n}", "0".repeat(g.below(3)));
        let cases: Vec<(Option<&str>, Vec<u8>)> = vec![
            (None, format!("id={n}").into_bytes()),
            (Some("application/x-www-form-urlencoded"), format!("x=1&id={n}&id={n}").into_bytes()),
            (None, form_urlencoded::Serializer::new(String::new()).append_pair("id", &padded).finish().into_bytes()),
            (Some("application/json"), json!({ "id": n }).to_string().into_bytes()),
            (Some("application/json"), json!({ "id": n.to_string(), "other": [1, 2] }).to_string().into_bytes()),
            (None, format!(" \n{{\"id\": \"{padded}\"}}").into_bytes()),
        ];
        for (content_type, body) in cases {
            g.check(&(content_type, String::from_utf8_lossy(&body)), || {
                let f = Fields::parse(content_type, &body).expect("decodes");
                assert_eq!(f.id("id").expect("valid id"), Some(n));
                assert_eq!(f.require_id("id").expect("valid id"), n);
                assert!(f.ids("id").expect("valid ids").iter().all(|x| *x == n));
            });
        }
        // A blank or null id is an absent one (an HTML form sends empty fields).
        let blank = [" ", "\t", "\u{a0}", ""][g.below(4)].repeat(g.below(3));
        let form = form_urlencoded::Serializer::new(String::new()).append_pair("id", &blank).finish();
        let json_blank = json!({ "id": blank }).to_string();
        for (content_type, body) in [(None, form.as_bytes()), (None, json_blank.as_bytes()), (None, br#"{"id":null}"#)]
        {
            g.check(&(content_type, String::from_utf8_lossy(body)), || {
                let f = Fields::parse(content_type, body).expect("decodes");
                assert_eq!(f.id("id").expect("blank id"), None);
                assert_eq!(f.ids("id").expect("blank ids"), Vec::<i64>::new());
                let e = f.require_id("id").expect_err("blank required id");
                assert_eq!((e.status.as_u16(), e.code), (400, "missing_field"));
            });
        }
        // Leading zeros are fine while the text stays within 19 digits.
        let f = Fields::from_query(format!("id={zeros}").as_bytes()).expect("decodes");
        if zeros.len() <= 19 {
            assert_eq!(f.id("id").expect("zeros"), Some(n), "seed {}", g.seed);
        } else {
            assert_eq!(f.id("id").expect_err("over 19 digits").code, "invalid_id", "seed {}", g.seed);
        }
    }
}

#[test]
fn ids_outside_the_positive_int64_range_are_400() {
    let mut g = Gen::new();
    for _ in 0..Gen::cases() / 4 {
        let bad: String = match g.below(6) {
            0 => (-g.rng.random_range(0..=i64::MAX)).to_string(),
            1 => (i64::MAX as u64 + g.rng.random_range(1..=u64::MAX / 2)).to_string(),
            2 => format!("{}.{}", g.id(), g.below(10)),
            3 => format!("{}e{}", g.below(10), g.below(5)),
            4 => format!("{}{}", g.id(), g.pick(&["x", "-", "+", "_", "%", "\u{0}"])),
            _ => u128::MAX.to_string(),
        };
        for f in [
            Fields::from_query(
                form_urlencoded::Serializer::new(String::new()).append_pair("id", &bad).finish().as_bytes(),
            )
            .expect("decodes"),
            Fields::parse(Some("application/json"), json!({ "id": bad }).to_string().as_bytes()).expect("json"),
        ] {
            let e = f.id("id").expect_err(&bad);
            assert_eq!((e.status.as_u16(), e.code), (400, "invalid_id"), "{bad:?}, seed {}", g.seed);
            let e = f.ids("id").expect_err(&bad);
            assert_eq!((e.status.as_u16(), e.code), (400, "invalid_id"), "{bad:?}, seed {}", g.seed);
        }
        if let Ok(v) = serde_json::from_str::<Value>(&bad) {
            // As a JSON number too (floats, negatives, and integers past i64).
            let f = Fields::parse(None, json!({ "id": v }).to_string().as_bytes()).expect("json");
            assert_eq!(f.id("id").expect_err(&bad).code, "invalid_id", "{bad:?}, seed {}", g.seed);
            assert_eq!(json_id(&v), None);
        }
    }
}

#[test]
fn id_lists_round_trip_as_comma_lists_repeats_and_arrays() {
    let mut g = Gen::new();
    for _ in 0..Gen::cases() / 4 {
        let ids: Vec<i64> = (0..g.below(12)).map(|_| g.id()).collect();
        let text: Vec<String> = ids.iter().map(ToString::to_string).collect();
        // Comma list split at random points into repeated fields.
        let mut form = form_urlencoded::Serializer::new(String::new());
        let mut rest = &text[..];
        while !rest.is_empty() {
            let take = 1 + g.below(rest.len());
            let sep = *g.pick(&[",", ", ", " ,", ",,"]);
            form.append_pair("user_ids", &rest[..take].join(sep));
            rest = &rest[take..];
        }
        let form = form.finish();
        let mixed: Vec<Value> =
            ids.iter().map(|&n| if g.chance(0.5) { json!(n) } else { json!(n.to_string()) }).collect();
        let bodies: Vec<(Option<&str>, Vec<u8>)> = vec![
            (None, form.clone().into_bytes()),
            (Some("application/json"), json!({ "user_ids": mixed }).to_string().into_bytes()),
            (Some("application/json"), json!({ "user_ids": text.join(",") }).to_string().into_bytes()),
        ];
        for (content_type, body) in bodies {
            g.check(&(content_type, String::from_utf8_lossy(&body)), || {
                let f = Fields::parse(content_type, &body).expect("decodes");
                assert_eq!(f.ids("user_ids").expect("valid list"), ids);
            });
        }
        if let [one] = ids[..] {
            let f = Fields::parse(None, json!({ "user_ids": one }).to_string().as_bytes()).expect("json");
            assert_eq!(f.ids("user_ids").expect("one id"), vec![one], "seed {}", g.seed);
        }
        // One bad item spoils the list.
        if !ids.is_empty() {
            let mut bad = text.clone();
            let at = g.below(bad.len());
            bad[at] = (*g.pick(&["0", "-3", "x", "1.5", "99999999999999999999"])).to_owned();
            let f = Fields::from_query(format!("user_ids={}", bad.join(",")).as_bytes()).expect("decodes");
            assert_eq!(f.ids("user_ids").expect_err("bad item").code, "invalid_id", "seed {}", g.seed);
        }
    }
}

#[test]
fn text_round_trips_through_form_and_json() {
    let mut g = Gen::new();
    for _ in 0..Gen::cases() / 2 {
        let s = g.text();
        let form = form_urlencoded::Serializer::new(String::new()).append_pair("content", &s).finish();
        let json = json!({ "content": s }).to_string();
        g.check(&s, || {
            for (ct, body) in [(Some("application/x-www-form-urlencoded"), form.as_bytes()), (None, json.as_bytes())] {
                let f = Fields::parse(ct, body).expect("decodes");
                assert_eq!(f.text("content").expect("text").as_deref(), Some(s.as_str()));
            }
            // Different values for one field are refused; the same value twice is fine.
            let twice = format!("{form}&{form}");
            assert_eq!(
                Fields::from_query(twice.as_bytes()).expect("decodes").text("content").expect("same twice").as_deref(),
                Some(s.as_str())
            );
            let other = format!(
                "{form}&{}",
                form_urlencoded::Serializer::new(String::new()).append_pair("content", &format!("{s}!")).finish()
            );
            let e = Fields::from_query(other.as_bytes()).expect("decodes").text("content").expect_err("two values");
            assert_eq!((e.status.as_u16(), e.code), (400, "duplicate_field"));
        });
    }
}

#[test]
fn client_frames_never_panic() {
    let mut g = Gen::new();
    let valid = [
        "heartbeat".to_owned(),
        r#"{"type":"heartbeat"}"#.to_owned(),
        r#"{"type":"ack","message_ids":[1,2,3]}"#.to_owned(),
        r#"{"type":"ack"}"#.to_owned(),
    ];
    for _ in 0..Gen::cases() {
        let text = match g.below(4) {
            0 => g.text(),
            1 => {
                let mut v = g.json_object();
                match g.below(3) {
                    0 => v["type"] = json!(*g.pick(&["ack", "heartbeat", "hello", "", "ACK"])),
                    1 => v["type"] = json!((0..g.below(100)).map(|_| g.char()).collect::<String>()),
                    _ => {}
                }
                v.to_string()
            }
            2 => g.json_value(3).to_string(),
            _ => {
                let base = g.pick(&valid).clone().into_bytes();
                String::from_utf8_lossy(&g.mutate(base)).into_owned()
            }
        };
        g.check(&text, || match parse_client_text(&text) {
            Ok(ClientFrame::Heartbeat) => {}
            Ok(ClientFrame::Ack(ids)) => {
                assert!(ids.len() <= MAX_ACK_IDS && ids.iter().all(|id| *id >= 1), "ack {ids:?}");
            }
            Err(ProtocolError::UnknownType(t)) => assert!(t.chars().count() <= 32, "unbounded type echo {t:?}"),
            Err(ProtocolError::NotJson | ProtocolError::BadAck) => {}
        });
    }
}

#[test]
fn acks_and_heartbeats_round_trip() {
    let mut g = Gen::new();
    let ws = [" ", "\n", "\t", "\r\n", ""];
    for _ in 0..Gen::cases() / 4 {
        let ids: Vec<i64> = (0..g.below(50)).map(|_| g.id()).collect();
        let mut frame = json!({ "type": "ack", "message_ids": ids });
        if g.chance(0.3) {
            frame["extra"] = g.json_value(2);
        }
        let text = format!("{}{frame}{}", g.pick(&ws), g.pick(&ws));
        g.check(&text, || assert_eq!(parse_client_text(&text), Ok(ClientFrame::Ack(ids.clone()))));

        let beat = if g.chance(0.5) { "heartbeat" } else { r#"{"type":"heartbeat"}"# };
        let text = format!("{}{beat}{}", g.pick(&ws), g.pick(&ws));
        g.check(&text, || assert_eq!(parse_client_text(&text), Ok(ClientFrame::Heartbeat)));

        if !ids.is_empty() {
            let mut bad = ids.clone();
            let at = g.below(bad.len());
            bad[at] = -g.rng.random_range(0..=i64::MAX);
            let text = json!({ "type": "ack", "message_ids": bad }).to_string();
            g.check(&text, || assert_eq!(parse_client_text(&text), Err(ProtocolError::BadAck)));
        }
    }
    let too_many = json!({ "type": "ack", "message_ids": vec![1; MAX_ACK_IDS + 1] }).to_string();
    assert_eq!(parse_client_text(&too_many), Err(ProtocolError::BadAck));
    let at_limit = json!({ "type": "ack", "message_ids": vec![7; MAX_ACK_IDS] }).to_string();
    assert_eq!(parse_client_text(&at_limit), Ok(ClientFrame::Ack(vec![7; MAX_ACK_IDS])));
}
