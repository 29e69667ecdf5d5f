// (b) Steady chat: PAIRS conversations, RATE messages/s in total, for DURATION seconds.
// Each VU owns whole pairs: it holds the receiver's WebSocket and sends from the other
// member, one message at a time per pair on a fixed schedule (open loop per pair: a late
// send does not push the schedule back). The content carries the send start time; the
// receiver's delivery latency is now - that time. Loss/duplicate/order: lib/switchboard.js.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e PAIRS=50 -e RATE=500 -e DURATION=20 loadtest/chat.js

import {
  SUMMARY_TREND_STATS, checkerThresholds, createPairs, registerUsers, runPairs, summaryLine, table,
} from './lib/switchboard.js';

const PAIRS = parseInt(__ENV.PAIRS || '20', 10);
const RATE = parseFloat(__ENV.RATE || '100');
const DURATION = parseFloat(__ENV.DURATION || '20');
const VUS = Math.min(PAIRS, parseInt(__ENV.VUS || String(Math.min(PAIRS, 10)), 10));
const LINGER = parseFloat(__ENV.LINGER || '10');
const ACK = (__ENV.ACK || '0') === '1';
const P99_MS = __ENV.P99_MS; // optional latency threshold

const thresholds = Object.assign({ sb_accepted: ['count>0'] }, checkerThresholds);
if (P99_MS) thresholds.sb_delivery_ms = [`p(99)<${P99_MS}`];

export const options = {
  scenarios: {
    chat: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, maxDuration: `${Math.ceil(DURATION + LINGER + 90)}s` },
  },
  setupTimeout: '300s',
  thresholds,
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  const ids = registerUsers(PAIRS * 2, 'k6c');
  return { pairs: createPairs(ids), start: Date.now() + 5000 };
}

export default async function (data) {
  await runPairs(data, { pairs: PAIRS, rate: RATE, duration: DURATION, linger: LINGER, vus: VUS, ack: ACK, idPrefix: 'k6' });
}

export function handleSummary(data) {
  const accepted = data.metrics.sb_accepted ? data.metrics.sb_accepted.values.count : 0;
  const delivered = data.metrics.sb_delivered ? data.metrics.sb_delivered.values.count : 0;
  const line = summaryLine('chat', data, {
    pairs: PAIRS, rate: RATE, duration_s: DURATION,
    accepted_per_s: (accepted / DURATION).toFixed(0), delivered_per_s: (delivered / DURATION).toFixed(0),
  });
  const text = `chat: ${PAIRS} pairs, ${RATE} msgs/s for ${DURATION}s\n${table(data, [
    'sb_accepted', 'sb_delivered', 'sb_send_retries', 'sb_send_errors', 'sb_reconnects', 'sb_send_ms', 'sb_delivery_ms',
    'sb_session_ms', 'sb_lost', 'sb_duplicated', 'sb_out_of_order',
  ])}\n${line}\n`;
  return { stdout: text };
}
