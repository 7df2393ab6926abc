// Data for the portal checks, made through the public API as a portal's back office would:
// signs in, creates a tenant and an enrollment key, enrolls COMPUTERS computers over the agent
// protocol (plain HTTP, no agent process), and starts a session on the first SESSIONS of them.
// The rest stay free for apollo.mjs to start sessions on while it is subscribed.
//
// Env: UPKEEP_URL, UPKEEP_EMAIL, UPKEEP_PASSWORD, STATE_FILE (JSON written here).
import { writeFileSync } from 'node:fs';

const base = (process.env.UPKEEP_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const COMPUTERS = 7;
const SESSIONS = 5;

export async function gql(token, query, variables = {}) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json;q=0.9',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  if (!res.ok || body.errors?.length) {
    throw new Error(`${res.status}: ${JSON.stringify(body.errors ?? body)}`);
  }
  return body.data;
}

const { login } = await gql(null, 'mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }', {
  e: process.env.UPKEEP_EMAIL,
  p: process.env.UPKEEP_PASSWORD,
});
const token = login.token;
const tenant = (await gql(token, 'mutation { createTenant(input: { name: "portal-checks", timeZone: "Europe/Berlin" }) { id } }')).createTenant.id;
const key = (await gql(token, 'mutation($t: ID!) { createEnrollmentKey(tenantId: $t, input: { label: "portal" }) { key } }', { t: tenant })).createEnrollmentKey.key;

const computers = [];
for (let i = 1; i <= COMPUTERS; i++) {
  const res = await fetch(`${base}/agent/v1/enroll`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      protocolVersion: 1,
      enrollmentKey: key,
      hostname: `portal-pc-${i}`,
      machineId: `portal-machine-${i}-${Date.now()}`,
      os: 'Debian GNU/Linux 12',
      agentVersion: '0.0.0-portal',
    }),
  });
  if (!res.ok) throw new Error(`enroll ${i}: ${res.status} ${await res.text()}`);
  computers.push((await res.json()).computerId);
}
const started = await gql(token, 'mutation($c: [ID!]!) { startMaintenanceSession(input: { computerIds: $c, detectionOnly: true }) { id } }', {
  c: computers.slice(0, SESSIONS),
});
const sessions = started.startMaintenanceSession.map((s) => s.id);
if (sessions.length !== SESSIONS) throw new Error(`started ${sessions.length} sessions, wanted ${SESSIONS}`);
writeFileSync(process.env.STATE_FILE, JSON.stringify({ token, tenant, computers, sessions, free: computers.slice(SESSIONS) }, null, 2));
console.error(`[setup.mjs] tenant ${tenant}: ${computers.length} computers, ${sessions.length} sessions`);
