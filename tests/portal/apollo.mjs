// Upkeep through Apollo Client as a portal uses it (Node, @apollo/client + graphql-ws + ws):
//  1. paging with relayStylePagination over `computers` and `maintenanceSessions`: fetchMore
//     until hasNextPage is false, every item seen exactly once, the cache holding them all;
//  2. a subscription that survives a reconnect: the client's socket is cut, graphql-ws
//     reconnects and resubscribes, and events of sessions started afterwards still arrive;
//  3. automatic persisted queries (hash-only over GET, then registration) and BatchHttpLink.
// Data from setup.mjs (STATE_FILE). Fails loudly (exit 1) on any failure.
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import pkg from '@apollo/client/core/core.cjs';
import { relayStylePagination, getMainDefinition } from '@apollo/client/utilities/utilities.cjs';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions/subscriptions.cjs';
import { createPersistedQueryLink } from '@apollo/client/link/persisted-queries/persisted-queries.cjs';
import { BatchHttpLink } from '@apollo/client/link/batch-http/batch-http.cjs';
import { loadErrorMessages, loadDevMessages } from '@apollo/client/dev/dev.cjs';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const { ApolloClient, InMemoryCache, HttpLink, split, gql } = pkg;
loadDevMessages();
loadErrorMessages();
const base = (process.env.UPKEEP_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const state = JSON.parse(readFileSync(process.env.STATE_FILE, 'utf8'));
const TIMEOUT = Number(process.env.TIMEOUT_MS || 20000);
const auth = { authorization: `Bearer ${state.token}` };
const log = (m) => console.log(`[apollo.mjs] ${m}`);
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}
function within(ms, what, promise) {
  let t;
  const timeout = new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

const operations = (name) => readFileSync(new URL(`./operations/${name}.graphql`, import.meta.url), 'utf8');
const COMPUTERS = gql(operations('computers'));
const SESSIONS = gql(operations('sessions'));
const START = gql(operations('start'));
const UPDATES = gql(operations('updates'));

let connections = 0;
const wsClient = createClient({
  url: `${base.replace(/^http/, 'ws')}/graphql/ws`,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${state.token}` },
  retryAttempts: 10,
  retryWait: async () => new Promise((r) => setTimeout(r, 200)),
  shouldRetry: () => true,
  on: { connected: () => { connections++; } },
});

const client = new ApolloClient({
  link: split(
    ({ query }) => {
      const d = getMainDefinition(query);
      return d.kind === 'OperationDefinition' && d.operation === 'subscription';
    },
    new GraphQLWsLink(wsClient),
    new HttpLink({ uri: `${base}/graphql`, headers: { ...auth, 'apollographql-client-name': 'portal-checks' } }),
  ),
  cache: new InMemoryCache({
    typePolicies: {
      Query: {
        fields: {
          computers: relayStylePagination(['tenantId', 'tag', 'search', 'os', 'software', 'filter', 'orderBy']),
          maintenanceSessions: relayStylePagination(['filter', 'orderBy']),
        },
      },
    },
  }),
});

/** Pages through one connection with fetchMore; returns the ids each page brought. */
async function pageThrough(query, field, variables, expected) {
  const watch = client.watchQuery({ query, variables: { ...variables, first: 2 } });
  let sub;
  const firstPage = new Promise((resolve, reject) => {
    sub = watch.subscribe({ next: (r) => { if (!r.loading) resolve(r); }, error: reject });
  });
  try {
    let page = await within(TIMEOUT, `${field}: the first page`, firstPage);
    const seen = page.data[field].edges.map((e) => e.node.id);
    let pages = 1;
    while (page.data[field].pageInfo.hasNextPage) {
      check(pages < 50, `${field}: more than 50 pages`);
      page = await watch.fetchMore({ variables: { after: page.data[field].pageInfo.endCursor } });
      seen.push(...page.data[field].edges.map((e) => e.node.id));
      pages++;
    }
    const merged = watch.getCurrentResult().data[field].edges.map((e) => e.node.id);
    check(new Set(seen).size === seen.length, `${field}: an item came twice: ${seen}`);
    const want = [...expected].sort();
    check(JSON.stringify([...seen].sort()) === JSON.stringify(want), `${field}: saw ${seen.length} items, expected ${want.length}`);
    check(JSON.stringify([...merged].sort()) === JSON.stringify(want), `${field}: the cache holds ${merged.length} items after paging, expected ${want.length}`);
    check(pages >= 3, `${field}: only ${pages} pages of 2`);
    log(`${field}: ${seen.length} items over ${pages} pages, each once; the cache merged them all`);
  } finally {
    sub.unsubscribe();
  }
}

async function paging() {
  await pageThrough(COMPUTERS, 'computers', {}, state.computers);
  await pageThrough(SESSIONS, 'maintenanceSessions', { filter: { tenantId: state.tenant } }, state.sessions);
}

async function subscriptionSurvivesReconnect() {
  const events = [];
  let waiters = [];
  const observable = client.subscribe({ query: UPDATES, variables: { tenantId: state.tenant } });
  const sub = observable.subscribe({
    next: ({ data }) => {
      events.push(data.maintenanceSessionUpdates);
      waiters = waiters.filter((w) => !w());
    },
    error: (e) => { console.error('[apollo.mjs] subscription error', e); process.exitCode = 1; },
  });
  const eventFor = (sessionId, what) => within(TIMEOUT, what, new Promise((resolve) => {
    const test = () => {
      const e = events.find((e) => e.sessionId === sessionId);
      if (e) resolve(e);
      return Boolean(e);
    };
    if (!test()) waiters.push(test);
  }));
  const start = async (computer) => {
    const r = await client.mutate({ mutation: START, variables: { input: { computerIds: [computer], detectionOnly: true } } });
    return r.data.startMaintenanceSession[0].id;
  };
  try {
    await within(TIMEOUT, 'the first connection', (async () => { while (connections < 1) await new Promise((r) => setTimeout(r, 50)); })());
    // Subscribed before anything is started: the server registers the subscription on
    // `subscribe`, which the socket carries right after connection_ack.
    await new Promise((r) => setTimeout(r, 300));
    const before = await start(state.free[0]);
    const e1 = await eventFor(before, 'an event of the session started before the reconnect');
    log(`event before the reconnect: session ${before} #${e1.sequence} ${e1.status}`);
    // Cut the socket from the client side; graphql-ws reconnects and resubscribes.
    wsClient.terminate();
    await within(TIMEOUT, 'the reconnect', (async () => { while (connections < 2) await new Promise((r) => setTimeout(r, 50)); })());
    await new Promise((r) => setTimeout(r, 300));
    const after = await start(state.free[1]);
    const e2 = await eventFor(after, 'an event of the session started after the reconnect');
    log(`event after the reconnect (connection ${connections}): session ${after} #${e2.sequence} ${e2.status}`);
  } finally {
    sub.unsubscribe();
  }
}

async function persistedQueriesAndBatches() {
  const sha256 = (q) => createHash('sha256').update(q).digest('hex');
  const seen = [];
  const recording = async (uri, init) => {
    const res = await fetch(uri, init);
    const clone = res.clone();
    seen.push({ method: init?.method ?? 'GET', status: res.status, body: await clone.text() });
    return res;
  };
  const apq = new ApolloClient({
    link: createPersistedQueryLink({ sha256, useGETForHashedQueries: true }).concat(
      new HttpLink({ uri: `${base}/graphql`, headers: auth, fetch: recording }),
    ),
    cache: new InMemoryCache(),
  });
  const ME = gql`query PortalMe { me { email role } }`;
  const first = await apq.query({ query: ME, fetchPolicy: 'network-only' });
  check(first.data.me.role === 'MSP_ADMIN', 'APQ: the first query answered');
  check(seen.some((s) => s.body.includes('PersistedQueryNotFound')), `APQ: the server asked for the query: ${JSON.stringify(seen)}`);
  seen.length = 0;
  const second = await apq.query({ query: ME, fetchPolicy: 'network-only' });
  check(second.data.me.email === first.data.me.email, 'APQ: the hash-only query answered');
  check(seen.length === 1 && seen[0].method === 'GET', `APQ: one hash-only GET: ${JSON.stringify(seen)}`);
  log('persisted queries: not found, registered, then hash-only over GET');

  seen.length = 0;
  const batched = new ApolloClient({
    link: new BatchHttpLink({ uri: `${base}/graphql`, headers: auth, batchMax: 5, batchInterval: 20, fetch: recording }),
    cache: new InMemoryCache(),
  });
  const [a, b] = await Promise.all([
    batched.query({ query: ME }),
    batched.query({ query: gql`query PortalCount { computers(first: 1) { totalCount } }` }),
  ]);
  check(a.data.me.role === 'MSP_ADMIN' && b.data.computers.totalCount === state.computers.length, 'batch: both answered');
  check(seen.length === 1 && seen[0].body.startsWith('['), `batch: one request, an array answer: ${JSON.stringify(seen)}`);
  log('BatchHttpLink: two queries in one request, answered in order');
}

try {
  await paging();
  await subscriptionSurvivesReconnect();
  await persistedQueriesAndBatches();
  log('all Apollo Client checks passed');
} catch (e) {
  console.error(`[apollo.mjs] FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await wsClient.dispose();
  client.stop();
}
