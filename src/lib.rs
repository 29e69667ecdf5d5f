//! Switchboard: a horizontally scaled real-time messaging gateway.
//!
//! Map of the modules, in the direction data flows (README, "Architecture"):
//!
//! - [`config`]: the one clap struct; every flag also reads an environment variable.
//! - [`app`]: builds a node from config and runs it on listeners until its drain completes.
//! - [`state`]: [`AppState`], what every handler and session shares, and the backend checks
//!   behind readiness; below `http` and `ws`, which read it.
//! - [`http`]: hyper server, the router (`match` on method and path) and REST handlers.
//! - [`commit`]: the durable send path: group commit of messages, then their publishes.
//! - [`store`]: users, groups and each group's gap-free message log in MySQL or SQLite
//!   (trait `Store`).
//! - [`inbox`]: what users have not received yet, kept as per-group delivery positions in
//!   MongoDB or a SQL table (trait `Inbox`), and the recorder that writes them in batches.
//! - [`backplane`]: pub/sub between nodes over Redis or in-process (trait `Backplane`).
//! - [`routing`]: which channels a node subscribes and publishes on (`--routing group`,
//!   `node` with its presence store, or `broadcast`), as decorators of the backplane.
//! - [`hub`]: the node's local sessions and reference-counted group subscriptions; fans
//!   backplane events out to session queues ([`outbox`]) without ever awaiting a slow socket.
//! - [`ws`]: the WebSocket endpoint, the session (one task each) and protocol frames.
//! - [`reads`]: the handshake's reads (user, heads, positions, catch-up), batched across
//!   concurrent handshakes.
//! - [`lifecycle`]: `Starting -> Ready -> Draining -> Stopped` on a watch channel.
//! - [`agent`]: the HAProxy agent-check answer (`ready`, `drain`, `maint`).
//! - [`limits`]: per-user send rate limiting; [`auth`]: the optional signed-token mode and
//!   who may call which route in it.
//! - [`backoff`]: exponential backoff plus jitter, the one formula of every retry and reconnect.
//! - [`tls`]: the trust (system roots plus an optional CA file) of TLS to every backend.
//! - [`batch`]: the sharded group-commit batcher under [`commit`].
//! - [`metrics`]: the node's Prometheus registry.
//! - [`model`]: ids, users, groups, messages and their wire frame.
//! - [`web`]: the embedded single-page client.
//! - [`client`]: a Rust client (REST, and WebSocket with the reconnect backoff) used by the
//!   tests and load tools, and [`checker`], the loss/duplicate/order checker they share.

#![forbid(unsafe_code)]

pub mod agent;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod backplane;
pub mod batch;
pub mod checker;
pub mod client;
pub mod commit;
pub mod config;
pub mod http;
pub mod hub;
pub mod inbox;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod reads;
pub mod routing;
pub mod state;
pub mod store;
pub mod tls;
pub mod web;
pub mod ws;

pub use app::App;
pub use config::Config;
pub use state::AppState;
