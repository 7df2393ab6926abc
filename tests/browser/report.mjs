// The tenant's monthly report page (GET /api/v1/tenants/{id}/reports/{yyyy-mm}.html) in a real
// headless Chromium, signed in with a bearer token as a portal would fetch it.
//
//   cd tests/browser && npm install && \
//   UPKEEP_URL=http://127.0.0.1:8080 UPKEEP_EMAIL=admin@msp.example UPKEEP_PASSWORD=... \
//   STATE_FILE=/path/state.json SCREENSHOT_DIR=/tmp/shots node report.mjs
//
// Asks `tenantReport` for the current month of the tenant of setup.mjs (STATE_FILE), opens its
// `htmlUrl`, and checks: 200, the page's title and heading, the company name on the bar in the
// tenant's colour, every section heading, the computer listed, no script or request to another
// origin (the page is self-contained), no console error, no horizontal overflow at 390 px.
// Desktop and phone screenshots. Then the PDF at `pdfUrl` answers application/pdf.

import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";

const base = (process.env.UPKEEP_URL || "http://127.0.0.1:8080").replace(/\/$/, "");
const shotDir = process.env.SCREENSHOT_DIR || ".";
const chromiumPath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const stateFile = process.env.STATE_FILE;
if (!process.env.UPKEEP_EMAIL || !process.env.UPKEEP_PASSWORD || !stateFile) {
  console.error("report.mjs: set UPKEEP_EMAIL, UPKEEP_PASSWORD and STATE_FILE (and UPKEEP_URL)");
  process.exit(2);
}
mkdirSync(shotDir, { recursive: true });
const origin = new URL(base).origin;
const step = (msg) => console.log(`[report.mjs] ${msg}`);
const assert = (cond, msg) => { if (!cond) throw new Error(msg); };

let token = null;
async function gql(query, variables = {}) {
  const res = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  if (body.errors?.length) throw new Error(`GraphQL: ${body.errors.map((e) => `${e.message} [${e.extensions?.code}]`).join("; ")}`);
  return body.data;
}
const rgb = (hex) => { const n = parseInt(hex.slice(1), 16); return `rgb(${n >> 16}, ${(n >> 8) & 255}, ${n & 255})`; };

const problems = [];
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
let failed = false;
try {
  token = (await gql("mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
    { e: process.env.UPKEEP_EMAIL, p: process.env.UPKEEP_PASSWORD })).login.token;
  const state = JSON.parse(readFileSync(stateFile, "utf8"));
  const tenant = (await gql("query($id: ID!) { tenant(id: $id) { id name companyName primaryColor timeZone } }", { id: state.tenant.id })).tenant;
  // The current month in the tenant's zone.
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-CA", { timeZone: tenant.timeZone, year: "numeric", month: "2-digit" })
    .formatToParts(new Date()).map((p) => [p.type, p.value]));
  const month = `${parts.year}-${parts.month}`;
  const r = (await gql(`query($t: ID!, $m: String!) { tenantReport(tenantId: $t, month: $m) {
      month complete htmlUrl pdfUrl computers { name } compliance { total } } }`, { t: tenant.id, m: month })).tenantReport;
  step(`tenantReport ${r.month}: ${r.compliance.total} computer(s), ${r.htmlUrl}`);
  assert(r.htmlUrl.startsWith(origin), `htmlUrl ${r.htmlUrl} is not on ${origin}`);

  for (const [name, viewport] of [["desktop", { width: 1280, height: 900 }], ["phone", { width: 390, height: 844 }]]) {
    const context = await browser.newContext({ viewport, extraHTTPHeaders: { authorization: `Bearer ${token}` }, javaScriptEnabled: true });
    const page = await context.newPage();
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    // Chromium's own /favicon.ico probe answers 404; any other failing response is a problem (and
    // its "Failed to load resource" console line is judged through the response instead).
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console error: ${m.text()}`);
    });
    page.on("response", (q) => {
      if (q.status() >= 400 && new URL(q.url()).pathname !== "/favicon.ico") problems.push(`${q.url()} answered ${q.status()}`);
    });
    page.on("request", (q) => { if (!q.url().startsWith(origin)) problems.push(`request to another origin: ${q.url()}`); });
    const resp = await page.goto(r.htmlUrl);
    assert(resp && resp.status() === 200, `GET ${r.htmlUrl} answered ${resp && resp.status()}`);
    assert((resp.headers()["content-security-policy"] || "").includes("default-src 'none'"), "no CSP on the report page");
    const title = await page.title();
    assert(title.startsWith("Maintenance report") && title.includes(tenant.companyName), `title: ${title}`);
    const bar = page.locator(".bar");
    assert((await bar.innerText()).includes(tenant.companyName), "the bar does not name the company");
    const barColor = await bar.evaluate((e) => getComputedStyle(e).backgroundColor);
    assert(barColor === rgb(tenant.primaryColor), `the bar is ${barColor}, not the tenant's ${tenant.primaryColor}`);
    const headings = await page.locator("h2").allInnerTexts();
    for (const h of ["Summary", "Computers and their compliance", "Software installed and updated", "Tasks remediated",
      "Failures and what was done about them", "Postponed by end users", "Signed session records"]) {
      assert(headings.some((x) => x.startsWith(h)), `no section "${h}" in ${JSON.stringify(headings)}`);
    }
    const text = await page.locator("body").innerText();
    for (const c of r.computers) assert(text.includes(c.name), `computer ${c.name} not listed`);
    assert(await page.locator("script").count() === 0, "the report page carries a script");
    const [sw, cw] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    assert(sw <= cw, `${name}: the page is wider than the viewport (${sw} > ${cw})`);
    const file = path.join(shotDir, `report-${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    step(`screenshot ${file}`);
    await context.close();
  }
  const pdf = await fetch(r.pdfUrl, { headers: { authorization: `Bearer ${token}` } });
  assert(pdf.status === 200 && pdf.headers.get("content-type") === "application/pdf", `GET ${r.pdfUrl}: ${pdf.status} ${pdf.headers.get("content-type")}`);
  const bytes = Buffer.from(await pdf.arrayBuffer());
  assert(bytes.subarray(0, 5).toString() === "%PDF-", "the PDF does not start with %PDF-");
  step(`PDF ${bytes.length} bytes`);
  assert(problems.length === 0, `problems:\n${problems.join("\n")}`);
  step("report page checks passed");
} catch (e) {
  failed = true;
  console.error(`[report.mjs] FAILED: ${e.stack || e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
