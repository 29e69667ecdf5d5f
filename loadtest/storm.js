// (c) Reconnect storm: CLIENTS users in 1:1 pairs, all connected (acking). At one instant
// every socket is dropped; while they are away each user is sent MISSED messages by its
// partner; then every client reconnects at once, each after random(0, JITTER ms) (the reconnect
// backoff of docs/protocol.md, first attempt). sb_recovery_ms is, per client, the time from the
// storm's start until it is back and has received everything it missed; its max is the
// storm's recovery time. Loss/duplicate/order: lib/switchboard.js.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e CLIENTS=1000 loadtest/storm.js

import { Counter, Trend } from 'k6/metrics';
import {
  Client, SUMMARY_TREND_STATS, checkerThresholds, createPairs, mine, registerUsers, send, sleepMs,
  summaryLine, table, setTimeout,
} from './lib/switchboard.js';

const CLIENTS = parseInt(__ENV.CLIENTS || '200', 10);
const MISSED = parseInt(__ENV.MISSED || '1', 10);
const JITTER = parseFloat(__ENV.JITTER || '1000');
const CONNECT_S = parseFloat(__ENV.CONNECT_S || String(Math.max(5, CLIENTS / 500)));
const AWAY_S = parseFloat(__ENV.AWAY_S || String(Math.max(3, CLIENTS / 500)));
const RECOVER_S = parseFloat(__ENV.RECOVER_S || '30');
const VUS = parseInt(__ENV.VUS || String(Math.max(1, Math.ceil(CLIENTS / 400))), 10);
const TARGET_S = __ENV.TARGET_S; // optional: fail when recovery takes longer

const recovery = new Trend('sb_recovery_ms', true);
const notRecovered = new Counter('sb_not_recovered');
const notReady = new Counter('sb_not_connected_before_drop');

const thresholds = Object.assign({ sb_not_recovered: ['count==0'], sb_not_connected_before_drop: ['count==0'] }, checkerThresholds);
if (TARGET_S) thresholds.sb_recovery_ms = [`max<${TARGET_S * 1000}`];

export const options = {
  scenarios: {
    storm: {
      executor: 'per-vu-iterations', vus: VUS, iterations: 1,
      maxDuration: `${Math.ceil(CONNECT_S + AWAY_S + RECOVER_S + 120)}s`,
    },
  },
  setupTimeout: '600s',
  thresholds,
  summaryTrendStats: SUMMARY_TREND_STATS,
};

export function setup() {
  const ids = registerUsers(CLIENTS + (CLIENTS % 2), 'k6s');
  const pairs = createPairs(ids);
  const tConnect = Date.now() + 2000;
  const tDrop = tConnect + CONNECT_S * 1000;
  return { pairs, tConnect, tDrop, tGo: tDrop + AWAY_S * 1000 };
}

export default async function (data) {
  const my = mine(data.pairs, __VU, VUS);
  const clients = {};
  await sleepMs(data.tConnect - Date.now());
  for (const p of my) {
    for (const u of [p.a, p.b]) {
      clients[u] = new Client(u, { ack: true });
      clients[u].open();
    }
  }
  const all = Object.values(clients);
  await sleepMs(data.tDrop - Date.now());
  notReady.add(all.filter((c) => !c.live).length);
  for (const c of all) c.drop();
  await sleepMs(500);
  // While they are away: each partner sends MISSED messages to the other.
  await Promise.all(
    my.map(async (p) => {
      for (const [from, to] of [[p.a, p.b], [p.b, p.a]]) {
        for (let k = 0; k < MISSED; k++) {
          const id = await send(from, p.group, `missed ${k}`, `storm-${data.tGo}-${from}-${k}`);
          if (id !== null) clients[to].tracker.expected.add(id);
        }
      }
    }),
  );
  if (Date.now() > data.tGo) console.warn(`VU ${__VU}: the missed sends ran past the storm start; raise AWAY_S`);
  await sleepMs(data.tGo - Date.now());
  for (const c of all) setTimeout(() => c.resume(), Math.random() * JITTER);
  const pending = new Set(all);
  const deadline = data.tGo + RECOVER_S * 1000;
  while (pending.size > 0 && Date.now() < deadline) {
    for (const c of Array.from(pending)) {
      if (c.live && c.tracker.missing() === 0) {
        recovery.add(Date.now() - data.tGo);
        pending.delete(c);
      }
    }
    await sleepMs(10);
  }
  notRecovered.add(pending.size);
  await sleepMs(500);
  for (const c of all) {
    c.tracker.verdict();
    c.stop();
  }
}

export function handleSummary(data) {
  const r = data.metrics.sb_recovery_ms;
  const line = summaryLine('storm', data, {
    clients: CLIENTS,
    missed_per_client: MISSED,
    jitter_ms: JITTER,
    recovery_p50_ms: r ? r.values.med.toFixed(0) : 'NaN',
    recovery_max_ms: r ? r.values.max.toFixed(0) : 'NaN',
    not_recovered: data.metrics.sb_not_recovered ? data.metrics.sb_not_recovered.values.count : 0,
  });
  const text = `storm: ${CLIENTS} clients, ${MISSED} missed message(s) each, reconnect jitter ${JITTER} ms\n${table(data, [
    'sb_sessions', 'sb_session_ms', 'sb_recovery_ms', 'sb_not_recovered', 'sb_not_connected_before_drop', 'sb_accepted',
    'sb_delivered', 'sb_reconnects', 'sb_connect_failures', 'sb_lost', 'sb_duplicated', 'sb_out_of_order',
  ])}\n${line}\n`;
  return { stdout: text };
}
