// GraphiQL offline, in Debian's headless Chromium: every request to a host other than the
// server is blocked (and recorded: any such attempt fails the check). The page must render the
// editor with its default query (not "Loading…"), load the schema, break no CSP rule, and run
// a subscription in its pane over /graphql/ws with the token from the headers pane (a replay
// of a stored session's events).
// Env: UPKEEP_URL, STATE_FILE (setup.mjs), CHROMIUM_PATH, TIMEOUT_MS, SCREENSHOT_DIR.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const base = (process.env.UPKEEP_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const state = JSON.parse(readFileSync(process.env.STATE_FILE, 'utf8'));
const timeout = Number(process.env.TIMEOUT_MS || 30000);
const shots = process.env.SCREENSHOT_DIR;
const log = (m) => console.log(`[graphiql.mjs] ${m}`);
const host = new URL(base).host;
const problems = [];
const outside = [];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  // The network beyond the server is gone.
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.host === host || url.protocol === 'data:') return route.continue();
    outside.push(url.href);
    return route.abort('blockedbyclient');
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  // The subscription must travel over the WebSocket, not HTTP.
  let wsFrames = 0;
  page.on('websocket', (ws) => ws.on('framereceived', () => { wsFrames++; }));
  page.on('requestfailed', (r) => {
    if (new URL(r.url()).host === host) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });

  // 1. The page renders the editor with the default query.
  await page.goto(`${base}/graphql`, { waitUntil: 'load' });
  await page.waitForSelector('.graphiql-query-editor .CodeMirror', { timeout });
  const text = await page.textContent('#graphiql');
  if (/^\s*Loading…\s*$/.test(text)) throw new Error('GraphiQL is still "Loading…"');
  const query = await page.evaluate(() => document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.getValue());
  for (const want of ['Authorization', 'computers(first:', 'mutation Login']) {
    if (!query.includes(want)) throw new Error(`the default query lacks ${want}: ${query}`);
  }
  // The schema loaded (introspection over POST /graphql): the docs explorer lists Query.
  await page.click('button[aria-label="Show Documentation Explorer"]');
  await page.waitForSelector('.graphiql-doc-explorer >> text=Query', { timeout });
  log('the editor shows the default query and the schema loaded');
  if (shots) await page.screenshot({ path: `${shots}/graphiql.png` });

  // 2. A subscription in the pane, with the credential from the headers pane.
  const subscription = `subscription Replay {\n  maintenanceSessionUpdates(sessionId: "${state.sessions[0]}", afterSequence: 0) {\n    sessionId\n    sequence\n    status\n  }\n}\n`;
  await page.goto(`${base}/graphql?query=${encodeURIComponent(subscription)}`, { waitUntil: 'load' });
  await page.waitForSelector('.graphiql-query-editor .CodeMirror', { timeout });
  await page.evaluate((h) => {
    document.querySelector('.graphiql-editor-tool[aria-label="Headers"] .graphiql-editor:not(.hidden) .CodeMirror').CodeMirror.setValue(h);
  }, JSON.stringify({ Authorization: `Bearer ${state.token}` }));
  await page.click('.graphiql-query-editor .CodeMirror');
  await page.keyboard.press('Control+Enter');
  await page.waitForFunction(
    (id) => {
      const r = document.querySelector('.result-window .CodeMirror')?.CodeMirror?.getValue() ?? '';
      return r.includes(id) && r.includes('"sequence": 1');
    },
    state.sessions[0],
    { timeout },
  );
  const result = await page.evaluate(() => document.querySelector('.result-window .CodeMirror').CodeMirror.getValue());
  if (result.includes('"errors"')) throw new Error(`the subscription answered errors: ${result}`);
  if (wsFrames < 2) throw new Error(`the subscription did not run over /graphql/ws (${wsFrames} frames)`);
  log('the subscription pane replayed the session\'s events over /graphql/ws');
  if (shots) await page.screenshot({ path: `${shots}/graphiql-subscription.png` });
} finally {
  await browser.close();
}
if (outside.length) problems.push(`requests to other hosts: ${outside.join(', ')}`);
if (problems.length) {
  console.error(`[graphiql.mjs] FAILED:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
log('GraphiQL works offline');
