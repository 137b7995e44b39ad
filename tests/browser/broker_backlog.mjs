// The deploy-window page's backlog on RabbitMQ, in a real browser: the depth and the age
// of the oldest cart read from the broker's management API, then the catch-up once the
// consumer resumes. Run by tests/admin_page.rs against a cartbus on RabbitMQ whose
// consumer it paused and whose queue holds CARTBUS_EXPECTED_DEPTH carts. The instance is
// one site of several (CARTBUS_EXPECTED_DATACENTER) and holds a partner reply dead-lettered
// `wrong-datacenter`: the heading names the site, the dead letters show that reason.
//
// Environment: CARTBUS_BASE_URL, CARTBUS_ADMIN_TOKEN, CARTBUS_EXPECTED_DEPTH,
// CARTBUS_EXPECTED_DATACENTER,
// CARTBUS_CHROMIUM (default /usr/bin/chromium), CARTBUS_ARTEFACTS (default
// target/artefacts; the screenshot is admin-page-rabbitmq.png).

import { mkdir } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

// RabbitMQ refreshes a queue's figures every 5 s; the page polls every 2 s.
const STEP_MS = 30_000;

function setting(name, fallback) {
  const value = process.env[name] || fallback;
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const base = setting("CARTBUS_BASE_URL");
const token = setting("CARTBUS_ADMIN_TOKEN");
const expected = setting("CARTBUS_EXPECTED_DEPTH");
const datacenter = setting("CARTBUS_EXPECTED_DATACENTER");
const executablePath = setting("CARTBUS_CHROMIUM", "/usr/bin/chromium");
const artefacts = setting("CARTBUS_ARTEFACTS", "target/artefacts");

function check(condition, what) {
  if (!condition) throw new Error(`expected ${what}`);
}

async function main() {
  await mkdir(artefacts, { recursive: true });
  const browser = await chromium.launch({ executablePath, headless: true });
  const problems = [];
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (message) => message.type() === "error" && problems.push(message.text()));
  page.on("pageerror", (error) => problems.push(error.message));
  try {
    console.log("- sign in");
    await page.goto(`${base}/admin`);
    await page.fill("#token", token);
    await page.fill("#actor", "browser-test");
    await page.click("#login-form button[type=submit]");
    await page.locator("#console").waitFor({ state: "visible", timeout: STEP_MS });

    console.log(`- the backlog as RabbitMQ reports it: ${expected} waiting, an age, no ETA while paused`);
    await page.locator("#backlog-depth", { hasText: new RegExp(`^${expected}$`) }).waitFor({ timeout: STEP_MS });
    // RabbitMQ may report the depth one stats refresh (5 s) before the head message's
    // timestamp: wait for the age as for the depth.
    await page.locator("#backlog-oldest", { hasText: /\d/ }).waitFor({ timeout: STEP_MS });
    const oldest = ((await page.locator("#backlog-oldest").textContent()) || "").trim();
    check(/\d/.test(oldest) && !/not reported/.test(oldest), `an age for the oldest cart, got ${oldest}`);
    await page.locator("#backlog-eta", { hasText: "paused" }).waitFor({ timeout: STEP_MS });

    console.log(`- the site in the heading, and a reply for another site among the dead letters`);
    await page.locator("#datacenter", { hasText: `datacenter ${datacenter}` }).waitFor({ timeout: STEP_MS });
    await page.locator('#dead-counts [data-reason="wrong-datacenter"]', { hasText: "1" }).waitFor({ timeout: STEP_MS });
    await page.screenshot({ path: path.join(artefacts, "admin-page-rabbitmq.png"), fullPage: true });

    console.log("- resumed: RabbitMQ's depth falls to 0 and the page says caught up");
    const resumed = await fetch(`${base}/v1/admin/consumer/resume`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", "X-Cartbus-Actor": "browser-test" },
      body: JSON.stringify({ reason: "backlog on RabbitMQ (browser test)" }),
    });
    check(resumed.status === 200, `resume answered 200, got ${resumed.status}`);
    await page.locator("#backlog-depth", { hasText: /^0$/ }).waitFor({ timeout: STEP_MS });
    await page.locator("#backlog-eta", { hasText: "caught up" }).waitFor({ timeout: STEP_MS });
    await page.screenshot({ path: path.join(artefacts, "admin-page-rabbitmq-drained.png"), fullPage: true });

    check(problems.length === 0, `no console or page errors:\n${problems.join("\n")}`);
    console.log("- passed");
  } catch (error) {
    await page.screenshot({ path: path.join(artefacts, "admin-page-rabbitmq-failed.png"), fullPage: true }).catch(() => {});
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
