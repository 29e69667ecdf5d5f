//! Node configuration: one clap struct. Every flag also reads an environment variable and
//! every default shows in `--help`, so a container is configured the same way as a shell.
//! Every duration is written with its unit (`5s`, `300ms`, `1m`, `1000us`, `7d`) and read by
//! [`parse_duration`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::routing::{PresenceConfig, Routing};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Reads a duration flag: a number with its unit (`5s`, `300ms`, `1m`, `1000us`, `1h 30m`,
/// `7d`), or `0`. A bare number is refused, so a value written for an older unit-suffixed
/// flag (`5000` meaning milliseconds) cannot be taken for another unit.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|e| format!("{e}; write a duration with its unit, e.g. 5s, 300ms, 1m or 1000us"))
}

/// A duration as `--check-config` shows it, in the style [`parse_duration`] reads.
fn show_duration(d: Duration) -> String {
    if d.is_zero() { "0".to_owned() } else { humantime::format_duration(d).to_string() }
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
    /// (`redis://h1:p1,redis://h2:p2`); the rest are discovered. With `--routing sharded` or
    /// `--routing node`.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',', num_args = 1..)]
    pub redis_cluster_urls: Vec<String>,

    /// On a Redis Cluster (`--routing sharded` or `node`): how many hash-tag partitions spread
    /// the channels over the cluster's slots (128 to 1024). Subscriptions and resubscriptions cost one command per
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
    /// (empty: plain `group:{id}` and `user:{id}`).
    #[arg(long, env = "SWITCHBOARD_CHANNEL_PREFIX", default_value = "")]
    pub channel_prefix: String,

    /// How messages find the nodes of their recipients (docs/routing.md): `group` (a channel
    /// per group with local members), `sharded` (the same channels as sharded pub/sub on a
    /// Redis Cluster), `node` (a channel per node and a presence store in Redis) or
    /// `broadcast` (one channel, filtered by each node). Every node of a fleet
    /// must use the same; a node that finds another mode on its Redis refuses to start.
    #[arg(long, env = "SWITCHBOARD_ROUTING", value_enum, default_value_t = Routing::Group)]
    pub routing: Routing,

    /// `--routing node`: how long a node's presence outlives its last liveness refresh. A
    /// crashed node stops receiving traffic this long (plus the presence cache) after it died.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub presence_ttl: Duration,

    /// `--routing node`: how long a sender's node reuses a lookup of where users are; 0 looks
    /// up on every publish. A session that just connected is caught up from the store once
    /// this has passed, for publishes routed by older lookups.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_CACHE", default_value = "1s", value_parser = parse_duration)]
    pub presence_cache: Duration,

    /// Offline inbox: `mongodb://host:port/db` (`?tls=true` for TLS) or `mongodb+srv://`
    /// (DNS seed list, TLS by default); unset means a table in the store's database.
    #[arg(long, env = "MONGODB_URL")]
    pub mongodb_url: Option<String>,

    /// How often clients are told to send a heartbeat (sent to them in milliseconds).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// A session that sends nothing for this long is closed with 4000.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// How long a drain waits for sessions to leave before cutting them (the 5-minute TTL).
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

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

    /// How long one socket write may block before the session is dropped (a client that
    /// stopped reading must not pin its session forever).
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// How far back a returning client catches up on missed messages; older ones are left to
    /// the history API.
    #[arg(long, env = "SWITCHBOARD_INBOX_TTL", default_value = "7d", value_parser = parse_duration)]
    pub inbox_ttl: Duration,

    /// Messages read per catch-up query; a catch-up reads page after page until done.
    #[arg(long, env = "SWITCHBOARD_REPLAY_LIMIT", default_value_t = 1_000)]
    pub replay_limit: u32,

    /// Least time between two group commits of one shard (0: none). Under load it fills
    /// batches (a commit costs the database about the same whatever its size); a send
    /// arriving after a quiet spell waits for nothing.
    #[arg(long, env = "SWITCHBOARD_COMMIT_INTERVAL", default_value = "1ms", value_parser = parse_duration)]
    pub commit_interval: Duration,

    /// How often delivery positions are written to the inbox backend. A crash loses at most
    /// this much of them, which means re-delivery, never loss.
    #[arg(long, env = "SWITCHBOARD_POSITION_FLUSH", default_value = "500ms", value_parser = parse_duration)]
    pub position_flush: Duration,

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

    /// How long a client may take to send request headers (slowloris guard).
    #[arg(long, env = "SWITCHBOARD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

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

    /// Lifetime of an issued token (whole seconds).
    #[arg(long, env = "SWITCHBOARD_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub token_ttl: Duration,

    /// A PEM CA bundle trusted besides the system roots by the TLS connections to MySQL,
    /// Redis and MongoDB (a private or cloud provider CA).
    #[arg(long, env = "SWITCHBOARD_TLS_CA_FILE")]
    pub tls_ca_file: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Validate the configuration, print it (secrets masked) and exit: 0 when valid, 64 with
    /// the reason when not. Connects to nothing. (No environment variable: it is an action.)
    #[arg(long)]
    pub check_config: bool,
}

impl Config {
    /// Checks what clap cannot: relations between values. The message is one line for main.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout <= self.heartbeat_interval {
            return Err("--heartbeat-timeout must be greater than --heartbeat-interval > 0".into());
        }
        if self.drain_close_rate == 0 {
            return Err("--drain-close-rate must be at least 1".into());
        }
        if self.session_queue == 0 || self.replay_limit == 0 || self.position_flush.is_zero() {
            return Err("--session-queue and --replay-limit must be at least 1, --position-flush above 0".into());
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
        if self.token_ttl < Duration::from_secs(1) {
            return Err("--token-ttl must be at least 1s".into());
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
        let cluster = !self.redis_cluster_urls.is_empty();
        match self.routing {
            Routing::Sharded if !cluster => {
                return Err("--routing sharded needs REDIS_CLUSTER_URLS: sharded pub/sub needs a Redis Cluster".into());
            }
            Routing::Group | Routing::Broadcast if cluster => {
                return Err(format!(
                    "--routing {} does not run on a Redis Cluster (REDIS_CLUSTER_URLS): use --routing sharded (group's channels on the cluster) or --routing node",
                    self.routing.name()
                ));
            }
            Routing::Node if self.presence_redis().is_none() && !cluster => {
                return Err("--routing node needs a Redis for its presence store: REDIS_URL, REDIS_CLUSTER_URLS, or SWITCHBOARD_PRESENCE_REDIS_URL with NATS_URL".into());
            }
            _ => {}
        }
        if cluster && self.channel_prefix.contains(['{', '}']) {
            return Err(
                "--channel-prefix must not contain { or } on a Redis Cluster (they would change the hash tags)".into(),
            );
        }
        if !(128..=1024).contains(&self.shard_partitions) {
            return Err("--shard-partitions must be between 128 and 1024".into());
        }
        for url in &self.redis_cluster_urls {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(format!("REDIS_CLUSTER_URLS entries must start with redis://, got {url:?}"));
            }
        }
        if self.presence_ttl < Duration::from_millis(300) {
            return Err("--presence-ttl must be at least 300ms".into());
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

    /// Parses flags from an explicit list (without the program name) and no environment
    /// variables at all, whatever the process environment holds: tests use this.
    pub fn from_args<I, S>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString> + Clone,
    {
        Self::parse_from_env(std::iter::once("switchboard".into()).chain(args.into_iter().map(Into::into)), |_| None)
    }

    /// Parses a command line (program name first) with the environment variables that `env`
    /// returns: a flag on the command line wins over its variable, a variable over the
    /// default. The binary passes the process environment, [`Config::from_args`] none.
    pub fn parse_from_env<I, S>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        if args.is_empty() {
            args.push("switchboard".into());
        }
        // clap reads the process environment when a command is built; this command reads none.
        let mut vars = Vec::new();
        let mut cmd = Self::command().mut_args(|arg| match arg.get_env() {
            Some(name) => {
                let takes_value = arg.get_action().takes_values();
                vars.push((arg.get_id().clone(), arg.get_long().map(str::to_owned), name.to_owned(), takes_value));
                arg.env(None::<&'static str>)
            }
            None => arg,
        });
        let given = match cmd.clone().try_get_matches_from(&args) {
            Ok(given) => given,
            // --help and --version as the binary's own command shows them, with the variables.
            Err(e) if !e.use_stderr() => return Err(Self::command().try_get_matches_from(&args).err().unwrap_or(e)),
            Err(e) => return Err(e),
        };
        let mut with_env = vec![args[0].clone()];
        for (id, long, name, takes_value) in vars {
            let (Some(long), Some(value)) = (long, name.to_str().and_then(&env)) else { continue };
            if given.value_source(id.as_str()) == Some(ValueSource::CommandLine) {
                continue;
            }
            if takes_value {
                with_env.push(format!("--{long}={value}").into());
            } else if !matches!(value.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no" | "off" | "n") {
                with_env.push(format!("--{long}").into());
            }
        }
        with_env.extend(args.into_iter().skip(1));
        let matches = cmd.try_get_matches_from_mut(with_env)?;
        Self::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
    }

    /// What `--check-config` prints: a comment line, then one `--flag value` line per flag.
    pub fn report(&self) -> String {
        use std::fmt::Write;
        let shown = self.effective();
        let width = shown.iter().map(|(flag, _)| flag.len()).max().unwrap_or(0) + 2;
        let mut out = String::from("# switchboard configuration: valid (secrets masked)\n");
        for (flag, value) in shown {
            let _ = writeln!(out, "{flag:width$}{value}");
        }
        out
    }

    /// The effective configuration, one `(flag, value)` per flag, as `--check-config` prints
    /// it: secrets and the passwords inside URLs are `***`.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "(unset)".to_owned(), mask_url);
        let secret = |v: &Option<String>| if v.is_some() { "***".to_owned() } else { "(unset)".to_owned() };
        let urls = |list: &[String]| match list {
            [] => "(unset)".to_owned(),
            list => list.iter().map(|u| mask_url(u)).collect::<Vec<_>>().join(","),
        };
        vec![
            ("--listen", self.listen.to_string()),
            ("--admin-listen", self.admin_listen.to_string()),
            ("--agent-listen", self.agent_listen.map_or_else(|| "(unset)".to_owned(), |a| a.to_string())),
            ("--node-id", self.node_name()),
            ("--database-url", mask_url(&self.database_url)),
            ("--redis-url", opt(&self.redis_url)),
            ("--redis-cluster-urls", urls(&self.redis_cluster_urls)),
            ("--shard-partitions", self.shard_partitions.to_string()),
            ("--nats-url", urls(&self.nats_urls())),
            ("--presence-redis-url", opt(&self.presence_redis_url)),
            ("--channel-prefix", format!("{:?}", self.channel_prefix)),
            ("--routing", self.routing.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())),
            ("--presence-ttl", show_duration(self.presence_ttl)),
            ("--presence-cache", show_duration(self.presence_cache)),
            ("--mongodb-url", opt(&self.mongodb_url)),
            ("--heartbeat-interval", show_duration(self.heartbeat_interval)),
            ("--heartbeat-timeout", show_duration(self.heartbeat_timeout)),
            ("--drain-timeout", show_duration(self.drain_timeout)),
            ("--drain-close-rate", self.drain_close_rate.to_string()),
            ("--max-message-bytes", self.max_message_bytes.to_string()),
            ("--max-body-bytes", self.max_body_bytes.to_string()),
            ("--max-group-members", self.max_group_members.to_string()),
            ("--max-frame-bytes", self.max_frame_bytes.to_string()),
            ("--session-queue", self.session_queue.to_string()),
            ("--write-timeout", show_duration(self.write_timeout)),
            ("--inbox-ttl", show_duration(self.inbox_ttl)),
            ("--replay-limit", self.replay_limit.to_string()),
            ("--commit-interval", show_duration(self.commit_interval)),
            ("--position-flush", show_duration(self.position_flush)),
            ("--max-connections", self.max_connections.to_string()),
            ("--max-connections-per-user", self.max_connections_per_user.to_string()),
            ("--send-rate", self.send_rate.to_string()),
            ("--send-burst", self.send_burst.to_string()),
            ("--header-read-timeout", show_duration(self.header_read_timeout)),
            (
                "--allowed-origins",
                if self.allowed_origins.is_empty() { "(any)".to_owned() } else { self.allowed_origins.join(",") },
            ),
            ("--token-secret", secret(&self.token_secret)),
            ("--token-verify-secret", secret(&self.token_verify_secret)),
            ("--token-ttl", show_duration(self.token_ttl)),
            (
                "--tls-ca-file",
                self.tls_ca_file.as_ref().map_or_else(|| "(unset)".to_owned(), |p| p.display().to_string()),
            ),
            ("--log-format", self.log_format.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())),
        ]
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

    pub fn presence(&self) -> PresenceConfig {
        PresenceConfig { ttl: self.presence_ttl, cache: self.presence_cache }
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

/// A URL with the password of its user info replaced by `***`
/// (`mysql://user:***@host/db`); anything else unchanged.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else { return url.to_owned() };
    let Some(colon) = authority[..at].find(':') else { return url.to_owned() };
    format!("{}{}:***{}", &url[..scheme_end], &authority[..colon], &url[scheme_end + at..])
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
        assert_eq!(c.drain_timeout, Duration::from_secs(300));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.commit_interval, Duration::from_micros(1000));
        assert_eq!(c.inbox_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.token_ttl, Duration::from_secs(24 * 3600));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn durations_are_written_with_their_unit() {
        let c = Config::from_args([
            "--heartbeat-interval",
            "300ms",
            "--heartbeat-timeout",
            "1m",
            "--commit-interval",
            "1000us",
            "--drain-timeout=5s",
            "--presence-cache",
            "0",
            "--inbox-ttl",
            "1h 30m",
        ])
        .expect("parses");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(300));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(60));
        assert_eq!(c.commit_interval, Duration::from_millis(1));
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.presence_cache, Duration::ZERO);
        assert_eq!(c.inbox_ttl, Duration::from_secs(5400));
        // A bare number has no unit: refused, never guessed.
        let err = Config::from_args(["--drain-timeout", "300"]).expect_err("no unit").to_string();
        assert!(err.contains("--drain-timeout") && err.contains("unit"), "{err}");
        assert!(Config::from_args(["--heartbeat-interval", "5 parsecs"]).is_err());
        assert_eq!(show_duration(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(parse_duration(&show_duration(Duration::from_micros(1500))), Ok(Duration::from_micros(1500)));
        assert_eq!(show_duration(Duration::ZERO), "0");
    }

    #[test]
    fn the_environment_comes_from_the_given_function_only() {
        let env = |name: &str| match name {
            "REDIS_URL" => Some("redis://from-env:6379".to_owned()),
            "SWITCHBOARD_HEARTBEAT_INTERVAL" => Some("2s".to_owned()),
            "SWITCHBOARD_ALLOWED_ORIGINS" => Some("https://a.example,https://b.example".to_owned()),
            _ => None,
        };
        let c = Config::parse_from_env(["switchboard"], env).expect("parses");
        assert_eq!(c.redis_url.as_deref(), Some("redis://from-env:6379"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.allowed_origins, ["https://a.example", "https://b.example"]);
        assert!(!c.check_config, "no variable turns on --check-config");
        // The command line wins over the environment.
        let c = Config::parse_from_env(
            ["switchboard", "--redis-url", "redis://from-args:6379", "--allowed-origins", "https://c.example"],
            env,
        )
        .expect("parses");
        assert_eq!(c.redis_url.as_deref(), Some("redis://from-args:6379"));
        assert_eq!(c.allowed_origins, ["https://c.example"]);
        // A bad value from the environment is an error like one on the command line.
        let bad = |name: &str| (name == "SWITCHBOARD_DRAIN_TIMEOUT").then(|| "300".to_owned());
        assert!(Config::parse_from_env(["switchboard"], bad).is_err());
        // `from_args` reads no environment, whatever the process has (REDIS_URL, PATH, ...).
        let c = Config::from_args(Vec::<String>::new()).expect("parses");
        assert!(c.redis_url.is_none() && c.mongodb_url.is_none() && c.node_id.is_none());
        assert_eq!(c.database_url, "sqlite://switchboard.db");
    }

    #[test]
    fn the_effective_configuration_names_every_flag_and_masks_secrets() {
        let c = Config::from_args([
            "--database-url",
            "mysql://app:hunter2@db:3306/switchboard",
            "--redis-url",
            "redis://:redispass@cache:6379",
            "--token-secret",
            "0123456789abcdef-secret",
        ])
        .expect("parses");
        let shown = c.effective();
        let text = format!("{shown:?}");
        assert!(!text.contains("hunter2") && !text.contains("redispass") && !text.contains("abcdef-secret"), "{text}");
        let value = |flag: &str| shown.iter().find(|(f, _)| *f == flag).map(|(_, v)| v.as_str());
        assert_eq!(value("--database-url"), Some("mysql://app:***@db:3306/switchboard"));
        assert_eq!(value("--redis-url"), Some("redis://:***@cache:6379"));
        assert_eq!(value("--token-secret"), Some("***"));
        assert_eq!(value("--token-verify-secret"), Some("(unset)"));
        assert_eq!(value("--heartbeat-interval"), Some("5s"));
        assert_eq!(value("--drain-timeout"), Some("5m"));
        // Every flag of the command is listed (a new flag must be added to `effective`).
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version" | "check-config") {
                continue;
            }
            assert!(value(&format!("--{long}")).is_some(), "--{long} is missing from Config::effective");
        }
        assert_eq!(mask_url("sqlite://switchboard.db"), "sqlite://switchboard.db");
        assert_eq!(mask_url("redis://user@host:6379"), "redis://user@host:6379");
        assert_eq!(mask_url("mongodb://u:p@h1,h2/db?x=a@b"), "mongodb://u:***@h1,h2/db?x=a@b");
    }

    #[test]
    fn bad_values_are_refused_with_one_line() {
        let c = Config::from_args(["--heartbeat-timeout", "1s"]).expect("parses");
        let err = c.validate().expect_err("timeout below interval");
        assert!(!err.contains('\n'));
        let c = Config::from_args(["--database-url", "postgres://x"]).expect("parses");
        assert!(c.validate().expect_err("unsupported").contains("DATABASE_URL"));
        assert!(Config::from_args(["--listen", "not-an-addr"]).is_err());
        let c = Config::from_args(["--tls-ca-file", "/nonexistent/ca.pem"]).expect("parses");
        assert!(c.validate().expect_err("no such CA file").contains("SWITCHBOARD_TLS_CA_FILE"));
        let c = Config::from_args(["--routing", "node"]).expect("parses");
        assert!(c.validate().expect_err("node mode without Redis").contains("REDIS_URL, REDIS_CLUSTER_URLS"));
        let c = Config::from_args(["--routing", "sharded"]).expect("parses");
        assert!(c.validate().expect_err("sharded without a cluster").contains("REDIS_CLUSTER_URLS"));
        let c = Config::from_args(["--redis-cluster-urls", "redis://a:1,redis://b:2"]).expect("parses");
        assert_eq!(c.redis_cluster_urls.len(), 2);
        assert!(c.validate().expect_err("a cluster in group routing").contains("--routing sharded"));
        let c = Config::from_args(["--routing", "broadcast", "--redis-cluster-urls", "redis://a:1"]).expect("parses");
        assert!(c.validate().expect_err("a cluster in broadcast routing").contains("--routing broadcast does not run"));
        let node = ["--routing", "node", "--redis-cluster-urls", "redis://a:1"];
        assert!(Config::from_args(node).expect("parses").validate().is_ok(), "node routing on a cluster");
        let braces = ["--routing", "node", "--redis-cluster-urls", "redis://a:1", "--channel-prefix", "a{b}:"];
        assert!(
            Config::from_args(braces).expect("parses").validate().expect_err("braces").contains("--channel-prefix")
        );
        let braces = ["--routing", "node", "--redis-url", "redis://a:1", "--channel-prefix", "a{b}:"];
        assert!(Config::from_args(braces).expect("parses").validate().is_ok(), "braces are harmless on one Redis");
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
