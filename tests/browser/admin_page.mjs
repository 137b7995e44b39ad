// The deploy-window page in a real browser, as an operator uses it during a deploy.
// Run by tests/admin_page.rs against a cartbus it started; playwright-core drives Debian's
// chromium (no browser is downloaded). Every wait polls with a deadline; any console error
// or page error fails the run. Exits 0 when every step passed.
//
// Environment: CARTBUS_BASE_URL, CARTBUS_ADMIN_TOKEN, CARTBUS_INSTANCE,
// CARTBUS_DEAD_LETTER_ID and CARTBUS_DEAD_LETTER_CART_ID (a dead letter whose resubmit
// creates an order), CARTBUS_FAILING_WEBHOOK (a webhook endpoint marked failing),
// CARTBUS_CHROMIUM (default /usr/bin/chromium), CARTBUS_ARTEFACTS (the
// folder for screenshots, default target/artefacts).

import { mkdir } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import path from "node:path";
import { chromium } from "playwright-core";

const STEP_MS = 30_000;

function setting(name, fallback) {
  const value = process.env[name] || fallback;
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const base = setting("CARTBUS_BASE_URL");
const token = setting("CARTBUS_ADMIN_TOKEN");
const instance = setting("CARTBUS_INSTANCE");
const deadLetterId = setting("CARTBUS_DEAD_LETTER_ID");
const cartId = setting("CARTBUS_DEAD_LETTER_CART_ID");
const failingWebhook = setting("CARTBUS_FAILING_WEBHOOK");
const smokedVersion = setting("CARTBUS_SMOKED_VERSION");
const executablePath = setting("CARTBUS_CHROMIUM", "/usr/bin/chromium");
const artefacts = setting("CARTBUS_ARTEFACTS", "target/artefacts");

function step(what) {
  console.log(`- ${what}`);
}

function check(condition, what) {
  if (!condition) throw new Error(`expected ${what}`);
}

// Polls `probe` until it returns something truthy or the step's deadline passes.
async function until(what, probe) {
  const deadline = Date.now() + STEP_MS;
  let wait = 50;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 250);
  }
}

async function checkoutStatus() {
  const response = await fetch(`${base}/v1/checkouts/${cartId}`);
  return response.status === 200 ? (await response.json()).status : `HTTP ${response.status}`;
}

// A valid cart, queued through the public API while consumers are paused: the backlog.
async function queueCart(i) {
  const cart = {
    cart_id: randomUUID(),
    customer: { id: `cust-${i}`, name: "Grace Hopper", email: "grace@example.com", phone: "+44 20 7946 0001" },
    shipping_address: { line1: "1 Compiler Row", line2: null, city: "London", region: "LND", postal_code: "EC1A 1AA", country: "GB" },
    currency: "GBP",
    lines: [{ sku: "SKU-1", name: "Manual", quantity: 1, unit_price: 1999 }],
    total: 1999,
  };
  const response = await fetch(`${base}/v1/checkouts`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(cart),
  });
  check(response.status === 202, `a queued checkout (202), got ${response.status}`);
}

const text = async (locator) => (await locator.textContent()) || "";

// Resubmit asks for an optional reason and a confirmation.
async function resubmit(page, row, reason) {
  await row.locator("button[data-action=resubmit]").click();
  const dialog = page.locator("#resubmit-dialog");
  await dialog.waitFor({ state: "visible", timeout: STEP_MS });
  await page.fill("#resubmit-reason", reason);
  await dialog.locator("button[type=submit]").click();
  await dialog.waitFor({ state: "hidden", timeout: STEP_MS });
}

async function main() {
  await mkdir(artefacts, { recursive: true });
  const browser = await chromium.launch({ executablePath, headless: true });
  const problems = [];
  // The browser logs every 4xx answer as a console error: one is expected only in the
  // step that provokes it (a wrong token, a resubmit while paused).
  let expectedStatus = null;
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    const expected = expectedStatus && message.text().includes(`status of ${expectedStatus}`);
    if (!expected) problems.push(`console error: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  try {
    step("open /admin: strict headers, the sign-in form");
    const response = await page.goto(`${base}/admin`);
    check(response && response.status() === 200, "/admin answers 200");
    const headers = response.headers();
    check(/default-src 'self'/.test(headers["content-security-policy"] || ""), "a CSP of default-src 'self'");
    check(headers["cache-control"] === "no-store", "Cache-Control: no-store");
    await page.locator("#login").waitFor({ state: "visible", timeout: STEP_MS });

    step("a wrong token is refused with a visible message");
    expectedStatus = 401;
    await page.fill("#token", "not-the-admin-token");
    await page.click("#login-form button[type=submit]");
    await page.locator("#login-message", { hasText: "refused" }).waitFor({ timeout: STEP_MS });
    check(await page.locator("#console").isHidden(), "nothing shown after a refused token");
    expectedStatus = null;

    step("sign in with the right token");
    await page.fill("#token", token);
    await page.fill("#actor", "browser-test");
    await page.click("#login-form button[type=submit]");
    await page.locator("#console").waitFor({ state: "visible", timeout: STEP_MS });
    const kept = await page.evaluate(() => ({
      url: location.href,
      local: localStorage.length,
      session: sessionStorage.length,
      cookie: document.cookie,
      field: document.querySelector("#token").value,
    }));
    check(!kept.url.includes(token), "the token not in the URL");
    check(kept.local === 0 && kept.session === 0 && kept.cookie === "", "the token not stored in the browser");
    check(kept.field === "", "the token field cleared after signing in");

    step("an instance and the backlog");
    const row = page.locator(`#instances tr[data-instance="${instance}"]`);
    await row.locator("td", { hasText: "running" }).waitFor({ timeout: STEP_MS });
    await page.locator("#switch-state[data-state=running]").waitFor({ timeout: STEP_MS });
    check(/^\d+$/.test((await text(page.locator("#backlog-depth"))).trim()), "a backlog depth");
    check(/\/s$/.test(await text(page.locator("#backlog-intake"))), "an intake rate");
    check((await text(page.locator("#backlog-eta"))).length > 0, "a catch-up estimate");
    await page.locator(`#dead-letters tr[data-dead-letter="${deadLetterId}"]`).waitFor({ timeout: STEP_MS });
    await page.locator('#dead-counts [data-reason="max-attempts"]').waitFor({ timeout: STEP_MS });

    step("the last smoke run of this version, passed");
    const smoke = page.locator(`#smoke tr[data-version="${smokedVersion}"]`);
    await smoke.locator("td", { hasText: "passed" }).waitFor({ timeout: STEP_MS });
    check(/would-create-order/.test(await text(smoke.locator("td.detail"))), "its outcomes");

    step("a failing webhook endpoint is listed with why and what waits for it");
    const hook = page.locator(`#webhooks tr[data-endpoint="${failingWebhook}"][data-state=failing]`);
    await hook.waitFor({ timeout: STEP_MS });
    check(/refused|connect|error/i.test(await text(hook.locator("td.detail"))), "the reason it is failing");
    check(/^[1-9]\d*$/.test((await text(hook.locator("td.num"))).trim()), "its pending events counted");

    step("pause asks for a reason and a confirmation, then the instances drain");
    await page.click("#pause");
    const pauseDialog = page.locator("#pause-dialog");
    await pauseDialog.waitFor({ state: "visible", timeout: STEP_MS });
    await pauseDialog.locator("button[type=submit]").click();
    await pauseDialog.locator(".message", { hasText: "Say why" }).waitFor({ timeout: STEP_MS });
    check(await page.locator("#switch-state[data-state=running]").isVisible(), "no pause without a reason");
    await page.fill("#pause-reason", "deploy 2.0.0 (browser test)");
    await pauseDialog.locator("button[type=submit]").click();
    await pauseDialog.waitFor({ state: "hidden", timeout: STEP_MS });
    await page.locator("#switch-state[data-state=drained]", { hasText: "drained" }).waitFor({ timeout: STEP_MS });
    await row.locator("td", { hasText: "paused" }).waitFor({ timeout: STEP_MS });
    await page.locator("#switch-reason", { hasText: "deploy 2.0.0 (browser test)" }).waitFor({ timeout: STEP_MS });

    step("checkouts queue up while drained");
    for (let i = 0; i < 3; i++) await queueCart(i);
    await page.locator("#backlog-depth", { hasText: /^3$/ }).waitFor({ timeout: STEP_MS });
    await page.locator("#history td", { hasText: "deploy 2.0.0 (browser test)" }).waitFor({ timeout: STEP_MS });

    step("dry run while drained: says what would happen, changes nothing");
    const letter = () => page.locator(`#dead-letters tr[data-dead-letter="${deadLetterId}"]`);
    await letter().locator("button[data-action=dry-run]").click();
    await letter().locator(".outcome", { hasText: "would-create-order" }).waitFor({ timeout: STEP_MS });
    const afterDryRun = await checkoutStatus();
    check(afterDryRun !== "ordered", `no order after a dry run (checkout status: ${afterDryRun})`);
    await page.screenshot({ path: path.join(artefacts, "admin-page-drained.png"), fullPage: true });

    step("resubmit while drained: refused, and the page says why");
    expectedStatus = 409;
    await resubmit(page, letter(), "too early (browser test)");
    await letter().locator(".outcome .bad", { hasText: "resume first" }).waitFor({ timeout: STEP_MS });
    expectedStatus = null;
    check((await checkoutStatus()) !== "ordered", "no order from a refused resubmit");

    step("resume asks for the version and a confirmation; the backlog drains");
    await page.click("#resume");
    const resumeDialog = page.locator("#resume-dialog");
    await resumeDialog.waitFor({ state: "visible", timeout: STEP_MS });
    await page.fill("#resume-reason", "deploy 2.0.0 done (browser test)");
    await resumeDialog.locator("button[type=submit]").click();
    await resumeDialog.waitFor({ state: "hidden", timeout: STEP_MS });
    await page.locator("#switch-state[data-state=running]").waitFor({ timeout: STEP_MS });
    await page.locator("#backlog-depth", { hasText: /^0$/ }).waitFor({ timeout: STEP_MS });

    step("resubmit: creates the order, shown inline");
    await resubmit(page, letter(), "orders database back (browser test)");
    await letter().locator(".outcome", { hasText: /\bcreated-order\b/ }).waitFor({ timeout: STEP_MS });
    await until("the resubmitted cart ordered", async () => (await checkoutStatus()) === "ordered");
    // The next refresh moves it out of the open list; its outcome stays in view.
    await page.locator(".group.done", { hasText: "created-order" }).waitFor({ timeout: STEP_MS });

    await page.screenshot({ path: path.join(artefacts, "admin-page.png"), fullPage: true });

    step("a token refused mid-session (rotated) sends the operator back to sign in");
    // The only faked answer here: cartbus cannot change its token while it runs.
    expectedStatus = 401;
    await page.route("**/v1/admin/consumer", (route) =>
      route.fulfill({
        status: 401,
        contentType: "application/problem+json",
        body: JSON.stringify({ type: "/problems/unauthorized", title: "Missing or wrong credentials", status: 401, detail: "missing or wrong admin token" }),
      }),
    );
    await page.locator("#login-message", { hasText: "may have been changed" }).waitFor({ timeout: STEP_MS });
    check(await page.locator("#console").isHidden(), "nothing shown after the token was refused");
    expectedStatus = null;

    check(problems.length === 0, `no console or page errors:\n${problems.join("\n")}`);
    step("passed");
  } catch (error) {
    await page.screenshot({ path: path.join(artefacts, "admin-page-failed.png"), fullPage: true }).catch(() => {});
    if (problems.length) console.error(`console and page errors:\n${problems.join("\n")}`);
    throw error;
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
