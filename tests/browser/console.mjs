// Drives the operator console (GET /console) in a real headless Chromium.
//
//   cd tests/browser && npm install && \
//   UPKEEP_URL=http://127.0.0.1:8080 UPKEEP_EMAIL=admin@msp.example UPKEEP_PASSWORD=... \
//   SCREENSHOT_DIR=/tmp/shots node console.mjs
//
// Signs in, checks that the sessions table renders and that the live indicator says "live"
// (the graphql-transport-ws subscription was acknowledged), and saves screenshots. When at
// least one computer is online, it also starts a detection-only session on it and waits,
// without reloading, for that session's status badge to become PASSED; then it runs an AD_HOC
// install that prints a secret parameter and checks the session view shows the action's script
// output, masked.
// Exits non-zero on any failure, on an uncaught page error and on a console error (a CSP
// violation shows up there).
//
// Optional env: CHROMIUM_PATH (default /usr/bin/chromium), TIMEOUT_MS (default 90000) for the
// session to pass, CONSOLE_HTML=path/to/index.html to serve that file at /console instead of
// the one built into the server (same response headers, so the same CSP): handy when editing
// the console without rebuilding the server.

import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";

const base = process.env.UPKEEP_URL || "http://127.0.0.1:8080";
const email = process.env.UPKEEP_EMAIL;
const password = process.env.UPKEEP_PASSWORD;
const shotDir = process.env.SCREENSHOT_DIR || ".";
const chromiumPath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const sessionTimeout = Number(process.env.TIMEOUT_MS || 90000);
const consoleHtml = process.env.CONSOLE_HTML ? readFileSync(process.env.CONSOLE_HTML, "utf8") : null;

if (!email || !password) {
  console.error("console.mjs: set UPKEEP_EMAIL and UPKEEP_PASSWORD (and UPKEEP_URL)");
  process.exit(2);
}
const consoleUrl = new URL(base);
if (!consoleUrl.pathname.endsWith("/console")) consoleUrl.pathname = consoleUrl.pathname.replace(/\/$/, "") + "/console";
mkdirSync(shotDir, { recursive: true });

const step = (msg) => console.log(`[console.mjs] ${msg}`);
const pageProblems = [];
const tid = (id) => `[data-testid="${id}"]`;

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    // A page fulfilled by the test (CONSOLE_HTML) has no address of its own, so Chromium's
    // Local Network Access checks would block its WebSocket to a loopback server.
    ...(consoleHtml ? ["--disable-features=LocalNetworkAccessChecks"] : [])],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
page.on("pageerror", (e) => pageProblems.push(`page error: ${e.message}`));
page.on("console", (m) => { if (m.type() === "error") pageProblems.push(`console error: ${m.text()}`); });
if (consoleHtml) {
  await page.route(consoleUrl.href, async (route) => {
    const response = await route.fetch();
    await route.fulfill({ response, body: consoleHtml });
  });
}

async function shot(name) {
  const file = path.join(shotDir, name);
  await page.screenshot({ path: file, fullPage: true });
  step(`screenshot ${file}`);
}

// Fails fast with the banner's text when the console shows an error.
async function bannerText() {
  const b = page.locator(tid("error-banner"));
  return (await b.isVisible()) ? (await b.innerText()).replace(/\s+/g, " ").trim() : null;
}
async function waitOrBanner(what, promise) {
  promise.catch(() => {}); // settled later is fine: no unhandled rejection
  let done = false;
  const watch = (async () => {
    while (!done) {
      const b = await bannerText().catch(() => null);
      if (b) return b;
      await new Promise((r) => setTimeout(r, 250));
    }
    return null;
  })();
  try {
    const r = await Promise.race([promise.then((v) => ({ v })), watch.then((b) => ({ b }))]);
    if (r.b) throw new Error(`the console shows an error: ${r.b}`);
    return r.v;
  } catch (e) {
    throw new Error(`${what}: ${e.message.split("\n")[0]}`);
  } finally {
    done = true;
  }
}

const OUTPUT_SECRET = "LIC-7f3a-9b2c-SECRET";

async function api(token, query, variables = {}) {
  const r = await fetch(new URL("/graphql", consoleUrl).href, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await r.json();
  if (body.errors) throw new Error(`GraphQL: ${JSON.stringify(body.errors)}`);
  return body.data;
}

// Creates software whose install prints lines (one with a secret parameter), deploys it AD_HOC
// to the computer's tenant and starts a session limited to it; returns the session id.
async function startOutputSession(computerId) {
  const token = (await api(null, "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
    { e: email, p: password })).login.token;
  const c = (await api(token, "query($id: ID!) { computer(id: $id) { tenant { id } } }", { id: computerId })).computer;
  const sw = (await api(token, "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id } }", { i: {
    name: "Output check", tenantId: c.tenant.id,
    detectionScript: { language: "SHELL", body: "cat ../output-check.version 2>/dev/null; exit 0" },
    versions: [{ version: "1.0", installScript: { language: "SHELL",
      body: "echo 'unpacking output-check 1.0'\necho \"licence $UPKEEP_PARAM_LICENSE\"\necho 'a warning' >&2\necho 1.0 > ../output-check.version" } }],
  } })).createSoftware;
  const d = (await api(token, "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }", { i: {
    tenantId: c.tenant.id, target: { kind: "COMPUTER", value: computerId }, softwareId: sw.id,
    desiredState: "INSTALLED_LATEST", enforcement: "AD_HOC", parameters: { license: OUTPUT_SECRET },
  } })).createDeployment;
  const started = await api(token, "mutation($i: StartMaintenanceSessionInput!) { startMaintenanceSession(input: $i) { id } }",
    { i: { computerIds: [computerId], deploymentIds: [d.id] } });
  return started.startMaintenanceSession[0].id;
}

let failed = false;
try {
  step(`open ${consoleUrl.href}`);
  const resp = await page.goto(consoleUrl.href);
  if (!resp || !resp.ok()) throw new Error(`GET /console answered ${resp && resp.status()}`);

  // Sign in.
  await page.locator(tid("email")).fill(email);
  await page.locator(tid("password")).fill(password);
  await page.locator(tid("login")).click();
  await waitOrBanner("sign-in", page.locator(tid("sessions-table")).waitFor({ state: "visible", timeout: 15000 }));
  step("signed in; sessions table is shown");

  // The subscription is acknowledged.
  await waitOrBanner("live indicator", page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent.trim() === "live", tid("live-indicator"), { timeout: 15000 }));
  step("live indicator says live");

  // Sessions and computers have loaded.
  await waitOrBanner("computers", page.waitForFunction(
    (sel) => document.querySelector(sel)?.dataset.state !== "loading", tid("computer-list"), { timeout: 15000 }));
  const rows = await page.locator(tid("session-row")).count();
  const computers = await page.locator(tid("computer-checkbox")).count();
  step(`${rows} session rows, ${computers} computers`);
  await shot("console-signed-in.png");

  // Optional: a detection-only session on an online computer, followed live to PASSED.
  const online = page.locator(`${tid("computer")}:has([data-online="true"]) ${tid("computer-checkbox")}`);
  if ((await online.count()) === 0) {
    step(computers ? "no computer is online: not starting a session" : "no computers enrolled: not starting a session");
  } else {
    const before = new Set(await page.locator(tid("session-row")).evaluateAll((els) => els.map((e) => e.dataset.sessionId)));
    await online.first().check();
    await page.locator(tid("detection-only")).check();
    await page.locator(tid("start-session")).click();
    const newId = await waitOrBanner("start a session", page.waitForFunction((seen) => {
      const row = [...document.querySelectorAll('[data-testid="session-row"]')].find((r) => !seen.includes(r.dataset.sessionId));
      return row ? row.dataset.sessionId : null;
    }, [...before], { timeout: 15000 }).then((h) => h.jsonValue()));
    step(`started session ${newId}; waiting for PASSED`);
    const status = page.locator(`${tid("session-row")}[data-session-id="${newId}"] ${tid("session-status")}`);
    const final = await waitOrBanner("session status", page.waitForFunction((sel) => {
      // data-status: the raw value (the text of a detection-only PASSED with findings says so).
      const t = document.querySelector(sel)?.querySelector("[data-status]")?.dataset.status;
      return ["PASSED", "FAILED", "CANCELLED"].includes(t) ? t : null;
    }, `${tid("session-row")}[data-session-id="${newId}"] ${tid("session-status")}`, { timeout: sessionTimeout }).then((h) => h.jsonValue()));
    if (final !== "PASSED") throw new Error(`session ${newId} ended ${final}: ${await status.innerText()}`);
    step("the row's badge turned PASSED without a reload");
    // The console opens the session it started: its detail follows live too.
    await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.status === "PASSED", tid("detail-status"), { timeout: 10000 });
    const logLines = await page.locator(`${tid("session-log")} li[data-sequence]`).count();
    step(`detail shows PASSED with ${logLines} log lines`);
    if (logLines === 0) throw new Error("the session's log is empty");
    await page.waitForTimeout(1000); // let the row pick up its final statusReason
    await shot("console-session-passed.png");

    // What the script said: an AD_HOC deployment run by name (so postpone.mjs still finds the
    // planned install), whose install script prints a parameter that must show masked.
    const computerId = await online.first().getAttribute("value");
    const outId = await startOutputSession(computerId);
    step(`started session ${outId} (an install that prints); waiting for PASSED`);
    await page.locator(`${tid("session-row")}[data-session-id="${outId}"]`).click({ timeout: 15000 });
    await waitOrBanner("output session", page.waitForFunction((sel) => document.querySelector(sel)?.textContent.trim() === "PASSED",
      tid("detail-status"), { timeout: sessionTimeout }));
    const output = page.locator(tid("action-output")).first();
    await output.waitFor({ state: "attached", timeout: 10000 });
    await output.locator("summary").click();
    const stdout = await page.locator(tid("action-stdout")).first().innerText();
    if (!stdout.includes("licence ••••••") || stdout.includes(OUTPUT_SECRET)) {
      throw new Error(`the action's output is not shown masked: ${JSON.stringify(stdout)}`);
    }
    step("the action's script output shows in the session view, its secret masked");
    await shot("console-action-output.png");
  }

  const banner = await bannerText();
  if (banner) throw new Error(`the console shows an error: ${banner}`);
  if (pageProblems.length) throw new Error(pageProblems.join("\n"));
  step("OK");
} catch (e) {
  failed = true;
  console.error(`[console.mjs] FAILED: ${e.message}`);
  if (pageProblems.length) console.error(pageProblems.join("\n"));
  try { await shot("console-failure.png"); } catch { /* the page may be gone */ }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
