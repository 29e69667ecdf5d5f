//! Static material embedded in the binary: the web client served at `/`, and the OpenAPI
//! contract served at `/openapi.yaml`.

pub const INDEX_HTML: &str = include_str!("index.html");
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");
