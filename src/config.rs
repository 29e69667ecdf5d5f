//! Node configuration: one clap struct. Every flag also reads an environment variable and
//! every default shows in `--help`, so a container is configured the same way as a shell.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::routing::{PresenceConfig, Routing};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Clone, Debug, Parser)]
#[command(name = "switchboard", version, about = "Real-time messaging gateway node", args_override_self = true)]
pub struct Config {
    /// Public listener: REST API, WebSocket upgrades and the web client.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Admin listener: /metrics, /healthz, /readyz and POST /admin/drain. Keep it private.
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN", default_value = "127.0.0.1:9000")]
    pub admin_listen: SocketAddr,

    /// HAProxy agent-check listener (answers `ready`, `drain` or `maint`); off when unset.
    #[arg(long, env = "SWITCHBOARD_AGENT_LISTEN")]
    pub agent_listen: Option<SocketAddr>,

    /// Name of this node in hello frames, logs and metrics; defaults to the hostname.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,

    /// Store: `sqlite://FILE` (embedded) or `mysql://user:pass@host:port/db` (production).
    /// TLS: add `?ssl-mode=REQUIRED` (encrypt), `VERIFY_CA` (and check the chain) or
    /// `VERIFY_IDENTITY` (and the host name).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://switchboard.db")]
    pub database_url: String,

    /// Backplane: `redis://host:port`, or `rediss://` for TLS; unset means the in-process
    /// backplane (one node only).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Backplane on a Redis Cluster (Redis 7): some of its nodes, comma-separated
    /// (`redis://h1:p1,redis://h2:p2`); the rest are discovered. Needs `--routing sharded`.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',', num_args = 1..)]
    pub redis_cluster_urls: Vec<String>,

    /// `--routing sharded`: how many hash-tag partitions spread the channels over the
    /// cluster's slots (128 to 1024). Subscriptions and resubscriptions cost one command per
    /// partition; every node of a fleet must use the same.
    #[arg(long, env = "SWITCHBOARD_SHARD_PARTITIONS", default_value_t = 128)]
    pub shard_partitions: u16,

    /// Backplane on NATS instead of Redis: the cluster's servers as `nats://host:port`
    /// (`tls://` for TLS), comma-separated; the client also learns the servers the cluster
    /// advertises and moves to another one when its server dies. Set one backplane only.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,

    /// `--routing node` with a backplane that is not Redis (NATS): the Redis that holds the
    /// presence store, `redis://host:port` or `rediss://`. With REDIS_URL and this unset,
    /// presence lives in the backplane's Redis.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_REDIS_URL")]
    pub presence_redis_url: Option<String>,

    /// Prefix of every Redis channel name, so deployments sharing one Redis stay apart
    /// (empty: the original `group:{id}` and `user:{id}`).
    #[arg(long, env = "SWITCHBOARD_CHANNEL_PREFIX", default_value = "")]
    pub channel_prefix: String,

    /// How messages find the nodes of their recipients (docs/routing.md): `group` (a channel
    /// per group with local members), `sharded` (the same channels as sharded pub/sub on a
    /// Redis Cluster), `node` (a channel per node and a presence store in Redis) or
    /// `broadcast` (one channel, filtered by each node). Every node of a fleet
    /// must use the same; a node that finds another mode on its Redis refuses to start.
    #[arg(long, env = "SWITCHBOARD_ROUTING", value_enum, default_value_t = Routing::Group)]
    pub routing: Routing,

    /// `--routing node`: how long a node's presence outlives its last liveness refresh, in
    /// milliseconds. A crashed node stops receiving traffic this long (plus the presence
    /// cache) after it died.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_TTL_MS", default_value_t = 5_000)]
    pub presence_ttl_ms: u64,

    /// `--routing node`: how long a sender's node reuses a lookup of where users are, in
    /// milliseconds; 0 looks up on every publish. A session that just connected is caught
    /// up from the store once this has passed, for publishes routed by older lookups.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_CACHE_MS", default_value_t = 1_000)]
    pub presence_cache_ms: u64,

    /// Offline inbox: `mongodb://host:port/db` (`?tls=true` for TLS) or `mongodb+srv://`
    /// (DNS seed list, TLS by default); unset means a table in the store's database.
    #[arg(long, env = "MONGODB_URL")]
    pub mongodb_url: Option<String>,

    /// How often clients are told to send a heartbeat, in milliseconds.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL_MS", default_value_t = 5_000)]
    pub heartbeat_interval_ms: u64,

    /// A session that sends nothing for this long is closed with 4000, in milliseconds.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_TIMEOUT_MS", default_value_t = 15_000)]
    pub heartbeat_timeout_ms: u64,

    /// Seconds a drain waits for sessions to leave before cutting them (the 5-minute TTL).
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT", default_value_t = 300)]
    pub drain_timeout: u64,

    /// Sessions closed per second while draining, so other nodes see no reconnect storm.
    #[arg(long, env = "SWITCHBOARD_DRAIN_CLOSE_RATE", default_value_t = 500)]
    pub drain_close_rate: u32,

    /// Largest message content accepted by send_message, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,

    /// Largest HTTP request body, in bytes (413 above it).
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Most members a group may have.
    #[arg(long, env = "SWITCHBOARD_MAX_GROUP_MEMBERS", default_value_t = 1_000)]
    pub max_group_members: usize,

    /// Largest WebSocket frame a client may send, in bytes (close 1009 above it).
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Outbound frames queued per session before it is closed as a slow consumer (4008).
    #[arg(long, env = "SWITCHBOARD_SESSION_QUEUE", default_value_t = 1024)]
    pub session_queue: usize,

    /// How long one socket write may block before the session is dropped, in milliseconds
    /// (a client that stopped reading must not pin its session forever).
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT_MS", default_value_t = 5_000)]
    pub write_timeout_ms: u64,

    /// Seconds of missed messages a returning client catches up on; older ones are left to
    /// the history API.
    #[arg(long, env = "SWITCHBOARD_INBOX_TTL", default_value_t = 7 * 24 * 3600)]
    pub inbox_ttl: u64,

    /// Messages read per catch-up query; a catch-up reads page after page until done.
    #[arg(long, env = "SWITCHBOARD_REPLAY_LIMIT", default_value_t = 1_000)]
    pub replay_limit: u32,

    /// Least time between two group commits of one shard, in microseconds (0: none). Under
    /// load it fills batches (a commit costs the database about the same whatever its size);
    /// a send arriving after a quiet spell waits for nothing.
    #[arg(long, env = "SWITCHBOARD_COMMIT_INTERVAL_US", default_value_t = 1_000)]
    pub commit_interval_us: u64,

    /// How often delivery positions are written to the inbox backend, in milliseconds. A
    /// crash loses at most this much of them, which means re-delivery, never loss.
    #[arg(long, env = "SWITCHBOARD_POSITION_FLUSH_MS", default_value_t = 500)]
    pub position_flush_ms: u64,

    /// Most WebSocket sessions on this node; upgrades above it get 503.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,

    /// Most WebSocket sessions one user may hold on this node; above it 429.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: usize,

    /// Sustained messages per second one user may send through this node (429 above it).
    #[arg(long, env = "SWITCHBOARD_SEND_RATE", default_value_t = 20.0)]
    pub send_rate: f64,

    /// Messages a user may send in a burst before the rate applies.
    #[arg(long, env = "SWITCHBOARD_SEND_BURST", default_value_t = 40)]
    pub send_burst: u32,

    /// How long a client may take to send request headers, in milliseconds (slowloris guard).
    #[arg(long, env = "SWITCHBOARD_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Origins allowed to open WebSockets (comma-separated, e.g. `https://chat.example.com`);
    /// empty allows any. Requests without an Origin header (non-browser clients) pass.
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',', num_args = 0..)]
    pub allowed_origins: Vec<String>,

    /// Secret for the optional signed-token mode. When set, /register returns a token and
    /// every user-scoped route requires the token of that user (401 without a valid one,
    /// 403 for another user's). Off when unset.
    #[arg(long, env = "SWITCHBOARD_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// A second secret whose tokens are still accepted but never issued: the old one while
    /// rotating (or the new one, on every node, before any node signs with it).
    #[arg(long, env = "SWITCHBOARD_TOKEN_VERIFY_SECRET", hide_env_values = true)]
    pub token_verify_secret: Option<String>,

    /// Lifetime of an issued token, in seconds.
    #[arg(long, env = "SWITCHBOARD_TOKEN_TTL", default_value_t = 24 * 3600)]
    pub token_ttl: u64,

    /// A PEM CA bundle trusted besides the system roots by the TLS connections to MySQL,
    /// Redis and MongoDB (a private or cloud provider CA).
    #[arg(long, env = "SWITCHBOARD_TLS_CA_FILE")]
    pub tls_ca_file: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot: relations between values. The message is one line for main.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms == 0 || self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err("--heartbeat-timeout-ms must be greater than --heartbeat-interval-ms > 0".into());
        }
        if self.drain_close_rate == 0 {
            return Err("--drain-close-rate must be at least 1".into());
        }
        if self.session_queue == 0 || self.replay_limit == 0 || self.position_flush_ms == 0 {
            return Err("--session-queue, --replay-limit and --position-flush-ms must be at least 1".into());
        }
        if self.max_message_bytes == 0 || self.max_frame_bytes < 1024 || self.max_body_bytes < self.max_message_bytes {
            return Err("--max-message-bytes must be >= 1, --max-frame-bytes >= 1024 and --max-body-bytes >= --max-message-bytes".into());
        }
        if self.max_connections == 0 || self.max_connections_per_user == 0 {
            return Err("--max-connections and --max-connections-per-user must be at least 1".into());
        }
        if !(self.send_rate > 0.0 && self.send_rate.is_finite()) || self.send_burst == 0 {
            return Err("--send-rate must be a positive number and --send-burst at least 1".into());
        }
        if [&self.token_secret, &self.token_verify_secret].iter().any(|s| s.as_ref().is_some_and(|s| s.len() < 16)) {
            return Err("--token-secret and --token-verify-secret must be at least 16 characters".into());
        }
        if self.token_verify_secret.is_some() && self.token_secret.is_none() {
            return Err("--token-verify-secret needs --token-secret".into());
        }
        if self.token_ttl == 0 {
            return Err("--token-ttl must be at least 1 second".into());
        }
        crate::tls::Trust::load(self.tls_ca_file.as_deref())?;
        if self.max_group_members < 2 {
            return Err("--max-group-members must be at least 2".into());
        }
        let backplanes = [
            ("REDIS_URL", self.redis_url.is_some()),
            ("REDIS_CLUSTER_URLS", !self.redis_cluster_urls.is_empty()),
            ("NATS_URL", self.nats_url.is_some()),
        ];
        let set: Vec<&str> = backplanes.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
        if set.len() > 1 {
            return Err(format!("{} are set, but a node has one backplane: unset all but one", set.join(" and ")));
        }
        let sharded = self.routing == Routing::Sharded;
        if sharded == self.redis_cluster_urls.is_empty() {
            return Err("--routing sharded and REDIS_CLUSTER_URLS go together: sharded pub/sub needs a Redis Cluster, and a Redis Cluster is used in sharded routing".into());
        }
        if !(128..=1024).contains(&self.shard_partitions) {
            return Err("--shard-partitions must be between 128 and 1024".into());
        }
        for url in &self.redis_cluster_urls {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(format!("REDIS_CLUSTER_URLS entries must start with redis://, got {url:?}"));
            }
        }
        if self.routing == Routing::Node && self.presence_redis().is_none() {
            return Err("--routing node needs a Redis for its presence store: REDIS_URL, or SWITCHBOARD_PRESENCE_REDIS_URL with NATS_URL".into());
        }
        if self.presence_ttl_ms < 300 {
            return Err("--presence-ttl-ms must be at least 300".into());
        }
        let db = &self.database_url;
        if !(db.starts_with("sqlite:") || db.starts_with("mysql:") || db.starts_with("mariadb:")) {
            return Err(format!("DATABASE_URL must start with sqlite: or mysql:, got {db:?}"));
        }
        for (name, url) in
            [("REDIS_URL", &self.redis_url), ("SWITCHBOARD_PRESENCE_REDIS_URL", &self.presence_redis_url)]
        {
            if let Some(url) = url
                && !url.starts_with("redis://")
                && !url.starts_with("rediss://")
            {
                return Err(format!("{name} must start with redis://, got {url:?}"));
            }
        }
        if self.nats_url.is_some() {
            let urls = self.nats_urls();
            if urls.is_empty() {
                return Err("NATS_URL names no server".into());
            }
            if let Some(url) = urls.iter().find(|u| !u.starts_with("nats://") && !u.starts_with("tls://")) {
                return Err(format!("NATS_URL must be nats://host:port (or tls://), comma-separated, got {url:?}"));
            }
            let prefix = &self.channel_prefix;
            if prefix.contains(|c: char| c.is_whitespace() || c == '*' || c == '>') || prefix.contains("..") {
                return Err(format!("SWITCHBOARD_CHANNEL_PREFIX must be valid in a NATS subject, got {prefix:?}"));
            }
        }
        if let Some(url) = &self.mongodb_url
            && !url.starts_with("mongodb://")
            && !url.starts_with("mongodb+srv://")
        {
            return Err(format!("MONGODB_URL must start with mongodb://, got {url:?}"));
        }
        Ok(())
    }

    /// Parses flags from an explicit list, with the environment variables of `env` only.
    /// Tests use this instead of mutating the process environment.
    pub fn from_args<I, S>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(std::iter::once("switchboard".into()).chain(args.into_iter().map(Into::into)))
    }

    pub fn node_name(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("node-{}", std::process::id()))
        })
    }

    /// The NATS servers of `NATS_URL` (empty without it).
    pub fn nats_urls(&self) -> Vec<String> {
        let list = self.nats_url.as_deref().unwrap_or("");
        list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
    }

    /// The Redis of the presence store (`--routing node`): its own URL, else the backplane's.
    pub fn presence_redis(&self) -> Option<&str> {
        self.presence_redis_url.as_deref().or(self.redis_url.as_deref())
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    pub fn presence(&self) -> PresenceConfig {
        PresenceConfig {
            ttl: Duration::from_millis(self.presence_ttl_ms),
            cache: Duration::from_millis(self.presence_cache_ms),
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }

    /// The warning to log when the public listener is reachable from other hosts while
    /// every route answers anyone: fine behind an authenticating proxy, not on its own.
    pub fn exposure_warning(&self) -> Option<String> {
        (self.token_secret.is_none() && !self.listen.ip().is_loopback()).then(|| {
            format!(
                "listening on {} beyond loopback without --token-secret: any client can act as any user",
                self.listen
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_node() {
        let c = Config::from_args(Vec::<String>::new()).expect("defaults parse");
        assert_eq!(c.listen.port(), 8000);
        assert_eq!(c.database_url, "sqlite://switchboard.db");
        assert!(c.redis_url.is_none() && c.mongodb_url.is_none());
        assert_eq!(c.drain_timeout, 300);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_are_refused_with_one_line() {
        let c = Config::from_args(["--heartbeat-timeout-ms", "1000"]).expect("parses");
        let err = c.validate().expect_err("timeout below interval");
        assert!(!err.contains('\n'));
        let c = Config::from_args(["--database-url", "postgres://x"]).expect("parses");
        assert!(c.validate().expect_err("unsupported").contains("DATABASE_URL"));
        assert!(Config::from_args(["--listen", "not-an-addr"]).is_err());
        let c = Config::from_args(["--tls-ca-file", "/nonexistent/ca.pem"]).expect("parses");
        assert!(c.validate().expect_err("no such CA file").contains("SWITCHBOARD_TLS_CA_FILE"));
        let c = Config::from_args(["--routing", "node"]).expect("parses");
        assert!(c.validate().expect_err("node mode without Redis").contains("REDIS_URL"));
        let c = Config::from_args(["--routing", "sharded"]).expect("parses");
        assert!(c.validate().expect_err("sharded without a cluster").contains("REDIS_CLUSTER_URLS"));
        let c = Config::from_args(["--redis-cluster-urls", "redis://a:1,redis://b:2"]).expect("parses");
        assert_eq!(c.redis_cluster_urls.len(), 2);
        assert!(c.validate().expect_err("a cluster in group routing").contains("sharded"));
        let both = ["--routing", "sharded", "--redis-cluster-urls", "redis://a:1", "--redis-url", "redis://b:2"];
        assert!(
            Config::from_args(both).expect("parses").validate().expect_err("two backplanes").contains("one backplane")
        );
        let ok = ["--routing", "sharded", "--redis-cluster-urls", "redis://a:1"];
        assert!(Config::from_args(ok).expect("parses").validate().is_ok());
        let c = Config::from_args(["--redis-url", "redis://r:6379", "--nats-url", "nats://n:4222"]).expect("parses");
        let err = c.validate().expect_err("two backplanes");
        assert!(err.contains("REDIS_URL") && err.contains("NATS_URL") && !err.contains('\n'), "{err}");
        let c = Config::from_args(["--nats-url", "nats://a:4222,redis://b:4222"]).expect("parses");
        assert!(c.validate().expect_err("not a NATS URL").contains("NATS_URL"));
        let c = Config::from_args(["--nats-url", "nats://a:4222", "--routing", "node"]).expect("parses");
        assert!(c.validate().expect_err("node mode without presence").contains("PRESENCE_REDIS_URL"));
        let c = Config::from_args(["--nats-url", "nats://a:4222", "--channel-prefix", "a b"]).expect("parses");
        assert!(c.validate().expect_err("not a subject").contains("PREFIX"));
        let c = Config::from_args(["--presence-redis-url", "http://x"]).expect("parses");
        assert!(c.validate().expect_err("not Redis").contains("PRESENCE_REDIS_URL"));
        let c = Config::from_args(Vec::<String>::new()).expect("parses");
        assert!(c.nats_urls().is_empty() && c.presence_redis().is_none());
        let c = Config::from_args([
            "--nats-url",
            "nats://a:4222, nats://b:4222",
            "--routing",
            "node",
            "--presence-redis-url",
            "redis://p:6379",
        ])
        .expect("parses");
        assert!(c.validate().is_ok());
        assert_eq!(c.nats_urls(), ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(c.presence_redis(), Some("redis://p:6379"));
        let c = Config::from_args(["--token-verify-secret", "0123456789abcdef"]).expect("parses");
        assert!(c.validate().is_err(), "a verify secret alone");
    }

    #[test]
    fn open_mode_beyond_loopback_is_warned_about() {
        let warn = |args: &[&str]| Config::from_args(args).expect("parses").exposure_warning();
        assert!(warn(&["--listen", "0.0.0.0:8000"]).expect("warns").contains("--token-secret"));
        assert!(warn(&["--listen", "[::]:8000"]).is_some());
        assert!(warn(&["--listen", "127.0.0.1:8000"]).is_none());
        assert!(warn(&["--listen", "[::1]:8000"]).is_none());
        assert!(warn(&["--listen", "0.0.0.0:8000", "--token-secret", "0123456789abcdef"]).is_none());
    }
}
