// Drives the operator console (GET /console) in a real headless Chromium, view by view, and
// checks each shows what the server says (read back over GraphQL).
//
//   cd tests/browser && npm install && \
//   UPKEEP_URL=http://127.0.0.1:8080 UPKEEP_EMAIL=admin@msp.example UPKEEP_PASSWORD=... \
//   STATE_FILE=/path/to/state.json SCREENSHOT_DIR=/tmp/shots node console.mjs
//
// Needs one online computer (STATE_FILE of setup.mjs names it; otherwise the first online one)
// with a deployment that plans a change it must not make (postpone.mjs runs afterwards and
// wants that change still planned): so everything run here is detection only or limited to
// deployments made here.
//
// Before the browser: tags the computer, creates a schedule (for a tag no computer has, so it
// never runs here) and an AD_HOC software whose install prints a secret parameter.
// Then, in a browser in New York's zone:
//   - sign-in lands on the overview; the live indicator says "live";
//   - computers: the agent's computer with its online state, compliance and tags; search by
//     name and by tag keeps it, a search for nothing and the "offline" filter hide it, and the
//     search survives a reload (it is in the URL);
//   - a detection-only session started from the list opens and turns PASSED live;
//   - the computer's page (its link in the session): inventory as the API reports it, the
//     deployments that apply with the API's rule, its sessions;
//   - "Run now" on the AD_HOC software starts a session limited to it; its action's script
//     output shows, the secret masked; the sessions list filtered by status (failed, passed);
//   - schedules: the schedule with its next run (the API's instant) in New York time;
//   - the overview: the tenant's counts equal those computed from the API;
//   - a narrow window (390 px) scrolls nothing sideways; every form control has a label.
//   - a tenant viewer (made here) reads the computer's page and the list without start or run
//     buttons; an API key signs in by its name and role;
//   - the token is renewed (refreshToken) before it expires (the page's clock jumps ahead).
// Exits non-zero on any failure, on an uncaught page error and on a console error (a CSP
// violation shows up there), and on a request to another origin.
//
// Optional env: CHROMIUM_PATH (default /usr/bin/chromium), TIMEOUT_MS (default 90000) for a
// session to pass, CONSOLE_HTML=path/to/index.html to serve that file at /console instead of
// the one built into the server (same response headers except the CSP, whose script and style
// hashes are the built-in page's): handy when editing the console without rebuilding.

import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import path from "node:path";

const base = process.env.UPKEEP_URL || "http://127.0.0.1:8080";
const email = process.env.UPKEEP_EMAIL;
const password = process.env.UPKEEP_PASSWORD;
const shotDir = process.env.SCREENSHOT_DIR || ".";
const chromiumPath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const sessionTimeout = Number(process.env.TIMEOUT_MS || 90000);
const consoleHtml = process.env.CONSOLE_HTML ? readFileSync(process.env.CONSOLE_HTML, "utf8") : null;
const stateFile = process.env.STATE_FILE;
const ZONE = "America/New_York";

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
function assert(cond, msg) { if (!cond) throw new Error(msg); }

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

const OUTPUT_SECRET = "LIC-7f3a-9b2c-SECRET";
const TAGS = ["front-desk", "reception-floor"];

// The data the views are checked against, made through the API.
async function prepare() {
  const token = (await api(null, "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
    { e: email, p: password })).login.token;
  let computerId = stateFile ? JSON.parse(readFileSync(stateFile, "utf8")).computer?.id : null;
  if (!computerId) {
    const d = await api(token, "{ computers(first: 100) { edges { node { id online } } } }");
    computerId = d.computers.edges.map((e) => e.node).find((c) => c.online)?.id;
  }
  assert(computerId, "no online computer to test the console with");
  const c = (await api(token, "mutation($id: ID!, $i: UpdateComputerInput!) { updateComputer(id: $id, input: $i) { id name hostname tenant { id name } } }",
    { id: computerId, i: { tags: TAGS } })).updateComputer;
  const schedule = (await api(token, "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { id name } }", { i: {
    tenantId: c.tenant.id, name: "Weeknight patching", target: { kind: "TAG", value: "servers-nobody-has" },
    cron: "0 22 * * 1-5", timeZone: "Europe/Berlin", detectionOnly: true,
  } })).createSchedule;
  const sw = (await api(token, "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id name } }", { i: {
    name: "Output check", tenantId: c.tenant.id,
    detectionScript: { language: "SHELL", body: "cat ../output-check.version 2>/dev/null; exit 0" },
    versions: [{ version: "1.0", installScript: { language: "SHELL",
      body: "echo 'unpacking output-check 1.0'\necho \"licence $UPKEEP_PARAM_LICENSE\"\necho 'a warning' >&2\necho 1.0 > ../output-check.version" } }],
  } })).createSoftware;
  const d = (await api(token, "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }", { i: {
    tenantId: c.tenant.id, target: { kind: "COMPUTER", value: computerId }, softwareId: sw.id,
    desiredState: "INSTALLED_LATEST", enforcement: "AD_HOC", parameters: { license: OUTPUT_SECRET },
  } })).createDeployment;
  return { token, computer: c, schedule, outputDeploymentId: d.id };
}

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    // A page fulfilled by the test (CONSOLE_HTML) has no address of its own, so Chromium's
    // Local Network Access checks would block its WebSocket to a loopback server.
    ...(consoleHtml ? ["--disable-features=LocalNetworkAccessChecks"] : [])],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: ZONE, locale: "en-US" });
const page = await context.newPage();
page.on("pageerror", (e) => pageProblems.push(`page error: ${e.message}`));
page.on("console", (m) => { if (m.type() === "error") pageProblems.push(`console error: ${m.text()}`); });
page.on("request", (r) => {
  const u = new URL(r.url());
  if (!["data:", "about:"].includes(u.protocol) && u.host !== consoleUrl.host) pageProblems.push(`request to another origin: ${r.url()}`);
});
// CONSOLE_HTML: serves that file at /console to page p.
async function useConsoleHtml(p) {
  if (!consoleHtml) return;
  // The CSP names the built-in page's blocks by hash: put this file's hashes in instead.
  const hashes = (tag) => [...consoleHtml.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, "g"))]
    .map((m) => `'sha256-${createHash("sha256").update(m[1]).digest("base64")}'`).join(" ");
  await p.route((u) => u.pathname === consoleUrl.pathname, async (route) => {
    const response = await route.fetch();
    const headers = { ...response.headers() };
    headers["content-security-policy"] = headers["content-security-policy"]
      .replace(/script-src [^;]*/, `script-src ${hashes("script")}`).replace(/style-src [^;]*/, `style-src ${hashes("style")}`);
    await route.fulfill({ response, headers, body: consoleHtml });
  });
}
await useConsoleHtml(page);

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
const until = (what, fn, arg, timeout = 15000) =>
  waitOrBanner(what, page.waitForFunction(fn, arg, { timeout }).then((h) => h.jsonValue()));

// Waits until the open session's badge shows a final status; returns it.
async function finalStatus(what) {
  return until(what, (sel) => {
    const s = document.querySelector(sel)?.dataset.status;
    return ["PASSED", "FAILED", "CANCELLED"].includes(s) ? s : null;
  }, tid("detail-status"), sessionTimeout);
}
const sessionIdInHash = () => page.evaluate(() => (/^#\/sessions\/(.+)$/.exec(location.hash) || [])[1] || null);

async function visibleRowIds() {
  return page.locator(`${tid("computer")}`).evaluateAll((rows) => rows.map((r) => r.dataset.computerId));
}
async function search(text) {
  await page.locator(tid("computer-search")).fill(text);
  return visibleRowIds();
}

let failed = false;
try {
  const setup = await prepare();
  const { token, computer } = setup;
  step(`computer ${computer.name} (${computer.id}) tagged ${TAGS.join(", ")}; schedule ${setup.schedule.id}`);

  step(`open ${consoleUrl.href}`);
  const resp = await page.goto(consoleUrl.href);
  if (!resp || !resp.ok()) throw new Error(`GET /console answered ${resp && resp.status()}`);
  const csp = resp.headers()["content-security-policy"] || "";
  assert(csp && !csp.includes("unsafe-inline") && !/https?:/.test(csp), `the CSP is not strict: ${csp}`);

  // Sign in: the overview.
  await page.locator(tid("email")).fill(email);
  await page.locator(tid("password")).fill(password);
  await page.locator(tid("login")).click();
  await waitOrBanner("sign-in", page.locator(tid("view-overview")).waitFor({ state: "visible", timeout: 15000 }));
  assert((await page.evaluate(() => location.hash)) === "" || (await page.evaluate(() => location.hash)) === "#/overview", "sign-in lands on the overview");
  await until("live indicator", (sel) => document.querySelector(sel)?.textContent.trim() === "live", tid("live-indicator"));
  step("signed in: the overview, live");

  // Computers: the agent's computer with its state.
  await page.locator(tid("nav-computers")).click();
  await until("computers", (sel) => document.querySelector(sel)?.dataset.state === "loaded", tid("computer-list"));
  const row = page.locator(`${tid("computer")}[data-computer-id="${computer.id}"]`);
  await row.waitFor({ timeout: 10000 });
  const listed = (await api(token, `query($id: ID!) { computer(id: $id) { online compliance rebootPending tags } }`, { id: computer.id })).computer;
  assert(listed.online, "the API says the computer is offline");
  assert((await row.locator(tid("computer-online")).getAttribute("data-online")) === "true", "the row does not show the computer online");
  assert((await row.locator(tid("computer-link")).innerText()).trim() === computer.name, "the row does not name the computer");
  const tags = await row.locator(tid("tag")).allInnerTexts();
  assert(JSON.stringify(tags.map((t) => t.trim()).sort()) === JSON.stringify([...listed.tags].sort()), `tags ${tags} ≠ ${listed.tags}`);
  const compliance = await row.locator(`${tid("computer-compliance")} [data-status]`).getAttribute("data-status");
  assert(compliance === (listed.compliance || "NONE"), `compliance ${compliance} ≠ ${listed.compliance}`);
  assert((await row.locator(tid("computer-reboot")).getAttribute("data-reboot")) === String(listed.rebootPending), "reboot pending differs");
  step(`the list shows ${computer.name}: online, ${compliance}, tags ${tags.join(", ")}`);

  // Search and filter.
  assert((await search(computer.name.slice(0, 9).toLowerCase())).includes(computer.id), "a search by name drops the computer");
  assert((await search("reception-fl")).includes(computer.id), "a search by tag drops the computer");
  assert((await search("no-such-computer-anywhere")).length === 0, "a search for nothing still shows rows");
  assert(await page.locator(tid("computers-empty")).isVisible(), "no 'nothing matches' message");
  await search("");
  await page.locator(tid("filter-online")).selectOption("no");
  assert(!(await visibleRowIds()).includes(computer.id), "the offline filter keeps an online computer");
  await page.locator(tid("filter-online")).selectOption("yes");
  await page.locator(tid("filter-tag")).selectOption("front-desk");
  assert((await visibleRowIds()).includes(computer.id), "online + tag filters drop the computer");
  await search("front");
  const hash = await page.evaluate(() => location.hash);
  assert(hash.includes("q=front") && hash.includes("tag=front-desk"), `the filters are not in the link: ${hash}`);
  await page.reload();
  await until("computers after reload", (sel) => document.querySelector(sel)?.dataset.state === "loaded", tid("computer-list"));
  assert((await page.locator(tid("computer-search")).inputValue()) === "front", "the search is lost on reload");
  assert(JSON.stringify(await visibleRowIds()) === JSON.stringify([computer.id]), "the reloaded link does not show just the computer");
  step("search and filters keep and drop the computer, and live in the link");
  await shot("console-computers.png");

  // A detection-only session from the list, followed live.
  await row.locator(tid("computer-checkbox")).check();
  await page.locator(tid("detection-only")).check();
  await page.locator(tid("start-session")).click();
  await until("the session opens", () => /^#\/sessions\/./.test(location.hash));
  const detectId = await sessionIdInHash();
  let final = await finalStatus("detection session");
  assert(final === "PASSED", `session ${detectId} ended ${final}`);
  await until("the list row", (id) => document.querySelector(`[data-testid="session-row"][data-session-id="${id}"] [data-status]`)?.dataset.status === "PASSED", detectId);
  assert((await page.locator(`${tid("session-log")} li[data-sequence]`).count()) > 0, "the session's log is empty");
  step(`detection-only session ${detectId} PASSED, live`);
  await page.waitForTimeout(800); // the row's final statusReason
  await shot("console-session-passed.png");

  // The computer's page, through the session's link.
  await page.locator(tid("detail-computer")).click();
  await waitOrBanner("computer page", page.locator(tid("computer-name")).waitFor({ state: "visible", timeout: 15000 }));
  assert((await page.locator(tid("computer-name")).innerText()).trim() === computer.name, "the page names another computer");
  const full = (await api(token, `query($id: ID!) { computer(id: $id) {
      inventory { osName osVersion model ipAddresses installedSoftwareCount }
      installedSoftware(first: 500) { totalCount }
      deploymentResolution { software { name } maintenanceTask { name } rule winner { id } }
      sessions(first: 25) { id } } }`, { id: computer.id })).computer;
  const inv = full.inventory;
  if (inv) {
    const os = await page.locator(`${tid("inv-os")} dd`).innerText();
    const expected = [inv.osName, inv.osVersion].filter(Boolean).join(" ") || "—";
    assert(os.trim() === expected, `inventory OS "${os}" ≠ "${expected}"`);
    const ips = await page.locator(`${tid("inv-ips")} dd`).innerText();
    assert(inv.ipAddresses.every((ip) => ips.includes(ip)), `inventory IPs "${ips}" miss some of ${inv.ipAddresses}`);
    const rows = await page.locator(tid("installed-row")).count();
    assert(rows === Math.min(full.installedSoftware.totalCount, 500), `${rows} installed rows, the API lists ${full.installedSoftware.totalCount}`);
    step(`inventory: ${expected}, ${inv.ipAddresses.length} addresses, ${rows} installed programs`);
  } else {
    assert(await page.locator("#inventory-empty").isVisible(), "no inventory, and the page does not say so");
    step("inventory: not reported yet, and the page says so");
  }
  const resolution = page.locator(tid("resolution-row"));
  assert((await resolution.count()) === full.deploymentResolution.length, "resolution rows differ from the API");
  for (const r of full.deploymentResolution) {
    const rrow = page.locator(`${tid("resolution-row")}[data-deployment-id="${r.winner.id}"]`);
    const rule = (await rrow.locator(tid("resolution-rule")).innerText()).trim();
    assert(rule === r.rule, `the rule for ${r.software?.name || r.maintenanceTask?.name} reads "${rule}", the API says "${r.rule}"`);
  }
  const names = await resolution.locator("strong").allInnerTexts();
  assert(names.includes("Notepad++") && names.includes("Output check"), `the applying deployments are not shown: ${names}`);
  assert((await page.locator(`${tid("computer-session")}[data-session-id="${detectId}"]`).count()) === 1, "the page does not list the session");
  step(`its page: ${names.length} deployments that apply with the API's rules, its sessions`);
  await page.waitForTimeout(500); // the plan
  await shot("console-computer.png");

  // "Run now": a session limited to the AD_HOC software; its script output, masked.
  await page.locator(`${tid("resolution-row")}[data-deployment-id="${setup.outputDeploymentId}"] ${tid("run-deployment")}`).click();
  await until("the run opens", (prev) => /^#\/sessions\/./.test(location.hash) && !location.hash.endsWith(prev), detectId);
  const outId = await sessionIdInHash();
  final = await finalStatus("output session");
  assert(final === "PASSED", `session ${outId} ended ${final}: ${await page.locator(tid("detail-reason")).innerText()}`);
  const started = (await api(token, `query($id: ID!) { maintenanceSession(id: $id) { computer { id } actions { name } } }`, { id: outId })).maintenanceSession;
  assert(started.computer.id === computer.id && started.actions.map((a) => a.name).join() === "Output check",
    `"Run now" started something else: ${JSON.stringify(started)}`);
  const output = page.locator(tid("action-output")).first();
  await output.waitFor({ state: "attached", timeout: 10000 });
  await output.locator("summary").click();
  const stdout = await page.locator(tid("action-stdout")).first().innerText();
  assert(stdout.includes("licence ••••••") && !stdout.includes(OUTPUT_SECRET), `the action's output is not shown masked: ${JSON.stringify(stdout)}`);
  step(`"Run now" ran only Output check (session ${outId}); its script output shows, the secret masked`);
  await shot("console-action-output.png");

  // The sessions list's "Show" choice: the query's status filter, kept in the link.
  const showOnly = (group, ours) => until(`sessions shown for "${group}"`, ([g, mine, ours]) => {
    const rows = [...document.querySelectorAll('[data-testid="session-row"]')];
    const ids = rows.map((r) => r.dataset.sessionId);
    const statuses = rows.map((r) => r.querySelector("[data-status]").dataset.status);
    return location.hash.includes(`status=${g}`) && statuses.every((x) => x === g.toUpperCase()) &&
      (ours ? mine.every((i) => ids.includes(i)) : !mine.some((i) => ids.includes(i)));
  }, [group, [detectId, outId], ours]);
  await page.locator(tid("filter-session-status")).selectOption("failed");
  await showOnly("failed", false);
  await page.locator(tid("filter-session-status")).selectOption("passed");
  await showOnly("passed", true);
  await page.locator(tid("filter-session-status")).selectOption("");
  step("the sessions list shows only failed, then only passed sessions, and says so in the link");

  // Schedules: the next run, in New York time.
  await page.locator(tid("nav-schedules")).click();
  const srow = page.locator(`${tid("schedule-row")}[data-schedule-id="${setup.schedule.id}"]`);
  await waitOrBanner("schedules", srow.waitFor({ timeout: 15000 }));
  const runs = (await api(token, `query($id: ID!) { schedule(id: $id) { nextRuns(count: 3) } }`, { id: setup.schedule.id })).schedule.nextRuns;
  const first = srow.locator(tid("schedule-next-run")).first();
  const shownAt = await first.getAttribute("datetime");
  assert(new Date(shownAt).getTime() === new Date(runs[0]).getTime(), `next run ${shownAt} ≠ the API's ${runs[0]}`);
  const text = await first.innerText();
  const nyHour = new Intl.DateTimeFormat("en-US", { timeZone: ZONE, hour: "numeric", hour12: true }).format(new Date(runs[0])).replace(/\s/g, " ");
  assert(/\bE[SD]T\b/.test(text) && text.replace(/\s/g, " ").includes(nyHour.split(" ")[0] + ":"),
    `the next run "${text}" is not in New York time (${nyHour})`);
  step(`schedule ${setup.schedule.name}: next run ${runs[0]} shown as "${text}"`);
  await shot("console-schedules.png");

  // The overview: the tenant's counts, as computed from the API.
  await page.locator(tid("nav-overview")).click();
  const trow = page.locator(`${tid("tenant-row")}[data-tenant-id="${computer.tenant.id}"]`);
  await waitOrBanner("overview", trow.waitFor({ timeout: 15000 }));
  const all = (await api(token, `query($t: ID) { computers(tenantId: $t, first: 500) { edges { node { online compliance rebootPending } } } }`,
    { t: computer.tenant.id })).computers.edges.map((e) => e.node);
  const since = new Date(Date.now() - 7 * 86400000).toISOString();
  const counts = (await api(token, `query($t: ID, $s: DateTime) { maintenanceSessionStatusCounts(tenantId: $t, since: $s) { status count } }`,
    { t: computer.tenant.id, s: since })).maintenanceSessionStatusCounts.reduce((m, x) => (m[x.status] = x.count, m), {});
  const want = {
    "tenant-computers": all.length, "tenant-online": all.filter((c) => c.online).length,
    "tenant-compliant": all.filter((c) => c.compliance === "COMPLIANT").length,
    "tenant-non-compliant": all.filter((c) => c.compliance === "NON_COMPLIANT").length,
    "tenant-unknown": all.filter((c) => c.compliance === "UNKNOWN").length,
    "tenant-unchecked": all.filter((c) => !c.compliance).length,
    "tenant-reboot": all.filter((c) => c.rebootPending).length,
    "tenant-passed": counts.PASSED || 0, "tenant-failed": counts.FAILED || 0,
  };
  assert(want["tenant-passed"] >= 2, `the API counts ${want["tenant-passed"]} passed sessions`);
  let got = {};
  for (let attempt = 0; ; attempt++) {
    // (The overview may have read the computers just before the last session finished.)
    got = {};
    for (const k of Object.keys(want)) got[k] = Number((await trow.locator(tid(k)).innerText()).trim());
    if (JSON.stringify(got) === JSON.stringify(want)) break;
    assert(attempt < 4, `the overview shows ${JSON.stringify(got)}, the API says ${JSON.stringify(want)}`);
    await page.locator("#overview-refresh").click();
    await page.waitForTimeout(1000);
  }
  step(`overview: ${JSON.stringify(got)}`);
  await shot("console-overview.png");

  // Every form control has a label; each view has a heading.
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, button")]
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.textContent.trim())
    .map((el) => el.id || el.outerHTML.slice(0, 80)));
  assert(unlabelled.length === 0, `controls without a label: ${unlabelled}`);
  const headless = await page.evaluate(() => [...document.querySelectorAll("section.view")].filter((v) => !v.querySelector("h1")).map((v) => v.id));
  assert(headless.length === 0, `views without a heading: ${headless}`);

  // A narrow window: nothing scrolls sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [hashTo, name] of [["#/overview", "overview"], [`#/computers/${computer.id}`, "computer"], [`#/sessions/${outId}`, "session"], ["#/computers", "computers"]]) {
    await page.evaluate((h) => { location.hash = h; }, hashTo);
    await page.waitForTimeout(700);
    const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(wide <= 1, `the ${name} view is ${wide}px wider than a 390px window`);
    await shot(`console-narrow-${name}.png`);
  }
  step("a 390px window scrolls nothing sideways; every control is labelled");

  // A tenant viewer reads the same pages but gets no buttons that start anything.
  const viewerEmail = "viewer@contoso-dental.example", viewerPassword = "viewer password long enough 42";
  await api(token, "mutation($i: CreateUserInput!) { createUser(input: $i) { id } }",
    { i: { email: viewerEmail, password: viewerPassword, role: "TENANT_VIEWER", tenantId: computer.tenant.id } });
  const vctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: ZONE, locale: "en-US" });
  const viewer = await vctx.newPage();
  viewer.on("pageerror", (e) => pageProblems.push(`viewer page error: ${e.message}`));
  viewer.on("console", (m) => { if (m.type() === "error") pageProblems.push(`viewer console error: ${m.text()}`); });
  await useConsoleHtml(viewer);
  await viewer.goto(`${consoleUrl.href}#/computers/${computer.id}`);
  await viewer.locator(tid("email")).fill(viewerEmail);
  await viewer.locator(tid("password")).fill(viewerPassword);
  await viewer.locator(tid("login")).click();
  await viewer.locator(tid("computer-name")).waitFor({ state: "visible", timeout: 15000 });
  await viewer.locator(tid("resolution-row")).first().waitFor({ timeout: 15000 });
  assert(!(await viewer.locator(tid("computer-start")).isVisible()), "a viewer sees Start session");
  assert((await viewer.locator(tid("run-deployment")).count()) === 0, "a viewer sees Run now");
  await viewer.evaluate(() => { location.hash = "#/computers"; });
  await viewer.locator(`${tid("computer")}[data-computer-id="${computer.id}"]`).waitFor({ timeout: 15000 });
  assert(!(await viewer.locator(tid("start-session")).isVisible()), "a viewer sees the start bar");
  step("a tenant viewer reads the computer's page and the list, without start or run buttons");
  await vctx.close();

  // An API key signs in as itself: its name and the role it acts with.
  const key = (await api(token, "mutation($t: ID) { createApiKey(input: {name: \"front desk wall screen\", role: TENANT_VIEWER, tenantId: $t}) { secret } }",
    { t: computer.tenant.id })).createApiKey.secret;
  const kctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: ZONE, locale: "en-US" });
  const kpage = await kctx.newPage();
  kpage.on("pageerror", (e) => pageProblems.push(`API key page error: ${e.message}`));
  await useConsoleHtml(kpage);
  await kpage.goto(`${consoleUrl.href}#/overview`);
  await kpage.locator(tid("api-key")).fill(key);
  await kpage.locator(tid("use-api-key")).click();
  await kpage.locator(`${tid("tenant-row")}[data-tenant-id="${computer.tenant.id}"]`).waitFor({ timeout: 15000 });
  const who = (await kpage.locator(tid("current-user")).innerText()).replace(/\s+/g, " ");
  assert(who.includes("front desk wall screen") && who.includes("TENANT_VIEWER"), `the top bar says "${who}" for the API key`);
  step(`an API key signs in as "${who}" and sees its tenant's overview`);
  await kctx.close();

  // An open console renews a person's token before it expires: its clock jumps to 10 minutes
  // before the token's expiry; the tab then holds a new token that the server accepts.
  const cctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: ZONE, locale: "en-US" });
  await cctx.clock.install();
  const cpage = await cctx.newPage();
  cpage.on("pageerror", (e) => pageProblems.push(`refresh page error: ${e.message}`));
  await useConsoleHtml(cpage);
  await cpage.goto(`${consoleUrl.href}#/overview`);
  await cpage.locator(tid("email")).fill(email);
  await cpage.locator(tid("password")).fill(password);
  await cpage.locator(tid("login")).click();
  await cpage.locator(`${tid("tenant-row")}[data-tenant-id="${computer.tenant.id}"]`).waitFor({ timeout: 15000 });
  const stored = () => cpage.evaluate(() => sessionStorage.getItem("upkeep.console.token"));
  const old = await stored();
  const expOf = (t) => JSON.parse(Buffer.from(t.split(".")[1], "base64url").toString()).exp * 1000;
  await new Promise((r) => setTimeout(r, 1100)); // a new token differs from one of the same second
  await cctx.clock.fastForward(Math.round(expOf(old) - Date.now() - 10 * 60000));
  let renewed = old;
  for (let i = 0; i < 75 && renewed === old; i++) { await new Promise((r) => setTimeout(r, 200)); renewed = await stored(); }
  assert(renewed && renewed !== old && expOf(renewed) > expOf(old), "the console did not renew its token before expiry");
  const asViewer = (await api(renewed, "{ viewer { kind user { email } } }")).viewer;
  assert(asViewer.user?.email === email, `the renewed token is not the admin's: ${JSON.stringify(asViewer)}`);
  step("the console renews its token before it expires (refreshToken)");
  await cctx.close();

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
