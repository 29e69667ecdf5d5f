// Browser test of the web client across a drain, in real headless Chromium.
//
//   node tests/browser/drain.mjs <haproxyUrl> <adminUrlNode1> <adminUrlNode2>
//
// The page is served through HAProxy. Once connected, the node holding its session is
// drained (POST /admin/drain on that node's admin listener). The page must show
// `reconnecting`, come back `connected` (through HAProxy, on the other node), and show a
// message sent after the drain. Prints one line per check, then
// `browser-drain: N passed, M failed`, and exits non-zero on any failure.

import { TIMEOUT, assert, check, launch, register, send, tally, waitConnected, waitForMessage } from "./lib.mjs";

const [proxy, ...admins] = process.argv.slice(2);
if (!proxy || admins.length === 0) {
  console.error("usage: node tests/browser/drain.mjs <haproxyUrl> <adminUrl>...");
  process.exit(64);
}

async function sessionsOn(admin) {
  const text = await (await fetch(`${admin}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("switchboard_ws_connections "));
  return line ? Number(line.split(" ")[1]) : 0;
}

async function api(path, body) {
  const res = await fetch(`${proxy}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  assert(res.ok, `${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

const browser = await launch();
try {
  const page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(TIMEOUT);
  // Every state the page shows, in order.
  await page.addInitScript(() => {
    window.__states = [];
    const watch = () => {
      const el = document.getElementById("conn-state");
      if (!el) return setTimeout(watch, 10);
      const record = () => window.__states.push(el.textContent);
      record();
      new MutationObserver(record).observe(el, { childList: true, characterData: true, subtree: true });
    };
    watch();
  });
  await page.goto(proxy);
  const suffix = Math.random().toString(36).slice(2, 8);
  const me = await register(page, `drain_a_${suffix}`);
  const other = (await api("/register", { username: `drain_b_${suffix}` })).user_id;
  let group;
  await check("the page starts a conversation and is connected", async () => {
    group = (await api("/create_group", { name: "drain", created_by: me, user_ids: [other] })).group_id;
    await page.locator(`#groups [data-group-id="${group}"]`).click();
    await waitConnected(page);
  });

  let drained;
  await check("the node holding the session is drained", async () => {
    for (let i = 0; i < 50 && drained === undefined; i++) {
      for (const admin of admins) {
        if ((await sessionsOn(admin)) > 0) drained = admin;
      }
      if (drained === undefined) await new Promise((r) => setTimeout(r, 100));
    }
    assert(drained, "no node reports the page's session");
    const res = await fetch(`${drained}/admin/drain`, { method: "POST" });
    assert(res.status === 202, `drain answered ${res.status}`);
  });

  await check("the page shows reconnecting, then connected again", async () => {
    await page.waitForFunction(() => window.__states.includes("reconnecting"), null, { timeout: TIMEOUT });
    await page.waitForFunction(
      () => {
        const s = window.__states;
        return s.lastIndexOf("connected") > s.indexOf("reconnecting");
      },
      null,
      { timeout: 20_000 },
    );
    const others = admins.filter((a) => a !== drained);
    let total = 0;
    for (const a of others) total += await sessionsOn(a);
    assert(total > 0, "the page did not reconnect to another node");
  });

  await check("a message sent after the drain shows up", async () => {
    await api("/send_message", { sender_id: other, group_id: group, content: "after the drain" });
    await waitForMessage(page, "after the drain");
  });

  await check("the page can still send", async () => {
    await send(page, "mine after the drain");
    await waitForMessage(page, "mine after the drain");
  });
  console.log(`states: ${JSON.stringify(await page.evaluate(() => window.__states))}`);
} catch (e) {
  tally.failed += 1;
  console.log(`FAIL unexpected: ${e.message}`);
} finally {
  await browser.close();
}
console.log(`browser-drain: ${tally.passed} passed, ${tally.failed} failed`);
process.exit(tally.failed === 0 ? 0 : 1);
