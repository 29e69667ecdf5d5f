//! Every node of a fleet must route the same way: a `group` node never hears a message a
//! `node` node sends to its node channel, and a `broadcast` node publishes where nobody
//! else listens. The fleet's mode is a key in Redis, `{prefix}routing`, set by the first
//! node and kept alive by all of them; a node that finds another mode there refuses to
//! start. It expires a while after the last node of a fleet stops, so a fleet may change
//! its mode by stopping all its nodes and starting them in the new one.

use std::time::Duration;

use super::Routing;
use crate::backplane::IO_TIMEOUT;
use thiserror::Error;

/// Lifetime of the key without a refresh; nodes refresh it at a third of that.
const FLEET_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
#[error(
    "the fleet on this Redis routes with --routing {fleet}, this node with --routing {mine}; \
     start it with SWITCHBOARD_ROUTING={fleet}, or stop every node before changing the mode"
)]
pub struct Disagreement {
    pub fleet: String,
    pub mine: &'static str,
}

/// Where the fleet's shared keys live: the backplane's Redis or Redis Cluster.
#[derive(Clone)]
#[allow(clippy::large_enum_variant, reason = "built once per node")]
pub enum Keyspace {
    Redis(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

fn key(prefix: &str) -> String {
    format!("{prefix}routing")
}

/// Claims the fleet's mode, or finds it equal. An unreachable Redis is no disagreement (the
/// node may start before Redis; [`keep_agreeing`] claims it later).
pub async fn agree(keys: &Keyspace, prefix: &str, mode: Routing) -> Result<(), Disagreement> {
    match tokio::time::timeout(IO_TIMEOUT, claim(keys, prefix, mode)).await {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(fleet))) => Err(Disagreement { fleet, mine: mode.name() }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot check the fleet's routing mode now");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("cannot check the fleet's routing mode now: Redis timed out");
            Ok(())
        }
    }
}

/// Sets the key to `mode` unless it holds another mode, which is returned.
async fn claim(keys: &Keyspace, prefix: &str, mode: Routing) -> redis::RedisResult<Option<String>> {
    match keys {
        Keyspace::Redis(client) => claim_on(&mut client.get_multiplexed_async_connection().await?, prefix, mode).await,
        Keyspace::Cluster(client) => claim_on(&mut client.get_async_connection().await?, prefix, mode).await,
    }
}

async fn claim_on<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    prefix: &str,
    mode: Routing,
) -> redis::RedisResult<Option<String>> {
    let key = key(prefix);
    let current: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
    match current {
        Some(fleet) if fleet != mode.name() => Ok(Some(fleet)),
        _ => {
            let ttl = FLEET_TTL.as_millis() as u64;
            redis::cmd("SET").arg(&key).arg(mode.name()).arg("PX").arg(ttl).query_async::<()>(conn).await?;
            Ok(None)
        }
    }
}

/// Refreshes the fleet's mode for as long as the node runs (the caller aborts it); logs an
/// error if another mode took the key meanwhile.
pub async fn keep_agreeing(keys: Keyspace, prefix: String, mode: Routing) {
    let mut tick = tokio::time::interval(FLEET_TTL / 3);
    tick.reset();
    loop {
        tick.tick().await;
        if let Ok(Ok(Some(fleet))) = tokio::time::timeout(IO_TIMEOUT, claim(&keys, &prefix, mode)).await {
            tracing::error!(
                fleet = %fleet,
                mine = mode.name(),
                "another routing mode runs on this Redis: messages between the two are not delivered live"
            );
        }
    }
}
