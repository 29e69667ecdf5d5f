// Browser test of the web client as two people use it: names, not numbers.
//
//   node tests/browser/names.mjs <baseUrlNode1> <baseUrlNode2>
//
// Page A runs on node 1 and page B on node 2. Through the UI only: both sign up; A first
// tries a name nobody has and gets a clear error, then starts the conversation by B's
// USERNAME (keyboard only: Enter). Each page must show the other's name in the conversation
// list, in the title and on the other's messages; B sees an unread count until it opens the
// conversation; the signed-in hint is not the signed-out one; every input has a label. A
// third page signs in with B's id (the original flow) and is shown B's name. A larger group
// is titled by its name. Prints one line per check, then `browser-names: N passed, M failed`,
// and exits non-zero on any failure. Screenshots of both pages and of the error are saved
// to target/browser-names-*.png.

import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { TIMEOUT, assert, check, launch, register, tally, waitConnected, waitForMessage } from "./lib.mjs";

const [base1, base2] = process.argv.slice(2);
if (!base1 || !base2) {
  console.error("usage: node tests/browser/names.mjs <baseUrlNode1> <baseUrlNode2>");
  process.exit(64);
}

const shot = (name) => resolve(process.cwd(), `target/browser-names-${name}.png`);
const SIGNED_OUT_HINT = "Register or use a user id to start.";

async function text(page, selector) {
  return ((await page.locator(selector).first().textContent()) ?? "").trim();
}

// Waits until `selector`'s text is exactly `want`, and fails with what it was instead.
async function waitText(page, selector, want) {
  try {
    await page.waitForFunction(
      ([sel, w]) => (document.querySelector(sel)?.textContent ?? "").trim() === w,
      [selector, want],
      { timeout: TIMEOUT },
    );
  } catch (e) {
    throw new Error(`${selector} shows ${JSON.stringify(await text(page, selector))}, not ${JSON.stringify(want)}`);
  }
}

// The sender names shown on the messages whose content is `content`.
async function sendersOf(page, content) {
  return page.$$eval(
    "#messages .msg",
    (els, c) => els.filter((e) => e.querySelector(".content")?.textContent === c)
      .map((e) => e.querySelector(".sender")?.textContent ?? ""),
    content,
  );
}

async function screenshot(page, name) {
  const path = shot(name);
  try {
    mkdirSync(dirname(path), { recursive: true });
    await page.screenshot({ path });
    console.log(`screenshot: ${path}`);
  } catch (e) {
    console.log(`screenshot failed: ${e.message}`);
  }
}

const browser = await launch();

let exitCode = 1;
try {
  const pageErrors = [];
  // A page in its own browser context (own localStorage), errors and dialogs recorded.
  const open = async (base, label) => {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    ctx.setDefaultTimeout(TIMEOUT);
    const page = await ctx.newPage();
    page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
    page.on("dialog", (d) => { pageErrors.push(`${label}: unexpected dialog ${d.message()}`); d.dismiss(); });
    const res = await page.goto(base, { timeout: TIMEOUT });
    assert(res && res.ok(), `GET / answered ${res && res.status()}`);
    return page;
  };
  const pageA = await open(base1, "A");
  const pageB = await open(base2, "B");

  const suffix = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  const nameA = `Ann_${suffix}`;
  const nameB = `Bob_${suffix}`;
  let idA = 0;
  let idB = 0;
  let groupId = 0;

  await check("every input and the message box has a label", async () => {
    const unlabeled = await pageA.$$eval("input, textarea", (els) =>
      els.filter((e) => e.labels.length === 0 && !e.getAttribute("aria-label")).map((e) => e.id));
    assert(unlabeled.length === 0, `no label: ${unlabeled.join(", ")}`);
  });

  const signedUp =
    (await check("both sign up through the UI", async () => {
      idA = await register(pageA, nameA);
      idB = await register(pageB, nameB);
      assert(idA > 0 && idB > 0 && idA !== idB, `ids ${idA}, ${idB}`);
      await waitConnected(pageA);
      await waitConnected(pageB);
    }));

  if (signedUp) {
    await check("signed in, each page shows its own name and a signed-in hint", async () => {
      await waitText(pageA, "#me-name", nameA);
      await waitText(pageB, "#me-name", nameB);
      for (const page of [pageA, pageB]) {
        const hint = await text(page, "#messages .empty");
        assert(hint && hint !== SIGNED_OUT_HINT, `hint is ${JSON.stringify(hint)}`);
      }
    });

    await check("after sign-up the focus is on the username of the person to talk to", async () => {
      const focused = await pageA.evaluate(() => document.activeElement?.id);
      assert(focused === "other-username", `focus is on #${focused}`);
    });

    const ghost = `nobody_${suffix}`;
    await check("an unknown username gives a clear error naming it, and no conversation", async () => {
      await pageA.fill("#other-username", ghost);
      await pageA.press("#other-username", "Enter");
      await pageA.waitForFunction(
        (g) => (document.getElementById("error")?.textContent ?? "").includes(g),
        ghost,
        { timeout: TIMEOUT },
      );
      const error = await text(pageA, "#error");
      assert(/no user/i.test(error), `error is ${JSON.stringify(error)}`);
      const invalid = await pageA.getAttribute("#other-username", "aria-invalid");
      assert(invalid === "true", `aria-invalid is ${invalid}`);
      assert((await pageA.locator("#groups [data-group-id]").count()) === 0, "a conversation was created");
    });
    await screenshot(pageA, "error");

    await check("A starts the conversation by B's username, with the keyboard", async () => {
      await pageA.fill("#other-username", nameB);
      await pageA.press("#other-username", "Enter");
      const item = pageA.locator("#groups [data-group-id]").first();
      await item.waitFor({ timeout: TIMEOUT });
      groupId = Number(await item.getAttribute("data-group-id"));
      assert(groupId > 0, `group id ${groupId}`);
      await pageA.locator("#message-input:enabled").waitFor({ timeout: TIMEOUT });
      const error = await text(pageA, "#error");
      assert(!error.includes(ghost), `the old error is still shown: ${JSON.stringify(error)}`);
    });

    const conv = `#groups [data-group-id="${groupId}"]`;
    await check("A's list and title name B", async () => {
      await waitText(pageA, `${conv} .g-name`, nameB);
      await waitText(pageA, "#channel-title", nameB);
    });
    await check("B's list names A (group_joined), before B opens it", async () => {
      await pageB.locator(conv).waitFor({ timeout: TIMEOUT });
      await waitText(pageB, `${conv} .g-name`, nameA);
    });

    const hello = `hello from A ${suffix}`;
    await check("A sends with Enter, and sees its own name on the message", async () => {
      assert((await pageA.evaluate(() => document.activeElement?.id)) === "message-input", "focus not in the message box");
      await pageA.keyboard.type(hello);
      await pageA.keyboard.press("Enter");
      await waitForMessage(pageA, hello);
      const senders = await sendersOf(pageA, hello);
      assert(senders.length === 1 && senders[0] === nameA, `senders ${JSON.stringify(senders)}`);
    });
    await check("B sees an unread count of 1 on the conversation", async () => {
      await waitText(pageB, `${conv} .unread`, "1");
      assert(await pageB.locator(`${conv} .unread`).isVisible(), "badge hidden");
    });
    await check("B opens it: the count clears, the title names A", async () => {
      await pageB.click(conv);
      await waitText(pageB, "#channel-title", nameA);
      await pageB.locator(`${conv} .unread`).waitFor({ state: "hidden", timeout: TIMEOUT });
    });
    await check("B's page shows A's name on A's message", async () => {
      await waitForMessage(pageB, hello);
      const senders = await sendersOf(pageB, hello);
      assert(senders.length === 1 && senders[0] === nameA, `senders ${JSON.stringify(senders)}`);
    });

    const reply = `reply from B ${suffix}`;
    await check("B replies; A's page shows B's name on it", async () => {
      await pageB.fill("#message-input", reply);
      await pageB.press("#message-input", "Enter");
      await waitForMessage(pageA, reply);
      const senders = await sendersOf(pageA, reply);
      assert(senders.length === 1 && senders[0] === nameB, `senders ${JSON.stringify(senders)}`);
    });

    await check("no page shows a bare `user N` label", async () => {
      for (const [label, page] of [["A", pageA], ["B", pageB]]) {
        const shown = await page.$$eval("#groups .g-name, #channel-title, #messages .sender",
          (els) => els.map((e) => e.textContent));
        assert(!shown.some((t) => /^user \d+/.test(t ?? "")), `page ${label} shows ${JSON.stringify(shown)}`);
      }
    });

    await check("signing in with B's user id (the original flow) shows B's name and A's", async () => {
      const pageC = await open(base1, "C");
      await pageC.fill("#login-user-id", String(idB));
      await pageC.click("#use-id-btn");
      await waitText(pageC, "#user-id", String(idB));
      await waitText(pageC, "#me-name", nameB);
      await waitText(pageC, `${conv} .g-name`, nameA);
      const hint = await text(pageC, "#messages .empty");
      assert(hint && hint !== SIGNED_OUT_HINT, `hint is ${JSON.stringify(hint)}`);
    });

    await check("a larger group is titled by its name and lists its members", async () => {
      const res = await fetch(`${base1}/register`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ username: `Cy_${suffix}` }),
      });
      const idC = (await res.json()).user_id;
      await pageA.fill("#other-user", `${idB},${idC}`);
      await pageA.click("#start-chat-btn");
      const want = `${nameA} & ${nameB}, Cy_${suffix}`;
      await waitText(pageA, "#channel-title", want);
      const members = await text(pageA, "#channel-members");
      assert(members.includes(nameB) && members.includes(`Cy_${suffix}`), `members line ${JSON.stringify(members)}`);
      await pageA.click(conv); // back to the pair, for the screenshot
      await waitText(pageA, "#channel-title", nameB);
    });
  } else {
    console.log("skip conversation checks: sign-up failed");
  }

  await check("no uncaught page errors or dialogs", async () => {
    assert(pageErrors.length === 0, pageErrors.join("; "));
  });

  await screenshot(pageA, "a");
  await screenshot(pageB, "b");
  exitCode = tally.failed === 0 ? 0 : 1;
} catch (e) {
  tally.failed += 1;
  console.log(`FAIL unexpected error: ${String((e && e.message) || e).split("\n")[0]}`);
} finally {
  await browser.close().catch(() => {});
}

console.log(`browser-names: ${tally.passed} passed, ${tally.failed} failed`);
process.exit(tally.failed === 0 && exitCode === 0 ? 0 : 1);
