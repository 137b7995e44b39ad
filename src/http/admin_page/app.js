// The deploy-window page: polls the admin API with the token the operator typed in.
// The token lives in one variable of this closure only: never in storage, a cookie or a URL.
"use strict";

(() => {
  const POLL_MS = 2000;
  // Lists (dead letters, payments, outbox, history) change slowly: every fifth poll.
  const LISTS_EVERY = 5;
  const CHART_WINDOW_MS = 5 * 60 * 1000;
  // The chart spans what it has seen (since sign-in), at least this, at most the window.
  const CHART_MIN_SPAN_MS = 30 * 1000;
  const DEAD_LETTER_PAGE = 200;

  let token = null;
  let actor = "admin page";
  // Bumped on every sign-in and sign-out, so that answers to an older session are dropped.
  let session = 0;
  let timer = null;
  let polls = 0;
  let lastStatus = null;
  // What the last refresh of the lists could not read (shown until a refresh can).
  let listTrouble = null;
  const samples = [];
  // What Dry run / Resubmit said, by dead letter id, kept across refreshes.
  const outcomes = new Map();
  const pending = new Set();
  let resubmitTarget = null;

  const $ = (selector) => document.querySelector(selector);

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // ---- talking to the admin API -------------------------------------------------------

  async function api(method, path, body) {
    const mine = session;
    const headers = {
      Accept: "application/json, application/problem+json",
      Authorization: `Bearer ${token}`,
      "X-Cartbus-Actor": actor,
    };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "cartbus cannot be reached (network error)");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (mine !== session) {
      throw new ApiError(0, "signed out");
    }
    if (response.status === 401) {
      signOut(
        $("#console").hidden
          ? "That token was refused. Check CARTBUS_ADMIN_TOKEN and try again."
          : "The admin token was refused (it may have been changed). Sign in again.",
      );
      throw new ApiError(401, "the admin token was refused");
    }
    if (!response.ok) {
      throw new ApiError(response.status, problemDetail(response, data));
    }
    return { status: response.status, data };
  }

  function problemDetail(response, data) {
    if (response.status === 429) {
      const seconds = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      return Number.isFinite(seconds)
        ? `Held off for ${seconds} s after too many wrong admin tokens; try again then.`
        : "Held off after too many wrong admin tokens; try again later.";
    }
    if (data && typeof data === "object") {
      const fields = Array.isArray(data.errors)
        ? data.errors.map((e) => `${e.pointer || "body"}: ${e.detail}`)
        : [];
      const main = data.detail || data.title || `HTTP ${response.status}`;
      return fields.length ? `${main} (${fields.join("; ")})` : main;
    }
    return `HTTP ${response.status} ${response.statusText}`;
  }

  // ---- small DOM helpers (text only: nothing from the API is parsed as HTML) ------------

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function fillRows(table, rows, columns, empty) {
    const body = table.tBodies[0];
    if (rows.length === 0) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: columns, class: "empty" }, empty)));
    } else {
      body.replaceChildren(...rows);
    }
  }

  function facts(list, pairs) {
    list.replaceChildren(
      ...pairs.flatMap(([term, value, id]) => [
        el("dt", {}, term),
        el("dd", { id }, value),
      ]),
    );
  }

  // ---- formatting -----------------------------------------------------------------------

  function when(iso) {
    if (!iso) return "—";
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return iso;
    return at.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function ago(iso) {
    const at = Date.parse(iso);
    if (Number.isNaN(at)) return "—";
    const seconds = Math.max(0, (Date.now() - at) / 1000);
    return seconds < 1.5 ? "just now" : `${duration(seconds)} ago`;
  }

  function duration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function rate(perSecond) {
    return `${(perSecond || 0).toFixed(1)} /s`;
  }

  function money(minor, currency) {
    try {
      const format = new Intl.NumberFormat("en-GB", { style: "currency", currency });
      const digits = format.resolvedOptions().maximumFractionDigits;
      return format.format(minor / 10 ** digits);
    } catch (e) {
      return `${minor} ${currency} (minor units)`;
    }
  }

  function withTitle(text, title) {
    return el("span", { title }, text);
  }

  // ---- signing in and out ---------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const input = $("#token");
    const message = $("#login-message");
    const typed = input.value.trim();
    if (!typed) {
      message.textContent = "Type the admin token first.";
      return;
    }
    token = typed;
    actor = printable($("#actor").value) || "admin page";
    session += 1;
    message.textContent = "Checking the token…";
    try {
      await refresh(true);
    } catch (e) {
      if (e.status === 401) return; // signOut has said so
      token = null;
      message.textContent =
        e.status === 404
          ? "The admin API is off on this instance: CARTBUS_ADMIN_TOKEN is not set there."
          : `Cannot sign in: ${e.message}`;
      return;
    }
    input.value = "";
    message.textContent = "";
    $("#login").hidden = true;
    $("#console").hidden = false;
    $("#sign-out").hidden = false;
    drawChart(); // now that it has a width
    schedule();
  }

  // The actor goes in a header: keep it to printable ASCII.
  function printable(text) {
    return text.replace(/[^\x20-\x7e]/g, "").trim().slice(0, 100);
  }

  function signOut(why) {
    token = null;
    session += 1;
    clearTimeout(timer);
    timer = null;
    lastStatus = null;
    listTrouble = null;
    samples.length = 0;
    outcomes.clear();
    pending.clear();
    for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
    $("#console").hidden = true;
    $("#sign-out").hidden = true;
    $("#login").hidden = false;
    $("#updated").textContent = "";
    $("#login-message").textContent = why || "Signed out.";
    $("#token").focus();
  }

  // ---- polling ----------------------------------------------------------------------------

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      try {
        await refresh(polls % LISTS_EVERY === 0);
      } catch (e) {
        // Shown in the banner by refresh; a 401 has signed out.
      }
      if (token) schedule();
    }, POLL_MS);
  }

  // Reads the switch (and, when `lists`, everything else) and redraws. Throws when the
  // switch cannot be read, so that signing in can tell a wrong token from a good one.
  async function refresh(lists) {
    polls += 1;
    const mine = session;
    let status;
    try {
      status = (await api("GET", "/v1/admin/consumer")).data;
    } catch (e) {
      if (mine === session && e.status !== 401) showBanner(`Status not refreshed: ${e.message}; trying again every 2 s`);
      throw e;
    }
    lastStatus = status;
    const site = $("#datacenter");
    site.hidden = !status.datacenter;
    site.textContent = status.datacenter ? `datacenter ${status.datacenter}` : "";
    record(status.backlog);
    renderSwitch(status);
    renderBacklog(status);
    renderInstances(status.instances || []);
    if (lists) {
      const problems = [];
      const results = await Promise.allSettled([
        api("GET", "/v1/admin/consumer/history?limit=20").then((r) => renderHistory(r.data)),
        api("GET", `/v1/admin/dead-letters?limit=${DEAD_LETTER_PAGE}`).then((r) => renderDeadLetters(r.data)),
        api("GET", "/v1/admin/payments?state=unknown").then((r) => renderPayments(r.data.items || [])),
        api("GET", "/v1/admin/outbox?status=critical_error").then((r) => renderOutbox(r.data)),
        api("GET", "/v1/admin/webhooks").then((r) => renderWebhooks(r.data.items || [])),
        api("GET", "/v1/admin/smoke").then((r) => renderSmoke(r.data.items || [])),
      ]);
      const names = ["switch history", "dead letters", "payments", "outbox", "webhooks", "smoke runs"];
      results.forEach((result, i) => {
        if (result.status === "rejected" && result.reason.status !== 401) {
          problems.push(`${names[i]}: ${result.reason.message}`);
        }
      });
      listTrouble = problems.length ? `Not refreshed — ${problems.join(" · ")}` : null;
    }
    if (mine !== session) return;
    showBanner(listTrouble);
    $("#updated").textContent = `Updated ${when(new Date().toISOString())}`;
  }

  function showBanner(text) {
    const banner = $("#banner");
    banner.hidden = !text;
    banner.textContent = text || "";
  }

  // ---- the drain switch ---------------------------------------------------------------

  function renderSwitch(status) {
    const paused = status.desired === "paused";
    const state = !paused ? "running" : status.drained ? "drained" : "draining";
    const label = { running: "running", draining: "paused · draining", drained: "drained" }[state];
    const node = $("#switch-state");
    node.dataset.state = state;
    node.textContent = label;
    const busy = (status.instances || []).filter((i) => i.in_flight > 0 || i.state === "running" || i.state === "pausing");
    $("#switch-explain").textContent = {
      running: `${status.active_version ? `Version ${status.active_version}` : "Every version"} takes carts off the queue and writes orders. Pause before a deploy.`,
      draining: `Paused; waiting for ${busy.length || "some"} instance(s) to finish what they hold. Do not deploy yet.`,
      drained: "Nothing consumes and nothing is in flight: safe to deploy. Checkouts keep queuing.",
    }[state];
    facts($("#switch-facts"), [
      ["Desired", status.desired],
      ["Active version", status.active_version || "— (none named yet)"],
      ["Reason", status.reason || "—", "switch-reason"],
      ["Changed", `${when(status.changed_at)} by ${status.changed_by}`],
      ["Lifts itself at", status.until ? when(status.until) : "— (until resumed)"],
      ["Revision", status.revision],
    ]);
    $("#pause").disabled = paused;
  }

  // ---- backlog and the rates chart ------------------------------------------------------

  function record(backlog) {
    const now = Date.now();
    samples.push({ at: now, intake: backlog.intake_per_s || 0, drain: backlog.drain_per_s || 0 });
    while (samples.length && now - samples[0].at > CHART_WINDOW_MS) samples.shift();
  }

  function renderBacklog(status) {
    const b = status.backlog;
    const paused = status.desired === "paused";
    // AMQP 1.0 has no way to ask a broker how many messages wait: cartbus asks RabbitMQ's
    // management API when CARTBUS_BROKER_MANAGEMENT_URL is set.
    const notReported = () => el("span", { class: "muted" }, "not reported (set CARTBUS_BROKER_MANAGEMENT_URL)");
    // The broker's last answer, when its latest read failed.
    const stale = (shown) => b.depth_stale ? el("span", {}, shown, " ", el("span", { class: "muted", id: "backlog-stale" }, "(stale: the broker did not answer)")) : shown;
    let oldest;
    if (b.depth === null || b.depth === undefined) oldest = notReported();
    else if (b.depth === 0) oldest = "nothing waiting";
    else oldest = b.oldest_age_seconds === null ? "—" : duration(b.oldest_age_seconds);
    let eta;
    if (b.catch_up_eta_seconds === 0) eta = "caught up";
    else if (b.catch_up_eta_seconds !== null && b.catch_up_eta_seconds !== undefined) eta = `about ${duration(b.catch_up_eta_seconds)}`;
    else if (paused) eta = "not draining: paused";
    else if (b.depth === null || b.depth === undefined) eta = "unknown (depth not reported)";
    else eta = "not shrinking: intake ≥ drain";
    facts($("#backlog"), [
      ["Waiting", b.depth === null || b.depth === undefined ? notReported() : stale(b.depth.toLocaleString("en-GB")), "backlog-depth"],
      ["Oldest waiting", oldest, "backlog-oldest"],
      ["Intake", rate(b.intake_per_s), "backlog-intake"],
      ["Drain", rate(b.drain_per_s), "backlog-drain"],
      ["Catch-up ETA", eta, "backlog-eta"],
    ]);
    drawChart();
  }

  function drawChart() {
    const svg = $("#rates-chart");
    const ns = "http://www.w3.org/2000/svg";
    const shape = (tag, attributes, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
      if (text !== undefined) node.textContent = text;
      return node;
    };
    // Draw in the element's own pixels, so that text is never stretched.
    const width = Math.max(300, Math.round(svg.getBoundingClientRect().width) || 600);
    const [height, left, top, bottom] = [160, 44, 10, 20];
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const plotHeight = height - top - bottom;
    const peak = Math.max(1, ...samples.map((s) => Math.max(s.intake, s.drain)));
    const scale = niceCeiling(peak);
    const now = Date.now();
    const span = Math.min(CHART_WINDOW_MS, Math.max(CHART_MIN_SPAN_MS, samples.length ? now - samples[0].at : 0));
    const x = (at) => left + ((width - left - 4) * (span - (now - at))) / span;
    const y = (v) => top + plotHeight - (plotHeight * v) / scale;
    const parts = [];
    for (const v of [0, scale / 2, scale]) {
      parts.push(shape("line", { x1: left, x2: width - 4, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(shape("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, formatAxis(v)));
    }
    parts.push(shape("text", { x: left, y: height - 4, class: "axis" }, `−${duration(span / 1000)}`));
    parts.push(shape("text", { x: width - 4, y: height - 4, class: "axis", "text-anchor": "end" }, "now"));
    if (samples.length < 2) {
      parts.push(shape("text", { x: width / 2, y: height / 2, class: "axis", "text-anchor": "middle" }, "collecting…"));
    } else {
      for (const series of ["intake", "drain"]) {
        const points = samples.map((s) => `${x(s.at).toFixed(1)},${y(s[series]).toFixed(1)}`).join(" ");
        parts.push(shape("polyline", { points, class: `series ${series}` }));
      }
    }
    svg.replaceChildren(...parts);
  }

  function niceCeiling(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) {
      if (value <= step * magnitude) return step * magnitude;
    }
    return 10 * magnitude;
  }

  function formatAxis(value) {
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  // ---- instances and history --------------------------------------------------------------

  function renderInstances(instances) {
    fillRows(
      $("#instances"),
      instances.map((i) =>
        el(
          "tr",
          { dataset: { instance: i.instance } },
          el("td", {}, i.instance),
          el("td", {}, i.version),
          el("td", {}, i.schema_version),
          el("td", {}, el("span", { class: `pill ${i.state}` }, i.state)),
          el("td", { class: "num" }, i.in_flight),
          el("td", { class: "num" }, i.processed.toLocaleString("en-GB")),
          el("td", {}, withTitle(ago(i.last_seen), `${when(i.last_seen)}; started ${when(i.started_at)}`)),
        ),
      ),
      7,
      "No instance heard from in the last 5 s.",
    );
  }

  function renderHistory(entries) {
    fillRows(
      $("#history"),
      entries.map((h) =>
        el(
          "tr",
          {},
          el("td", {}, when(h.changed_at)),
          el("td", {}, el("span", { class: `pill ${h.desired}` }, h.action)),
          el("td", {}, h.active_version || "—"),
          el("td", {}, h.changed_by),
          el("td", {}, h.reason || "—", h.until ? ` (until ${when(h.until)})` : ""),
        ),
      ),
      5,
      "The switch has never been changed.",
    );
  }

  // ---- dead letters -------------------------------------------------------------------------

  function renderDeadLetters(page) {
    const items = page.items || [];
    const counts = page.counts || countByReason(items);
    const reasons = Object.keys(counts).filter((r) => counts[r] > 0).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b));
    const total = reasons.reduce((sum, r) => sum + counts[r], 0);
    $("#dead-counts").replaceChildren(
      ...(total === 0
        ? ["None waiting for a person."]
        : reasons.map((r) => el("span", { class: "chip", dataset: { reason: r } }, `${r} `, el("strong", {}, counts[r])))),
    );
    const open = new Set(items.map((i) => i.id));
    // One table, a body per reason, so that the columns line up across reasons.
    const groups = reasons.map((reason) => {
      const rows = items.filter((i) => i.reason === reason).map(deadLetterRow);
      const more = counts[reason] - rows.length;
      return el(
        "tbody",
        { class: "group", dataset: { reason } },
        groupHead(reason, ` (${counts[reason]})`),
        rows,
        more > 0 ? el("tr", {}, el("td", { colspan: 8, class: "muted" }, `${more} more not shown; use the API's filters and pages.`)) : null,
      );
    });
    // Ones resolved from this page have left the open list: keep their outcome in view.
    const gone = [...outcomes.values()].filter((o) => o.result && o.result.resolved && !open.has(o.item.id));
    if (gone.length) {
      groups.push(el("tbody", { class: "group done" }, groupHead("Resolved from this page", ""), gone.map((o) => deadLetterRow(o.item))));
    }
    const table = $("#dead-letters");
    table.hidden = groups.length === 0;
    table.replaceChildren(table.tHead, ...groups);
  }

  function groupHead(title, note) {
    return el("tr", { class: "group-head" }, el("th", { colspan: 8 }, title, el("span", { class: "muted" }, note)));
  }

  function countByReason(items) {
    const counts = {};
    for (const item of items) counts[item.reason] = (counts[item.reason] || 0) + 1;
    return counts;
  }

  function deadLetterRow(item) {
    const busy = pending.has(item.id);
    const known = outcomes.get(item.id);
    const resolved = Boolean(item.resolved_at) || Boolean(known && known.result && known.result.resolved);
    const attempts = item.resubmits ? `${item.attempts} (+${item.resubmits} resubmits)` : String(item.attempts);
    return el(
      "tr",
      { dataset: { deadLetter: item.id } },
      el("td", {}, item.id),
      el("td", { class: "mono" }, item.message_id),
      el("td", {}, item.source),
      el("td", {}, attempts),
      el("td", {}, withTitle(ago(item.last_seen), `${when(item.last_seen)}; first seen ${when(item.first_seen)}`)),
      el("td", { class: "detail" }, withTitle(shorten(item.detail, 120), item.detail)),
      el(
        "td",
        { class: "actions" },
        el("button", { type: "button", class: "small", disabled: busy || resolved, "data-action": "dry-run", onclick: () => resubmit(item, true) }, "Dry run"),
        el("button", { type: "button", class: "small primary", disabled: busy || resolved, "data-action": "resubmit", onclick: () => askResubmit(item) }, "Resubmit…"),
      ),
      el("td", { class: "outcome" }, busy ? "working…" : outcomeView(known)),
    );
  }

  function outcomeView(known) {
    if (!known) return "";
    if (known.error) return el("span", { class: "bad" }, known.error);
    const r = known.result;
    return el(
      "span",
      { class: r.resolved ? "good" : r.dry_run ? "" : "bad" },
      el("code", {}, r.outcome),
      r.dry_run ? " (dry run)" : "",
      r.order_id && !(r.detail || "").includes(r.order_id) ? ` · order ${r.order_id}` : "",
      r.detail ? ` — ${r.detail}` : "",
    );
  }

  function shorten(text, max) {
    return text && text.length > max ? `${text.slice(0, max - 1)}…` : text || "";
  }

  async function resubmit(item, dryRun, reason) {
    pending.add(item.id);
    refreshDeadLetterRow(item);
    const mine = session;
    try {
      const path = `/v1/admin/dead-letters/${encodeURIComponent(item.id)}/resubmit${dryRun ? "?dry_run=true" : ""}`;
      const { data } = await api("POST", path, reason ? { reason } : {});
      outcomes.set(item.id, { item, result: data });
    } catch (e) {
      if (mine !== session || e.status === 401) return;
      outcomes.set(item.id, { item, error: e.message });
    } finally {
      pending.delete(item.id);
    }
    refreshDeadLetterRow(item);
    if (!dryRun) refresh(true).catch(() => {});
  }

  function refreshDeadLetterRow(item) {
    const row = document.querySelector(`tr[data-dead-letter="${CSS.escape(String(item.id))}"]`);
    if (row) row.replaceWith(deadLetterRow(item));
  }

  // ---- payments and outbox --------------------------------------------------------------------

  function renderPayments(items) {
    fillRows(
      $("#payments"),
      items.map((p) =>
        el(
          "tr",
          {},
          el("td", { class: "mono" }, p.cart_id),
          el("td", { class: "num" }, money(p.amount, p.currency)),
          el("td", {}, when(p.called_at)),
          el("td", { class: "detail" }, p.detail || "—"),
        ),
      ),
      4,
      "None: every payment call has a known outcome.",
    );
  }

  // Webhook endpoints that are not delivering, or whose events wait: failing or disabled
  // ones, and any with events pending.
  function renderWebhooks(items) {
    const troubled = items.filter((e) => e.state !== "enabled" || e.pending > 0);
    fillRows(
      $("#webhooks"),
      troubled.map((e) =>
        el(
          "tr",
          { "data-endpoint": e.id, "data-state": e.state },
          el("td", { class: "mono" }, e.id),
          el("td", { class: "mono" }, e.url),
          el("td", {}, el("span", { class: `chip ${e.state}` }, e.state)),
          el("td", { class: "num" }, e.pending),
          el("td", {}, when(e.oldest_pending_at)),
          el("td", { class: "detail" }, e.state_reason || (e.next_probe_at ? `next probe ${when(e.next_probe_at)}` : "—")),
        ),
      ),
      6,
      `None: ${items.length} endpoint(s), every one delivering with nothing waiting.`,
    );
  }

  // The last smoke run of each version: what to look at before swapping to it.
  function renderSmoke(items) {
    fillRows(
      $("#smoke"),
      items.map((run) =>
        el(
          "tr",
          { "data-version": run.version },
          el("td", { class: "mono" }, run.version),
          el("td", {}, el("span", { class: `chip ${run.ok ? "enabled" : "failing"}` }, run.ok ? "passed" : "failed")),
          el("td", {}, when(run.at)),
          el("td", { class: "mono" }, run.instance),
          el("td", { class: "detail" }, run.summary),
        ),
      ),
      5,
      "None yet: smoke a new version with cartbus smoke --url <its instance> before the swap.",
    );
  }

  function renderOutbox(page) {
    fillRows(
      $("#outbox"),
      (page.items || []).map((row) =>
        el(
          "tr",
          {},
          el("td", { class: "mono" }, row.order_id),
          el("td", {}, row.partner || "—"),
          el("td", { class: "num" }, row.retry_count),
          el("td", { class: "detail" }, row.last_error || "—"),
          el("td", {}, when(row.created_at)),
        ),
      ),
      5,
      "None: every hand-off is sent or still being retried.",
    );
  }

  // ---- dialogs: pause, resume, resubmit ---------------------------------------------------------

  function openDialog(dialog) {
    dialog.querySelector(".message").textContent = "";
    dialog.showModal();
  }

  async function confirmDialog(dialog, action) {
    const message = dialog.querySelector(".message");
    const confirm = dialog.querySelector("button[type=submit]");
    confirm.disabled = true;
    message.textContent = "Working…";
    try {
      await action();
      dialog.close();
    } catch (e) {
      message.textContent = e.status === 401 ? "" : e.message;
    } finally {
      confirm.disabled = false;
    }
  }

  function askPause() {
    $("#pause-reason").value = "";
    openDialog($("#pause-dialog"));
  }

  function askResume() {
    const select = $("#resume-version");
    // A fenced instance's binary is older than the database: it must never consume.
    const live = (lastStatus ? lastStatus.instances : []).filter((i) => i.state !== "stopped" && i.state !== "fenced");
    const versions = [...new Set(live.map((i) => i.version))].sort();
    const options = versions.map((v) => {
      const n = live.filter((i) => i.version === v).length;
      return el("option", { value: v }, `${v} (${n} instance${n === 1 ? "" : "s"})`);
    });
    // With more than one version running (a slot swap), the operator must choose.
    if (versions.length !== 1) options.unshift(el("option", { value: "" }, "Choose a version…"));
    select.replaceChildren(...options);
    $("#resume-reason").value = "";
    openDialog($("#resume-dialog"));
  }

  function askResubmit(item) {
    const dialog = $("#resubmit-dialog");
    $("#resubmit-what").textContent = `Dead letter #${item.id} (${item.reason}), message ${item.message_id}.`;
    $("#resubmit-reason").value = "";
    resubmitTarget = item;
    openDialog(dialog);
  }

  function wire() {
    $("#login-form").addEventListener("submit", signIn);
    $("#sign-out").addEventListener("click", () => signOut("Signed out."));
    $("#pause").addEventListener("click", askPause);
    $("#resume").addEventListener("click", askResume);
    for (const cancel of document.querySelectorAll("dialog [data-cancel]")) {
      cancel.addEventListener("click", () => cancel.closest("dialog").close());
    }
    $("#pause-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const dialog = $("#pause-dialog");
      const reason = $("#pause-reason").value.trim();
      if (!reason) {
        dialog.querySelector(".message").textContent = "Say why: the reason is kept in the history.";
        return;
      }
      confirmDialog(dialog, async () => {
        await api("POST", "/v1/admin/consumer/pause", { reason });
        await refresh(true);
      });
    });
    $("#resume-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const dialog = $("#resume-dialog");
      const version = $("#resume-version").value;
      if (!version) {
        dialog.querySelector(".message").textContent = "Choose the version that may consume.";
        return;
      }
      const reason = $("#resume-reason").value.trim();
      confirmDialog(dialog, async () => {
        await api("POST", "/v1/admin/consumer/resume", reason ? { version, reason } : { version });
        await refresh(true);
      });
    });
    $("#resubmit-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const item = resubmitTarget;
      if (!item) return;
      const reason = $("#resubmit-reason").value.trim();
      $("#resubmit-dialog").close();
      resubmit(item, false, reason);
    });
    window.addEventListener("resize", () => {
      if (token) drawChart();
    });
    $("#token").focus();
  }

  wire();
})();
