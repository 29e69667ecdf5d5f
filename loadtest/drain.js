// (d) Drain under load, against the local fleet (haproxy/fleet.sh up: HAProxy on :8080, node i
// admin on :900i). Steady chat through HAProxy (REST and WebSockets), acking clients that
// reconnect with backoff on 1001; DRAIN_AT seconds into the sending, VU 1 posts
// /admin/drain to DRAIN_URL. The run passes when nothing is lost, duplicated on a
// connection or out of order, and every client is back at the end.
//
//   haproxy/fleet.sh up
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e DRAIN_URL=http://127.0.0.1:9001/admin/drain loadtest/drain.js

import http from 'k6/http';
import { Counter } from 'k6/metrics';
import {
  SUMMARY_TREND_STATS, checkerThresholds, createPairs, registerUsers, runPairs, sleepMs, summaryLine, table,
} from './lib/switchboard.js';

const PAIRS = parseInt(__ENV.PAIRS || '40', 10);
const RATE = parseFloat(__ENV.RATE || '100');
const DURATION = parseFloat(__ENV.DURATION || '20');
const DRAIN_AT = parseFloat(__ENV.DRAIN_AT || String(DURATION / 3));
const DRAIN_URL = __ENV.DRAIN_URL || 'http://127.0.0.1:9001/admin/drain';
const VUS = Math.min(PAIRS, parseInt(__ENV.VUS || String(Math.min(PAIRS, 10)), 10));
const LINGER = parseFloat(__ENV.LINGER || '15');

const drains = new Counter('sb_drains');
const offlineAtEnd = new Counter('sb_offline_at_end');

export const options = {
  scenarios: {
    drain: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, maxDuration: `${Math.ceil(DURATION + LINGER + 90)}s` },
  },
  setupTimeout: '300s',
  thresholds: Object.assign({ sb_drains: ['count==1'], sb_offline_at_end: ['count==0'], sb_accepted: ['count>0'] }, checkerThresholds),
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  const ids = registerUsers(PAIRS * 2, 'k6d');
  return { pairs: createPairs(ids), start: Date.now() + 5000 };
}

export default async function (data) {
  // VU 1 drains the node DRAIN_AT seconds into the sending.
  const drain = async (start) => {
    await sleepMs(start + DRAIN_AT * 1000 - Date.now());
    const r = await http.asyncRequest('POST', DRAIN_URL, null, { timeout: '10s' });
    console.log(`drain ${DRAIN_URL}: ${r.status} ${r.body}`);
    if (r.status === 202 || r.status === 200) drains.add(1);
  };
  const offline = await runPairs(data, {
    pairs: PAIRS, rate: RATE, duration: DURATION, linger: LINGER, vus: VUS, ack: true, idPrefix: 'k6d',
    duringRun: __VU === 1 ? drain : undefined,
  });
  offlineAtEnd.add(offline);
}

export function handleSummary(data) {
  const line = summaryLine('drain', data, { pairs: PAIRS, rate: RATE, duration_s: DURATION, drain_at_s: DRAIN_AT });
  const text = `drain: ${PAIRS} pairs, ${RATE} msgs/s for ${DURATION}s through HAProxy, drain at +${DRAIN_AT}s (${DRAIN_URL})\n${table(data, [
    'sb_drains', 'sb_accepted', 'sb_delivered', 'sb_send_retries', 'sb_send_errors', 'sb_reconnects', 'sb_send_ms',
    'sb_delivery_ms', 'sb_session_ms', 'sb_offline_at_end', 'sb_lost', 'sb_duplicated', 'sb_out_of_order',
  ])}\n${line}\n`;
  return { stdout: text };
}
