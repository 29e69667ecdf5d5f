//! Prometheus metrics of one node (docs/operations.md), on a registry owned by the node rather than
//! the global one, so that several nodes in one test process stay apart. Label sets are
//! small and bounded: no user or group ids ever become labels.

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::ws::protocol::Disconnect;

/// Latency buckets from 0.5 ms to 5 s, dense where a healthy gateway lives.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

pub struct Metrics {
    registry: Registry,
    pub ws_connections: IntGauge,
    pub ws_connects: IntCounter,
    pub ws_disconnects: IntCounterVec,
    pub ws_upgrade_rejected: IntCounterVec,
    pub heartbeat_timeouts: IntCounter,
    pub messages_sent: IntCounter,
    pub messages_delivered: IntCounterVec,
    pub delivery_latency: Histogram,
    pub positions_unflushed: IntGauge,
    pub positions_written: IntCounter,
    pub gap_fetches: IntCounter,
    pub commit_batch_messages: Histogram,
    pub commit_wait: Histogram,
    pub slow_consumer_disconnects: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub backplane_subscriptions: IntGauge,
    pub backplane_received: IntCounter,
    pub backplane_reconnects: IntCounter,
    pub backplane_resubscribes: IntCounter,
    pub backplane_published: IntCounter,
    pub presence_lookups: IntCounterVec,
    pub store_query_duration: HistogramVec,
    pub backend_up: IntGaugeVec,
    pub lifecycle_phase: IntGauge,
    pub drain_sessions_remaining: IntGauge,
    pub drain_timeout_seconds: IntGauge,
    pub drain_started: IntGauge,
    pub limit_rejections: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("switchboard")
}

fn hopts(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).namespace("switchboard").buckets(LATENCY_BUCKETS.to_vec())
}

impl Metrics {
    /// Builds and registers every metric. Registration can only fail on a duplicate name,
    /// which is a programming error caught by the unit test below.
    pub fn new(node: &str) -> Self {
        let registry = Registry::new_custom(None, None).expect("empty registry");
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            }};
        }
        let m = Metrics {
            ws_connections: reg!(IntGauge::with_opts(opts("ws_connections", "Open WebSocket sessions."))),
            ws_connects: reg!(IntCounter::with_opts(opts("ws_connects_total", "WebSocket sessions opened."))),
            ws_disconnects: reg!(IntCounterVec::new(
                opts("ws_disconnects_total", "WebSocket sessions closed, by reason."),
                &["reason"]
            )),
            ws_upgrade_rejected: reg!(IntCounterVec::new(
                opts("ws_upgrade_rejected_total", "WebSocket upgrades refused, by reason."),
                &["reason"]
            )),
            heartbeat_timeouts: reg!(IntCounter::with_opts(opts(
                "heartbeat_timeouts_total",
                "Sessions closed with 4000 after heartbeat silence."
            ))),
            messages_sent: reg!(IntCounter::with_opts(opts(
                "messages_sent_total",
                "Messages accepted by send_message."
            ))),
            messages_delivered: reg!(IntCounterVec::new(
                opts("messages_delivered_total", "Message frames written to sockets, live or replayed."),
                &["path"]
            )),
            delivery_latency: reg!(Histogram::with_opts(hopts(
                "delivery_latency_seconds",
                "From acceptance of a message to the write of its live frame."
            ))),
            positions_unflushed: reg!(IntGauge::with_opts(opts(
                "positions_unflushed",
                "Delivery positions recorded but not yet written to the inbox backend."
            ))),
            positions_written: reg!(IntCounter::with_opts(opts(
                "positions_written_total",
                "Delivery positions written to the inbox backend (one row or document each)."
            ))),
            commit_batch_messages: reg!(Histogram::with_opts(
                HistogramOpts::new("commit_batch_messages", "Messages written by one group-commit transaction.")
                    .namespace("switchboard")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
            )),
            commit_wait: reg!(Histogram::with_opts(hopts(
                "commit_wait_seconds",
                "How long a send waited for its group-commit batch to start (the queue before the serial store write)."
            ))),
            gap_fetches: reg!(IntCounter::with_opts(opts(
                "gap_fetches_total",
                "Live messages that arrived past a hole in their group's sequence, which was then read from the store."
            ))),
            slow_consumer_disconnects: reg!(IntCounter::with_opts(opts(
                "slow_consumer_disconnects_total",
                "Sessions closed with 4008 because their queue was full."
            ))),
            http_requests: reg!(IntCounterVec::new(
                opts("http_requests_total", "HTTP requests by route template and status."),
                &["route", "status"]
            )),
            http_duration: reg!(HistogramVec::new(
                hopts("http_request_duration_seconds", "HTTP request duration by route template."),
                &["route"]
            )),
            backplane_subscriptions: reg!(IntGauge::with_opts(opts(
                "backplane_subscriptions",
                "Channels this node is subscribed to."
            ))),
            backplane_received: reg!(IntCounter::with_opts(opts(
                "backplane_messages_received_total",
                "Payloads received from the backplane."
            ))),
            backplane_reconnects: reg!(IntCounter::with_opts(opts(
                "backplane_reconnects_total",
                "Backplane reconnections after a lost connection."
            ))),
            backplane_resubscribes: reg!(IntCounter::with_opts(opts(
                "backplane_resubscribe_commands_total",
                "Subscribe commands sent to restore subscriptions after a lost connection or a topology change."
            ))),
            backplane_published: reg!(IntCounter::with_opts(opts(
                "backplane_published_total",
                "PUBLISH commands this node sent to the backplane."
            ))),
            presence_lookups: reg!(IntCounterVec::new(
                opts("presence_lookups_total", "Users looked up in the presence store, by where the answer came from."),
                &["source"]
            )),
            store_query_duration: reg!(HistogramVec::new(
                hopts("store_query_duration_seconds", "Store and inbox operation duration by operation."),
                &["op"]
            )),
            backend_up: reg!(IntGaugeVec::new(
                opts("backend_up", "1 when the backend answered its last health check."),
                &["backend"]
            )),
            lifecycle_phase: reg!(IntGauge::with_opts(opts(
                "lifecycle_phase",
                "0 starting, 1 ready, 2 draining, 3 stopped."
            ))),
            drain_sessions_remaining: reg!(IntGauge::with_opts(opts(
                "drain_sessions_remaining",
                "Sessions still open during a drain."
            ))),
            drain_timeout_seconds: reg!(IntGauge::with_opts(opts(
                "drain_timeout_seconds",
                "Configured drain deadline (the enforced TTL)."
            ))),
            drain_started: reg!(IntGauge::with_opts(opts(
                "drain_started_timestamp_seconds",
                "Unix time the current drain began, 0 when not draining."
            ))),
            limit_rejections: reg!(IntCounterVec::new(
                opts("limit_rejections_total", "Requests or frames refused by a configured limit."),
                &["limit"]
            )),
            registry,
        };
        let info = IntGaugeVec::new(opts("build_info", "Node identity and version."), &["node", "version"])
            .expect("valid metric");
        info.with_label_values(&[node, env!("CARGO_PKG_VERSION")]).set(1);
        m.registry.register(Box::new(info)).expect("unique metric");
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector");
        for backend in ["store", "inbox", "backplane"] {
            m.backend_up.with_label_values(&[backend]).set(1);
        }
        // Known label values exist from the start, so dashboards show 0 rather than no data.
        for reason in Disconnect::ALL {
            m.ws_disconnects.with_label_values(&[reason.as_str()]);
        }
        for reason in [
            "draining",
            "bad_request",
            "unknown_user",
            "over_capacity",
            "too_many_connections",
            "unauthorized",
            "origin",
            "backend_unavailable",
        ] {
            m.ws_upgrade_rejected.with_label_values(&[reason]);
        }
        for path in ["live", "replay"] {
            m.messages_delivered.with_label_values(&[path]);
        }
        for limit in [
            "send_rate",
            "message_size",
            "body_size",
            "ws_frame_size",
            "group_members",
            "connections",
            "connections_per_user",
            "header_timeout",
            "replay",
        ] {
            m.limit_rejections.with_label_values(&[limit]);
        }
        m
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Starts a timer for one store or inbox operation.
    pub fn time_query(&self, op: &'static str) -> QueryTimer {
        QueryTimer { histogram: self.store_query_duration.with_label_values(&[op]), started: Instant::now() }
    }
}

/// Observes the elapsed time into `store_query_duration_seconds{op}` when dropped.
pub struct QueryTimer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_design_metric_is_exported() {
        let m = Metrics::new("n1");
        m.ws_disconnects.with_label_values(&[Disconnect::ClientClose.as_str()]).inc();
        m.ws_upgrade_rejected.with_label_values(&["draining"]).inc();
        m.messages_delivered.with_label_values(&["live"]).inc();
        m.http_requests.with_label_values(&["/register", "200"]).inc();
        m.http_duration.with_label_values(&["/register"]).observe(0.01);
        m.limit_rejections.with_label_values(&["send_rate"]).inc();
        m.presence_lookups.with_label_values(&["cache"]).inc();
        drop(m.time_query("insert_message"));
        let text = String::from_utf8(m.render()).expect("utf8");
        for name in [
            "switchboard_ws_connections",
            "switchboard_ws_connects_total",
            "switchboard_ws_disconnects_total",
            "switchboard_ws_upgrade_rejected_total",
            "switchboard_heartbeat_timeouts_total",
            "switchboard_messages_sent_total",
            "switchboard_messages_delivered_total",
            "switchboard_delivery_latency_seconds_bucket",
            "switchboard_positions_unflushed",
            "switchboard_positions_written_total",
            "switchboard_gap_fetches_total",
            "switchboard_commit_batch_messages_bucket",
            "switchboard_commit_wait_seconds_bucket",
            "switchboard_slow_consumer_disconnects_total",
            "switchboard_http_requests_total",
            "switchboard_http_request_duration_seconds_bucket",
            "switchboard_backplane_subscriptions",
            "switchboard_backplane_messages_received_total",
            "switchboard_backplane_reconnects_total",
            "switchboard_backplane_resubscribe_commands_total",
            "switchboard_backplane_published_total",
            "switchboard_presence_lookups_total",
            "switchboard_store_query_duration_seconds_bucket",
            "switchboard_lifecycle_phase",
            "switchboard_drain_sessions_remaining",
            "switchboard_backend_up",
            "switchboard_limit_rejections_total",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
