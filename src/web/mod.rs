//! The web client, one page embedded in the binary and served at `/`.

pub const INDEX_HTML: &str = include_str!("index.html");
