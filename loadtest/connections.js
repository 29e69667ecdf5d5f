// (a) Connection ramp: CONNS WebSockets opened evenly over RAMP seconds, each heartbeating
// every 5 s, held HOLD seconds, then closed. Users come in 1:1 pairs, so each handshake does
// the user check, one group subscription and the inbox check. Many sockets per VU (the
// async websockets module), so k6 stays small; one k6 process holds up to ~18k sockets.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e CONNS=2000 -e RAMP=10 -e HOLD=20 loadtest/connections.js

import { Counter } from 'k6/metrics';
import {
  Client, SUMMARY_TREND_STATS, createPairs, mine, registerUsers, sleepMs, summaryLine, table,
} from './lib/switchboard.js';

const CONNS = parseInt(__ENV.CONNS || '1000', 10);
const RAMP = parseFloat(__ENV.RAMP || '10');
const HOLD = parseFloat(__ENV.HOLD || '20');
const VUS = parseInt(__ENV.VUS || String(Math.max(1, Math.ceil(CONNS / 500))), 10);

const openAtEnd = new Counter('sb_open_at_end');

export const options = {
  scenarios: {
    ramp: { executor: 'per-vu-iterations', vus: VUS, iterations: 1, maxDuration: `${Math.ceil(RAMP + HOLD + 120)}s` },
  },
  setupTimeout: '600s',
  thresholds: {
    sb_sessions: [`count>=${CONNS}`],
    sb_open_at_end: [`count>=${CONNS}`],
    sb_reconnects: ['count==0'],
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  const ids = registerUsers(CONNS + (CONNS % 2), 'k6r');
  createPairs(ids);
  return { ids: ids.slice(0, CONNS), start: Date.now() + 2000 };
}

export default async function (data) {
  const indexed = data.ids.map((u, i) => ({ u, i }));
  const my = mine(indexed, __VU, VUS);
  const clients = [];
  for (const { u, i } of my) {
    await sleepMs(data.start + (RAMP * 1000 * i) / CONNS - Date.now());
    const c = new Client(u, { ack: false });
    c.open();
    clients.push(c);
  }
  await sleepMs(data.start + (RAMP + HOLD) * 1000 - Date.now());
  openAtEnd.add(clients.filter((c) => c.live).length);
  for (const c of clients) c.stop();
  await sleepMs(500);
}

export function handleSummary(data) {
  const open = data.metrics.sb_open_at_end ? data.metrics.sb_open_at_end.values.count : 0;
  const line = summaryLine('connections', data, { conns: CONNS, ramp_s: RAMP, hold_s: HOLD, open_at_end: open });
  const text = `connections: ${CONNS} sockets over ${RAMP}s, held ${HOLD}s\n${table(data, [
    'sb_sessions', 'sb_session_ms', 'sb_connect_failures', 'sb_reconnects', 'sb_open_at_end', 'ws_connecting',
  ])}\n${line}\n`;
  return { stdout: text };
}
