// Shared helpers of the browser tests: checks with a pass/fail tally, UI actions on the
// embedded web client, and the Chromium launch with the flags this machine needs.

import { chromium } from "playwright-core";

export const TIMEOUT = 20_000;

export const tally = { passed: 0, failed: 0 };

export async function check(name, fn) {
  try {
    await fn();
    tally.passed += 1;
    console.log(`ok   ${name}`);
    return true;
  } catch (e) {
    tally.failed += 1;
    const why = String((e && e.message) || e).split("\n")[0];
    console.log(`FAIL ${name}: ${why}`);
    return false;
  }
}

export function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

export async function connState(page) {
  return (await page.locator("#conn-state").textContent()) ?? "";
}

export async function waitConnected(page) {
  await page.waitForFunction(
    () => document.getElementById("conn-state")?.textContent === "connected",
    null,
    { timeout: TIMEOUT },
  );
}

export async function register(page, username) {
  await page.fill("#username", username);
  await page.click("#register-btn");
  await page.waitForFunction(
    () => /^\d+$/.test(document.getElementById("user-id")?.textContent ?? ""),
    null,
    { timeout: TIMEOUT },
  );
  return Number(await page.locator("#user-id").textContent());
}

// The message element in #messages whose .content text is exactly `text`.
export function messageWithText(page, text) {
  return page.locator("#messages .msg .content").filter({ hasText: text }).last();
}

export async function waitForMessage(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages .msg .content")].some((n) => n.textContent === t),
    text,
    { timeout: TIMEOUT },
  );
}

export async function send(page, text) {
  await page.fill("#message-input", text);
  await page.click("#send-btn");
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}
