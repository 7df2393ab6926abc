// Drives the end user's postpone page (GET/POST /postpone/{token}) in a real headless Chromium,
// from the link in a real before-mail.
//
//   cd tests/browser && npm install && \
//   UPKEEP_URL=http://127.0.0.1:8080 UPKEEP_EMAIL=admin@msp.example UPKEEP_PASSWORD=... \
//   UPKEEP_DATA_DIR=/path/to/data SCREENSHOT_DIR=/tmp/shots node postpone.mjs
//
// The server must run without an SMTP URL, so mails land as .eml files in
// <data-dir>/outbox-files/. Needs an online computer with a primary person and at least one
// deployment that plans a change on it (run.sh sets that up; COMPUTER_ID or STATE_FILE picks the
// computer, otherwise the first online computer with a primary person).
//
// Steps: starts a session executing in 3 hours (notifyBefore, maxPostpones 2) and waits for
// SCHEDULED; finds the before-mail, decodes its text part and takes the /postpone/<token> link;
// GET shows the confirm page (company, computer, planned software, time, 2 postpones left, a
// Postpone button; desktop and 390x844 screenshots), and changes nothing; clicking Postpone
// shows the postponed page with the new time and the session is POSTPONED with postponeCount 1;
// the same link again answers 410 "already used" (GET and POST) and changes nothing; a forged
// token answers 400. Exits non-zero on any failure, on a page error, a console error or a
// request to another origin (the page must be self-contained).
//
// Optional env: CHROMIUM_PATH (default /usr/bin/chromium), TIMEOUT_MS (default 90000) for the
// session to reach SCHEDULED and for the mail.

import { chromium } from "playwright-core";
import { mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";

const base = (process.env.UPKEEP_URL || "http://127.0.0.1:8080").replace(/\/$/, "");
const email = process.env.UPKEEP_EMAIL;
const password = process.env.UPKEEP_PASSWORD;
const dataDir = process.env.UPKEEP_DATA_DIR;
const shotDir = process.env.SCREENSHOT_DIR || ".";
const chromiumPath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const timeout = Number(process.env.TIMEOUT_MS || 90000);
const stateFile = process.env.STATE_FILE;

if (!email || !password || !dataDir) {
  console.error("postpone.mjs: set UPKEEP_EMAIL, UPKEEP_PASSWORD and UPKEEP_DATA_DIR (and UPKEEP_URL)");
  process.exit(2);
}
mkdirSync(shotDir, { recursive: true });
const origin = new URL(base).origin;
const step = (msg) => console.log(`[postpone.mjs] ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const assert = (cond, msg) => { if (!cond) throw new Error(msg); };

// ---------------------------------------------------------------- GraphQL

let token = null;
async function gql(query, variables = {}) {
  const res = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { throw new Error(`POST /graphql answered ${res.status}: ${text.slice(0, 300)}`); }
  if (body.errors?.length) throw new Error(`GraphQL: ${body.errors.map((e) => `${e.message} [${e.extensions?.code}]`).join("; ")}`);
  return body.data;
}
const SESSION = `query($id: ID!) { maintenanceSession(id: $id) {
  id status statusReason executeAt postponeCount
  actions { kind status name software { name } } } }`;
const session = async (id) => (await gql(SESSION, { id })).maintenanceSession;

// ---------------------------------------------------------------- MIME

const unfold = (s) => s.replace(/\r?\n[ \t]+/g, " ");
function splitMessage(raw) {
  const m = /\r?\n\r?\n/.exec(raw);
  const head = m ? raw.slice(0, m.index) : raw;
  const body = m ? raw.slice(m.index + m[0].length) : "";
  const headers = {};
  for (const line of unfold(head).split(/\r?\n/)) {
    const i = line.indexOf(":");
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return { headers, body };
}
function param(value, name) {
  const m = new RegExp(`;\\s*${name}\\s*=\\s*(?:"([^"]*)"|([^;\\s]+))`, "i").exec(value || "");
  return m ? (m[1] ?? m[2]) : null;
}
function decodeQuotedPrintable(s) {
  const bytes = [];
  const src = s.replace(/=\r?\n/g, ""); // soft line breaks
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === "=" && /^[0-9A-Fa-f]{2}$/.test(src.slice(i + 1, i + 3))) {
      bytes.push(parseInt(src.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(c.charCodeAt(0) & 0xff); // the raw mail is read as latin1: one char per byte
    }
  }
  return Buffer.from(bytes);
}
function decodeBody(body, cte) {
  switch ((cte || "7bit").toLowerCase()) {
    case "base64": return Buffer.from(body.replace(/\s+/g, ""), "base64");
    case "quoted-printable": return decodeQuotedPrintable(body);
    default: return Buffer.from(body, "latin1"); // 7bit/8bit: the bytes as read
  }
}
// Leaf parts as { type, text }, depth first.
function leafParts(raw) {
  const { headers, body } = splitMessage(raw);
  const ctype = headers["content-type"] || "text/plain; charset=us-ascii";
  const type = ctype.split(";")[0].trim().toLowerCase();
  if (type.startsWith("multipart/")) {
    const boundary = param(ctype, "boundary");
    if (!boundary) throw new Error(`multipart without boundary: ${ctype}`);
    const delim = `--${boundary}`;
    const parts = [];
    for (const chunk of body.split(delim).slice(1)) {
      if (chunk.startsWith("--")) break; // closing delimiter
      parts.push(...leafParts(chunk.replace(/^[ \t]*\r?\n/, "").replace(/\r?\n$/, "")));
    }
    return parts;
  }
  const charset = (param(ctype, "charset") || "utf-8").toLowerCase();
  const buf = decodeBody(body, headers["content-transfer-encoding"]);
  const text = new TextDecoder(charset === "us-ascii" ? "utf-8" : charset).decode(buf);
  return [{ type, text }];
}

// The newest before-mail to `rcpt` written at or after `since` that carries a postpone link.
async function waitForBeforeMail(rcpt, since) {
  const dir = path.join(dataDir, "outbox-files");
  const deadline = Date.now() + timeout;
  for (;;) {
    let files = [];
    try { files = readdirSync(dir).filter((f) => f.endsWith(".eml")); } catch { /* not yet created */ }
    const candidates = [];
    for (const f of files) {
      const file = path.join(dir, f);
      const mtime = statSync(file).mtimeMs;
      if (mtime < since - 2000) continue;
      const raw = readFileSync(file, "latin1"); // bytes as-is; parts are decoded by charset
      const { headers } = splitMessage(raw);
      if (!(headers.to || "").toLowerCase().includes(rcpt.toLowerCase())) continue;
      const parts = leafParts(raw);
      const text = parts.find((p) => p.type === "text/plain")?.text;
      const html = parts.find((p) => p.type === "text/html")?.text;
      if (text && /\/postpone\//.test(text)) candidates.push({ file, mtime, headers, text, html, parts });
    }
    if (candidates.length) return candidates.sort((a, b) => b.mtime - a.mtime)[0];
    if (Date.now() > deadline) throw new Error(`no before-mail with a postpone link to ${rcpt} in ${dir} within ${timeout} ms (files: ${files.join(", ") || "none"})`);
    await sleep(500);
  }
}

// The server's format_when: "%A, %-d %B %Y at %H:%M <abbreviation>"; compared up to the
// minute (Intl's short zone names are not chrono-tz's: "GMT+1" for "CET").
function formatWhen(iso, timeZone) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", {
    timeZone, weekday: "long", day: "numeric", month: "long", year: "numeric",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  }).formatToParts(new Date(iso)).map((p) => [p.type, p.value]));
  return `${parts.weekday}, ${parts.day} ${parts.month} ${parts.year} at ${parts.hour}:${parts.minute}`;
}

// ---------------------------------------------------------------- browser

const problems = [];
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
async function newPage(contextOptions) {
  const context = await browser.newContext({ javaScriptEnabled: true, ...contextOptions });
  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  // A document's own 4xx (the used and forged links answer 410 and 400 on purpose) and the
  // browser's own /favicon.ico probe are expected; any other failing resource is a problem, and
  // Chromium's "Failed to load resource" console line is judged here instead.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console error: ${m.text()}`);
  });
  page.on("response", (r) => {
    const u = new URL(r.url());
    if (r.status() >= 400 && r.request().resourceType() !== "document" && u.pathname !== "/favicon.ico") {
      problems.push(`${r.request().resourceType()} ${r.url()} answered ${r.status()}`);
    }
  });
  page.on("request", (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith("data:")) problems.push(`request to another origin: ${r.url()}`);
  });
  return page;
}
async function shot(page, name) {
  const file = path.join(shotDir, name);
  await page.screenshot({ path: file, fullPage: true });
  step(`screenshot ${file}`);
}
const pageText = async (page) => (await page.locator("body").innerText()).replace(/\s+/g, " ").trim();
async function noHorizontalOverflow(page, what) {
  const [sw, cw] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  assert(sw <= cw, `${what}: the page is wider than the viewport (${sw} > ${cw})`);
}
const rgb = (hex) => { const n = parseInt(hex.slice(1), 16); return `rgb(${n >> 16}, ${(n >> 8) & 255}, ${n & 255})`; };

let failed = false;
let page = null;
try {
  token = (await gql("mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }", { e: email, p: password })).login.token;
  step("signed in to GraphQL");

  // The computer: COMPUTER_ID, the state file of setup.mjs, or the first online one with a person.
  let computerId = process.env.COMPUTER_ID || (stateFile ? JSON.parse(readFileSync(stateFile, "utf8")).computer?.id : null);
  if (!computerId) {
    const d = await gql("{ computers(first: 100) { edges { node { id online primaryPerson { id } } } } }");
    computerId = d.computers.edges.map((e) => e.node).find((c) => c.online && c.primaryPerson)?.id;
    assert(computerId, "no online computer with a primary person");
  }
  const computer = (await gql(`query($id: ID!) { computer(id: $id) { id name online
      primaryPerson { name email } tenant { id name companyName primaryColor timeZone } } }`, { id: computerId })).computer;
  assert(computer?.primaryPerson, `computer ${computerId} has no primary person`);
  const company = computer.tenant.companyName || computer.tenant.name;
  const tz = computer.tenant.timeZone || "UTC";
  step(`computer ${computer.name} (${computer.id}) of ${company}, mails to ${computer.primaryPerson.email}`);

  // A session executing in 3 hours, with a before-mail and at most 2 postpones.
  const started = Date.now();
  const executeAt = new Date(started + 3 * 3600 * 1000).toISOString();
  const [created] = (await gql(`mutation($i: StartMaintenanceSessionInput!) { startMaintenanceSession(input: $i) { id status } }`, {
    i: { computerIds: [computer.id], executeAt, options: { notifyBefore: true, maxPostpones: 2 } },
  })).startMaintenanceSession;
  step(`started session ${created.id} (${created.status}), executeAt ${executeAt}; waiting for SCHEDULED`);
  let s;
  for (const deadline = Date.now() + timeout; ; await sleep(500)) {
    s = await session(created.id);
    if (s.status === "SCHEDULED") break;
    assert(["PENDING", "DETECTING"].includes(s.status), `session ${s.id} went ${s.status} (${s.statusReason}) instead of SCHEDULED`);
    assert(Date.now() < deadline, `session ${s.id} still ${s.status} after ${timeout} ms (${s.statusReason})`);
  }
  const planned = s.actions.filter((a) => a.kind !== "NO_ACTION");
  assert(planned.length > 0, `the session plans no change: ${JSON.stringify(s.actions)}`);
  const softwareName = planned[0].software?.name || planned[0].name;
  const when = formatWhen(s.executeAt, tz);
  step(`SCHEDULED: ${planned.map((a) => `${a.kind} ${a.software?.name || a.name}`).join(", ")} at ${when}`);

  // The before-mail and its link.
  const mail = await waitForBeforeMail(computer.primaryPerson.email, started);
  step(`before-mail ${path.basename(mail.file)}: "${mail.headers.subject}" (${mail.parts.map((p) => p.type).join(" + ")})`);
  const linkMatch = /(https?:\/\/[^\s<>"]+\/postpone\/[A-Za-z0-9._~-]+)/.exec(mail.text);
  assert(linkMatch, `no postpone link in the text part:\n${mail.text}`);
  const link = linkMatch[1];
  const tokenPart = link.slice(link.lastIndexOf("/") + 1);
  assert(link.startsWith(`${origin}/postpone/`), `the link ${link} does not point at ${origin}`);
  assert(mail.html && mail.html.includes(`/postpone/${tokenPart}`), "the HTML part does not carry the same postpone link");
  assert(mail.text.includes(computer.name), "the mail's text does not name the computer");
  step(`postpone link ${link.slice(0, 60)}…`);

  // GET: the confirm page (desktop).
  page = await newPage({ viewport: { width: 1280, height: 800 } });
  const get1 = await page.goto(link);
  assert(get1 && get1.status() === 200, `GET ${link} answered ${get1 && get1.status()}`);
  let text = await pageText(page);
  const h1 = async () => (await page.locator("h1").innerText()).trim();
  assert(/planned maintenance/i.test(await h1()), `confirm page heading: ${await h1()}`);
  assert(text.includes(company), `the confirm page does not show the company "${company}": ${text}`);
  assert(text.includes(computer.name), `the confirm page does not show the computer "${computer.name}": ${text}`);
  assert(text.includes(softwareName), `the confirm page does not show the planned software "${softwareName}": ${text}`);
  assert(text.includes(when), `the confirm page does not show the planned time "${when}": ${text}`);
  assert(/\b2 more times\b|\b2 postpones?\b|\b2 (times )?(left|remaining)\b/i.test(text), `the confirm page does not say 2 postpones remain: ${text}`);
  const postponeButton = page.getByRole("button", { name: "Postpone", exact: true });
  assert(await postponeButton.isVisible(), "no visible Postpone button");
  assert((await page.title()).includes(company), `the page title does not name the company: ${await page.title()}`);
  if (computer.tenant.primaryColor) {
    const bg = await postponeButton.evaluate((b) => getComputedStyle(b).backgroundColor);
    assert(bg === rgb(computer.tenant.primaryColor), `the Postpone button is ${bg}, not the brand colour ${computer.tenant.primaryColor}`);
  }
  await noHorizontalOverflow(page, "confirm page (desktop)");
  step("confirm page shows company, computer, software, time, 2 postpones left and a Postpone button");
  await shot(page, "postpone-confirm.png");

  // GET on a phone (same link: GET changes nothing, so it can be opened again).
  const phone = await newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const getPhone = await phone.goto(link);
  assert(getPhone && getPhone.status() === 200, `GET on the phone answered ${getPhone && getPhone.status()}`);
  await noHorizontalOverflow(phone, "confirm page (390x844)");
  const box = await phone.getByRole("button", { name: "Postpone", exact: true }).boundingBox();
  assert(box && box.x >= 0 && box.x + box.width <= 390 && box.height >= 40, `the Postpone button on the phone: ${JSON.stringify(box)}`);
  await shot(phone, "postpone-confirm-mobile.png");
  await phone.context().close();

  // GET changed nothing.
  s = await session(created.id);
  assert(s.status === "SCHEDULED" && s.postponeCount === 0, `after GET: ${s.status}, postponeCount ${s.postponeCount}`);
  step("after two GETs the session is still SCHEDULED with postponeCount 0");

  // POST: click Postpone.
  const [post] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === "POST" && r.url() === link),
    postponeButton.click(),
  ]);
  assert([200, 303].includes(post.status()), `POST answered ${post.status()}`);
  await page.waitForFunction(() => /postponed/i.test(document.querySelector("h1")?.textContent || ""), null, { timeout: 10000 });
  s = await session(created.id);
  assert(s.status === "POSTPONED" && s.postponeCount === 1, `after POST: ${s.status}, postponeCount ${s.postponeCount}`);
  const newWhen = formatWhen(s.executeAt, tz);
  text = await pageText(page);
  assert(text.includes(computer.name), `the outcome page does not name the computer: ${text}`);
  assert(text.includes(newWhen), `the outcome page does not show the new time "${newWhen}": ${text}`);
  assert(/1 more time\b/i.test(text), `the outcome page does not say 1 postpone remains: ${text}`);
  assert(await page.getByRole("button").count() === 0, "the outcome page still offers buttons");
  await noHorizontalOverflow(page, "outcome page");
  step(`POST ${post.status()}: postponed to ${newWhen}; GraphQL says POSTPONED, postponeCount 1`);
  await shot(page, "postpone-done.png");

  // The same link again: used (410), nothing changes.
  const get2 = await page.goto(link);
  assert(get2 && get2.status() === 410, `GET of the used link answered ${get2 && get2.status()}`);
  text = await pageText(page);
  assert(/already been used/i.test(text), `the used-link page does not say so: ${text}`);
  assert(await page.getByRole("button").count() === 0, "the used-link page offers buttons");
  await shot(page, "postpone-used.png");
  const rePost = await fetch(link, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: "action=postpone", redirect: "manual" });
  assert(rePost.status === 410, `POST of the used link answered ${rePost.status}`);
  s = await session(created.id);
  assert(s.status === "POSTPONED" && s.postponeCount === 1, `after reusing the link: ${s.status}, postponeCount ${s.postponeCount}`);
  step("the used link answers 410 (GET and POST) and changes nothing");

  // A forged token (one character of the signature changed): 400, nothing changes.
  const sigAt = tokenPart.lastIndexOf(".") + 5;
  const forged = tokenPart.slice(0, sigAt) + (tokenPart[sigAt] === "A" ? "B" : "A") + tokenPart.slice(sigAt + 1);
  const get3 = await page.goto(`${origin}/postpone/${forged}`);
  assert(get3 && get3.status() === 400, `GET of a forged link answered ${get3 && get3.status()}`);
  assert(/not valid/i.test(await pageText(page)), "the forged-link page does not say the link is not valid");
  s = await session(created.id);
  assert(s.postponeCount === 1, `after the forged link: postponeCount ${s.postponeCount}`);
  step("a forged link answers 400 and changes nothing");

  if (problems.length) throw new Error(problems.join("\n"));
  step("OK");
} catch (e) {
  failed = true;
  console.error(`[postpone.mjs] FAILED: ${e.message}`);
  if (problems.length) console.error(problems.join("\n"));
  if (page) { try { await shot(page, "postpone-failure.png"); } catch { /* the page may be gone */ } }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
