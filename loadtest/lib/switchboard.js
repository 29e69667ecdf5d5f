// Shared helpers of the k6 scenarios: REST calls, user/group setup, a reconnecting WebSocket
// client, and the loss/duplicate/order rules of src/checker.rs re-implemented in JS.
//
// k6 VUs share no memory, so every scenario gives each VU whole conversations: the VU that
// sends to a receiver also holds that receiver's WebSocket, and can apply the checker's rules
// exactly:
//   lost:         a message accepted (HTTP 200) for a recipient that no connection of that
//                 recipient received;
//   duplicated:   a message received twice on one connection;
//   out of order: on one connection, a message older than one already received from the
//                 same sender in the same group.
// Counters sb_lost / sb_duplicated / sb_out_of_order carry the verdict; thresholds make a
// run fail when any is above zero.

import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { WebSocket } from 'k6/experimental/websockets';
import { setTimeout, clearTimeout, setInterval, clearInterval } from 'k6/timers';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
export const WS_URL = (__ENV.WS_URL || BASE_URL.replace(/^http/, 'ws')).replace(/\/$/, '');

export const accepted = new Counter('sb_accepted');
export const rejected = new Counter('sb_send_retries');
export const sendErrors = new Counter('sb_send_errors');
export const delivered = new Counter('sb_delivered');
export const lost = new Counter('sb_lost');
export const duplicated = new Counter('sb_duplicated');
export const outOfOrder = new Counter('sb_out_of_order');
export const sessions = new Counter('sb_sessions');
export const reconnects = new Counter('sb_reconnects');
export const connectFailures = new Counter('sb_connect_failures');
export const deliveryMs = new Trend('sb_delivery_ms', true);
export const sessionMs = new Trend('sb_session_ms', true);
export const sendMs = new Trend('sb_send_ms', true);

export const checkerThresholds = {
  sb_lost: ['count==0'],
  sb_duplicated: ['count==0'],
  sb_out_of_order: ['count==0'],
};

const FORM = { headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, timeout: '10s' };

function form(fields) {
  return Object.keys(fields)
    .map((k) => `${encodeURIComponent(k)}=${encodeURIComponent(String(fields[k]))}`)
    .join('&');
}

/// Registers `n` users in batches; returns their ids.
export function registerUsers(n, prefix) {
  const ids = [];
  const run = `${prefix}${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  for (let start = 0; start < n; start += 100) {
    const reqs = [];
    for (let i = start; i < Math.min(n, start + 100); i++) {
      reqs.push(['POST', `${BASE_URL}/register`, form({ username: `${run}-${i}` }), FORM]);
    }
    for (const r of http.batch(reqs)) {
      if (r.status !== 200) throw new Error(`register: ${r.status} ${r.body}`);
      ids.push(r.json('user_id'));
    }
  }
  return ids;
}

/// Opens the 1:1 conversation of each pair [a, b]; returns [{a, b, group}].
export function createPairs(ids) {
  const pairs = [];
  for (let start = 0; start + 1 < ids.length; start += 200) {
    const reqs = [];
    const batch = [];
    for (let i = start; i + 1 < Math.min(ids.length, start + 200); i += 2) {
      batch.push([ids[i], ids[i + 1]]);
      reqs.push(['POST', `${BASE_URL}/create_group`, form({ name: 'k6', created_by: ids[i], user_ids: ids[i + 1] }), FORM]);
    }
    http.batch(reqs).forEach((r, j) => {
      if (r.status !== 200) throw new Error(`create_group: ${r.status} ${r.body}`);
      pairs.push({ a: batch[j][0], b: batch[j][1], group: r.json('group_id') });
    });
  }
  return pairs;
}

/// The slice of `items` this VU owns (VUs numbered from 1, `vus` in total).
export function mine(items, vu, vus) {
  const out = [];
  for (let i = vu - 1; i < items.length; i += vus) out.push(items[i]);
  return out;
}

export function sleepMs(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/// The reconnect delay of docs/protocol.md: min(cap, base * 2^attempt) + random(0, 1000 ms).
export function backoffMs(attempt, base, cap) {
  return Math.min(cap, base * Math.pow(2, Math.min(attempt, 20))) + Math.random() * 1000;
}

/// One message, retried with the same client_msg_id on 5xx and transport errors (which are
/// not verdicts: the send is simply not accepted yet). Resolves to the message id, or null.
export async function send(sender, group, content, clientMsgId, baseUrl) {
  const url = `${baseUrl || BASE_URL}/send_message`;
  const body = form({ sender_id: sender, group_id: group, content, client_msg_id: clientMsgId });
  for (let attempt = 0; attempt < 20; attempt++) {
    const t = Date.now();
    let r;
    try {
      r = await http.asyncRequest('POST', url, body, FORM);
    } catch (e) {
      r = { status: 0 };
    }
    if (r.status === 200) {
      sendMs.add(Date.now() - t);
      accepted.add(1);
      return r.json('message_id');
    }
    if (r.status >= 400 && r.status < 500) {
      sendErrors.add(1, { status: String(r.status) });
      return null;
    }
    rejected.add(1, { status: String(r.status) });
    await sleepMs(Math.min(2000, 50 * Math.pow(2, attempt)));
  }
  sendErrors.add(1, { status: 'gave_up' });
  return null;
}

/// What one user has been sent and has received, and the per-connection rules.
export class Tracker {
  constructor(user) {
    this.user = user;
    this.expected = new Set(); // accepted ids meant for this user
    this.received = new Set(); // on any connection
  }

  connection() {
    const seen = new Set();
    const last = {};
    return (frame) => {
      const id = frame.message_id;
      const dup = seen.has(id);
      seen.add(id);
      const key = `${frame.group_id}:${frame.sender_id}`;
      if (!dup && last[key] !== undefined && id < last[key]) outOfOrder.add(1);
      if (dup) duplicated.add(1);
      last[key] = Math.max(last[key] || 0, id);
      this.received.add(id);
      delivered.add(1);
    };
  }

  missing() {
    let n = 0;
    for (const id of this.expected) if (!this.received.has(id)) n++;
    return n;
  }

  /// Adds this user's losses to sb_lost (call once, at the end).
  verdict() {
    lost.add(this.missing());
  }
}

/// A client that keeps one session of `user` open: heartbeats every 5 s, acks (when `ack`),
/// reconnects with backoff on every close except 1000/1008 and while `keep()` is true.
/// Calls `onMessage(frame, tracker)` for each message frame.
export class Client {
  constructor(user, opts) {
    this.user = user;
    this.opts = Object.assign({ ack: true, url: WS_URL, base: 100, cap: 3000 }, opts || {});
    this.tracker = new Tracker(user);
    this.ws = null;
    this.live = false;
    this.stopped = false;
    this.attempt = 0;
    this.connects = 0;
    this.onHello = null;
    this.onMessage = null;
  }

  open() {
    if (this.stopped) return;
    const t0 = Date.now();
    const url = `${this.opts.url}/ws/${this.user}${this.opts.ack ? '?ack=1' : ''}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    const record = this.tracker.connection();
    let acks = [];
    let hb = null;
    let flush = null;
    let closed = false;
    const done = (code) => {
      if (closed) return;
      closed = true;
      this.live = false;
      if (hb) clearInterval(hb);
      if (flush) clearInterval(flush);
      if (this.stopped || code === 1000 || code === 1008) return;
      reconnects.add(1, { code: String(code) });
      this.attempt++;
      setTimeout(() => this.open(), backoffMs(this.attempt - 1, this.opts.base, this.opts.cap));
    };
    ws.onopen = () => {
      hb = setInterval(() => {
        try { ws.send('heartbeat'); } catch (e) { /* closing */ }
      }, 5000);
      if (this.opts.ack) {
        flush = setInterval(() => {
          if (acks.length === 0) return;
          try { ws.send(JSON.stringify({ type: 'ack', message_ids: acks })); } catch (e) { /* closing */ }
          acks = [];
        }, 100);
      }
    };
    ws.onmessage = (e) => {
      let f;
      try { f = JSON.parse(e.data); } catch (err) { return; }
      if (f.type === 'hello') {
        this.live = true;
        this.attempt = 0;
        this.connects++;
        sessions.add(1);
        sessionMs.add(Date.now() - t0);
        if (this.onHello) this.onHello(this);
      } else if (f.type === 'message') {
        record(f);
        if (this.opts.ack) acks.push(f.message_id);
        if (this.onMessage) this.onMessage(f, this.tracker);
      }
    };
    ws.onerror = () => {
      if (!this.live) connectFailures.add(1);
      // k6 reports errors before close; a failed open gets no close event.
      if (ws.readyState !== 1) done(0);
    };
    ws.onclose = (e) => done(e && e.code !== undefined ? e.code : 0);
  }

  /// Drops the session (normal close) without reconnecting; `open()` brings it back.
  drop() {
    this.stopped = true;
    if (this.ws) {
      try { this.ws.close(); } catch (e) { /* already closed */ }
    }
    this.live = false;
  }

  resume() {
    this.stopped = false;
    this.attempt = 0;
    this.open();
  }

  stop() {
    this.drop();
  }
}

/// One summary line plus the figures that matter, for handleSummary.
// The pair chat shared by chat.js and drain.js. This VU opens the receivers of its pairs,
// waits until they are live, then sends from the other member of each pair on a fixed
// schedule (open loop per pair) for `duration` s, with the send time in the content for the
// latency trend. `duringRun(start)` may start something alongside (a drain). Afterwards it
// waits up to `linger` s until every accepted message arrived and every client is back,
// records each connection's verdict and returns how many clients were still offline.
export async function runPairs(data, { pairs, rate, duration, linger, vus, ack, idPrefix, duringRun }) {
  const indexed = data.pairs.map((p, i) => Object.assign({ index: i }, p));
  const my = mine(indexed, __VU, vus);
  const clients = my.map((p) => {
    const c = new Client(p.b, { ack });
    c.onMessage = (f) => {
      const parts = String(f.content).split(' ');
      if (parts[0] === 'k6') deliveryMs.add(Date.now() - parseInt(parts[1], 10));
    };
    c.open();
    return c;
  });
  const t = Date.now();
  while (clients.some((c) => !c.live) && Date.now() - t < 60000) await sleepMs(20);
  const start = Math.max(data.start, Date.now());
  const end = start + duration * 1000;
  if (duringRun) duringRun(start);
  const period = (1000 * pairs) / rate; // per pair
  await Promise.all(
    my.map(async (p, i) => {
      const offset = (p.index * period) / pairs;
      for (let k = 0; ; k++) {
        const due = start + offset + k * period;
        if (due >= end) break;
        await sleepMs(due - Date.now());
        const sent = Date.now();
        const id = await send(p.a, p.group, `k6 ${sent} ${k}`, `${idPrefix}-${p.group}-${start}-${k}`);
        if (id !== null) clients[i].tracker.expected.add(id);
      }
    }),
  );
  const deadline = Date.now() + linger * 1000;
  while (clients.some((c) => !c.live || c.tracker.missing() > 0) && Date.now() < deadline) await sleepMs(100);
  await sleepMs(300);
  const offline = clients.filter((c) => !c.live).length;
  for (const c of clients) {
    c.tracker.verdict();
    c.stop();
  }
  return offline;
}

export function summaryLine(name, data, extra) {
  const m = data.metrics;
  const count = (k) => (m[k] ? m[k].values.count : 0);
  const rate = (k) => (m[k] ? m[k].values.rate : 0);
  const q = (k, p) => (m[k] && m[k].values[p] !== undefined ? m[k].values[p].toFixed(2) : 'NaN');
  const fields = Object.assign(
    {
      accepted: count('sb_accepted'),
      accepted_per_s: rate('sb_accepted').toFixed(0),
      delivered: count('sb_delivered'),
      delivered_per_s: rate('sb_delivered').toFixed(0),
      sessions: count('sb_sessions'),
      reconnects: count('sb_reconnects'),
      connect_failures: count('sb_connect_failures'),
      send_retries: count('sb_send_retries'),
      send_errors: count('sb_send_errors'),
      delivery_p50_ms: q('sb_delivery_ms', 'med'),
      delivery_p90_ms: q('sb_delivery_ms', 'p(90)'),
      delivery_p99_ms: q('sb_delivery_ms', 'p(99)'),
      delivery_max_ms: q('sb_delivery_ms', 'max'),
      session_p50_ms: q('sb_session_ms', 'med'),
      session_p99_ms: q('sb_session_ms', 'p(99)'),
      lost: count('sb_lost'),
      dup: count('sb_duplicated'),
      out_of_order: count('sb_out_of_order'),
    },
    extra || {},
  );
  const failed = Object.keys(data.metrics).filter((k) => {
    const t = data.metrics[k].thresholds;
    return t && Object.keys(t).some((name) => !t[name].ok);
  });
  fields.thresholds = failed.length ? `failed:${failed.join(',')}` : 'ok';
  return `k6 ${name} ` + Object.keys(fields).map((k) => `${k}=${fields[k]}`).join(' ');
}

export function table(data, names) {
  const lines = [];
  for (const k of names) {
    const m = data.metrics[k];
    if (!m) continue;
    const v = m.values;
    if (m.type === 'trend') {
      lines.push(`  ${k.padEnd(24)} p50=${v.med.toFixed(2)} p90=${v['p(90)'].toFixed(2)} p95=${v['p(95)'].toFixed(2)} p99=${(v['p(99)'] || 0).toFixed(2)} max=${v.max.toFixed(2)} (ms)`);
    } else if (m.type === 'counter') {
      lines.push(`  ${k.padEnd(24)} ${v.count} (${v.rate.toFixed(1)}/s)`);
    } else if (m.type === 'gauge') {
      lines.push(`  ${k.padEnd(24)} ${v.value}`);
    }
  }
  return lines.join('\n');
}

export const SUMMARY_TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

export { setTimeout, clearTimeout, setInterval, clearInterval };
