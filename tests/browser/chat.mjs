// Browser test of the embedded web client (src/web/index.html), in real headless Chromium.
//
//   node tests/browser/chat.mjs <baseUrlNode1> <baseUrlNode2>
//
// Page A runs on node 1 and page B on node 2, each in its own browser context (own
// localStorage). Through the UI only: both register, A starts a conversation with B's id,
// both open it, A and B exchange messages, then A sends XSS payloads that B must show as
// literal text without running them. Prints one line per check, then
// `browser: N passed, M failed`, and exits non-zero on any failure.
// A screenshot of page B is saved to target/browser-chat.png.

import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import {
  TIMEOUT,
  assert,
  check,
  connState,
  launch,
  messageWithText,
  register,
  send,
  tally,
  waitConnected,
  waitForMessage,
} from "./lib.mjs";

const [base1, base2] = process.argv.slice(2);
if (!base1 || !base2) {
  console.error("usage: node tests/browser/chat.mjs <baseUrlNode1> <baseUrlNode2>");
  process.exit(64);
}

const SCREENSHOT = resolve(process.cwd(), "target/browser-chat.png");
const XSS_PAYLOADS = [
  '<img src=x onerror="window.__xss=1">',
  "<script>window.__xss=1</script>",
];

const browser = await launch();

let exitCode = 1;
try {
  const ctxA = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const ctxB = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  ctxA.setDefaultTimeout(TIMEOUT);
  ctxB.setDefaultTimeout(TIMEOUT);
  const pageA = await ctxA.newPage();
  const pageB = await ctxB.newPage();

  const pageErrors = [];
  for (const [label, page] of [["A", pageA], ["B", pageB]]) {
    page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
    page.on("dialog", (d) => { pageErrors.push(`${label}: unexpected dialog ${d.message()}`); d.dismiss(); });
  }

  const suffix = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  const nameA = `alice_${suffix}`;
  const nameB = `bob_${suffix}`;
  let idA = 0;
  let idB = 0;
  let groupId = 0;

  await check("page A loads from node 1", async () => {
    const res = await pageA.goto(base1, { timeout: TIMEOUT });
    assert(res && res.ok(), `GET / answered ${res && res.status()}`);
    await pageA.waitForSelector("#register-btn", { timeout: TIMEOUT });
  });
  await check("page B loads from node 2", async () => {
    const res = await pageB.goto(base2, { timeout: TIMEOUT });
    assert(res && res.ok(), `GET / answered ${res && res.status()}`);
    await pageB.waitForSelector("#register-btn", { timeout: TIMEOUT });
  });
  await check("conn-state starts as closed before sign-in", async () => {
    const s = await connState(pageA);
    assert(s === "closed", `conn-state is ${JSON.stringify(s)}`);
  });

  const registered =
    (await check("A registers through the UI", async () => {
      idA = await register(pageA, nameA);
      assert(idA > 0, `user id ${idA}`);
    })) &&
    (await check("B registers through the UI", async () => {
      idB = await register(pageB, nameB);
      assert(idB > 0 && idB !== idA, `user id ${idB} (A has ${idA})`);
    }));

  await check("both pages reach conn-state connected", async () => {
    await waitConnected(pageA);
    await waitConnected(pageB);
  });

  await check("a taken username shows the server's error detail", async () => {
    const ctx = await browser.newContext();
    try {
      const p = await ctx.newPage();
      await p.goto(base1, { timeout: TIMEOUT });
      await p.fill("#username", nameA);
      await p.click("#register-btn");
      await p.waitForFunction(
        () => (document.getElementById("error")?.textContent ?? "").trim().length > 0,
        null,
        { timeout: TIMEOUT },
      );
      const uid = await p.locator("#user-id").textContent();
      assert(!uid, `a duplicate registration signed in as ${uid}`);
    } finally {
      await ctx.close();
    }
  });

  if (registered) {
    await check("A starts a conversation with B's id", async () => {
      await pageA.fill("#other-user", String(idB));
      await pageA.click("#start-chat-btn");
      const item = pageA.locator("#groups [data-group-id]").first();
      await item.waitFor({ timeout: TIMEOUT });
      groupId = Number(await item.getAttribute("data-group-id"));
      assert(groupId > 0, `group id ${groupId}`);
    });

    await check("B's group list shows the new conversation (group_joined)", async () => {
      await pageB.locator(`#groups [data-group-id="${groupId}"]`).waitFor({ timeout: TIMEOUT });
    });

    await check("both select the conversation", async () => {
      await pageA.click(`#groups [data-group-id="${groupId}"]`);
      await pageB.click(`#groups [data-group-id="${groupId}"]`);
      await pageA.locator("#message-input:enabled").waitFor({ timeout: TIMEOUT });
      await pageB.locator("#message-input:enabled").waitFor({ timeout: TIMEOUT });
    });

    const hello = `hello from A ${suffix}`;
    await check("A sends a message and sees it", async () => {
      await send(pageA, hello);
      await waitForMessage(pageA, hello);
    });
    await check("B sees A's message live", async () => {
      await waitForMessage(pageB, hello);
    });

    const reply = `reply from B ${suffix}`;
    await check("B replies and A sees it live", async () => {
      await send(pageB, reply);
      await waitForMessage(pageA, reply);
      await waitForMessage(pageB, reply);
    });

    await check("each message shows once, sorted by message_id", async () => {
      for (const page of [pageA, pageB]) {
        const ids = await page.$$eval("#messages .msg", (els) => els.map((e) => Number(e.dataset.messageId)));
        assert(ids.length === 2, `expected 2 messages, found ${ids.length}`);
        assert(new Set(ids).size === ids.length, `duplicate ids ${ids}`);
        assert(ids.every((v, i) => i === 0 || ids[i - 1] < v), `not sorted: ${ids}`);
      }
    });

    for (const payload of XSS_PAYLOADS) {
      await check(`B shows ${JSON.stringify(payload)} as literal text`, async () => {
        await send(pageA, payload);
        await waitForMessage(pageB, payload);
        const text = await messageWithText(pageB, payload).textContent();
        assert(text === payload, `textContent is ${JSON.stringify(text)}`);
      });
    }
    await check("A shows the payloads as literal text too", async () => {
      for (const payload of XSS_PAYLOADS) await waitForMessage(pageA, payload);
    });

    await check("no payload ran: window.__xss is undefined on both pages", async () => {
      await pageB.waitForTimeout(500); // give a broken image's onerror a chance to fire
      for (const [label, page] of [["A", pageA], ["B", pageB]]) {
        const v = await page.evaluate(() => typeof window.__xss);
        assert(v === "undefined", `page ${label}: typeof window.__xss is ${v}`);
      }
    });
    await check("no img or script element inside #messages", async () => {
      for (const [label, page] of [["A", pageA], ["B", pageB]]) {
        const n = await page.locator("#messages img, #messages script").count();
        assert(n === 0, `page ${label} has ${n} injected elements`);
      }
    });

    await check("B's user survives a reload (localStorage)", async () => {
      await pageB.reload({ timeout: TIMEOUT });
      await pageB.waitForFunction(
        (id) => document.getElementById("user-id")?.textContent === String(id),
        idB,
        { timeout: TIMEOUT },
      );
      await waitConnected(pageB);
      await pageB.click(`#groups [data-group-id="${groupId}"]`);
      await waitForMessage(pageB, reply); // history from GET /groups/{id}/messages
      for (const payload of XSS_PAYLOADS) await waitForMessage(pageB, payload);
      await pageB.waitForTimeout(300);
      const v = await pageB.evaluate(() => typeof window.__xss);
      assert(v === "undefined", `after reload, typeof window.__xss is ${v}`);
    });
  } else {
    console.log("skip conversation checks: registration failed");
  }

  await check("no uncaught page errors or dialogs", async () => {
    assert(pageErrors.length === 0, pageErrors.join("; "));
  });

  try {
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await pageB.screenshot({ path: SCREENSHOT });
    console.log(`screenshot: ${SCREENSHOT}`);
  } catch (e) {
    console.log(`screenshot failed: ${e.message}`);
  }

  exitCode = tally.failed === 0 ? 0 : 1;
} catch (e) {
  tally.failed += 1;
  console.log(`FAIL unexpected error: ${String((e && e.message) || e).split("\n")[0]}`);
} finally {
  await browser.close().catch(() => {});
}

console.log(`browser: ${tally.passed} passed, ${tally.failed} failed`);
process.exit(tally.failed === 0 && exitCode === 0 ? 0 : 1);
