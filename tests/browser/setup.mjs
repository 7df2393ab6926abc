// Sets up data for the browser tests through GraphQL (used by run.sh).
//
//   node setup.mjs init      login, a branded tenant, a person, an enrollment key, a software
//                            whose SHELL scripts read/write a version file, and a deployment
//                            ALL_COMPUTERS INSTALLED_LATEST. Writes the state file.
//   node setup.mjs computer  waits until the tenant's computer is online, makes the person its
//                            primary person, and adds the computer to the state file.
//
// Env: UPKEEP_URL, UPKEEP_EMAIL, UPKEEP_PASSWORD, STATE_FILE (JSON written/updated here),
// WORK_DIR (where the software's version file lives), ONLINE_TIMEOUT_MS (default 60000).
// Prints `KEY=value` lines for run.sh on stdout; progress goes to stderr.

import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

const base = (process.env.UPKEEP_URL || "http://127.0.0.1:8080").replace(/\/$/, "");
const email = process.env.UPKEEP_EMAIL;
const password = process.env.UPKEEP_PASSWORD;
const stateFile = process.env.STATE_FILE;
const workDir = process.env.WORK_DIR;
const onlineTimeout = Number(process.env.ONLINE_TIMEOUT_MS || 60000);
const phase = process.argv[2];

const log = (msg) => console.error(`[setup.mjs] ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function gql(token, query, variables = {}) {
  const res = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { throw new Error(`POST /graphql answered ${res.status}: ${text.slice(0, 300)}`); }
  if (body.errors?.length) {
    throw new Error(`GraphQL error: ${body.errors.map((e) => `${e.message} [${e.extensions?.code}]`).join("; ")}`);
  }
  return body.data;
}

async function login() {
  const d = await gql(null, "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
    { e: email, p: password });
  return d.login.token;
}

async function init() {
  if (!workDir) throw new Error("set WORK_DIR");
  const token = await login();
  log("signed in");

  const branding = { companyName: "Contoso Dental Care", primaryColor: "#0f766e", timeZone: "Europe/Berlin" };
  const tenant = (await gql(token, "mutation($i: CreateTenantInput!) { createTenant(input: $i) { id name companyName primaryColor timeZone } }",
    { i: { name: "contoso-dental", ...branding } })).createTenant;
  log(`tenant ${tenant.id} (${tenant.companyName})`);

  const person = (await gql(token, "mutation($i: CreatePersonInput!) { createPerson(input: $i) { id name email } }",
    { i: { tenantId: tenant.id, name: "Dana Reyes", email: "dana.reyes@contoso-dental.example" } })).createPerson;
  log(`person ${person.id} <${person.email}>`);

  const key = (await gql(token, "mutation($t: ID!, $i: CreateEnrollmentKeyInput) { createEnrollmentKey(tenantId: $t, input: $i) { id key } }",
    { t: tenant.id, i: { label: "browser tests" } })).createEnrollmentKey;
  log(`enrollment key ${key.id}`);

  // Detection prints the installed version (first line) or nothing; install writes it.
  const versionFile = path.join(workDir, "notepad-plus-version.txt");
  const q = `'${versionFile.replace(/'/g, "'\\''")}'`;
  const software = (await gql(token, "mutation($i: CreateSoftwareInput!) { createSoftware(input: $i) { id name } }", {
    i: {
      name: "Notepad++",
      tenantId: tenant.id,
      detectionScript: { language: "SHELL", body: `if [ -f ${q} ]; then head -n 1 ${q}; fi` },
      versions: [{ version: "8.7.1", installScript: { language: "SHELL", body: `printf '8.7.1\\n' > ${q}` } }],
      uninstallScript: { language: "SHELL", body: `rm -f ${q}` },
    },
  })).createSoftware;
  log(`software ${software.id} (${software.name}), version file ${versionFile}`);

  const deployment = (await gql(token, "mutation($i: CreateDeploymentInput!) { createDeployment(input: $i) { id } }", {
    i: { tenantId: tenant.id, target: { kind: "ALL_COMPUTERS" }, softwareId: software.id, desiredState: "INSTALLED_LATEST" },
  })).createDeployment;
  log(`deployment ${deployment.id}`);

  const state = { tenant, person, enrollmentKeyId: key.id, software, deploymentId: deployment.id, versionFile };
  if (stateFile) writeFileSync(stateFile, JSON.stringify(state, null, 2));
  console.log(`ENROLLMENT_KEY=${key.key}`);
  console.log(`TENANT_ID=${tenant.id}`);
}

async function computer() {
  if (!stateFile) throw new Error("set STATE_FILE");
  const state = JSON.parse(readFileSync(stateFile, "utf8"));
  const token = await login();
  const deadline = Date.now() + onlineTimeout;
  let found = null;
  while (!found) {
    const d = await gql(token, "query($t: ID) { computers(tenantId: $t, first: 50) { edges { node { id name hostname online } } } }",
      { t: state.tenant.id });
    found = d.computers.edges.map((e) => e.node).find((c) => c.online) || null;
    if (found) break;
    if (Date.now() > deadline) throw new Error(`no computer of tenant ${state.tenant.id} came online within ${onlineTimeout} ms`);
    await sleep(500);
  }
  log(`computer ${found.id} (${found.name}) is online`);
  const c = (await gql(token, "mutation($id: ID!, $i: UpdateComputerInput!) { updateComputer(id: $id, input: $i) { id name primaryPerson { id email } } }",
    { id: found.id, i: { primaryPersonId: state.person.id } })).updateComputer;
  if (c.primaryPerson?.id !== state.person.id) throw new Error(`updateComputer did not set the primary person: ${JSON.stringify(c)}`);
  log(`primary person of ${c.name} is ${c.primaryPerson.email}`);
  state.computer = { id: c.id, name: c.name };
  writeFileSync(stateFile, JSON.stringify(state, null, 2));
  console.log(`COMPUTER_ID=${c.id}`);
}

try {
  if (!email || !password) throw new Error("set UPKEEP_EMAIL and UPKEEP_PASSWORD (and UPKEEP_URL)");
  if (phase === "init") await init();
  else if (phase === "computer") await computer();
  else throw new Error("usage: node setup.mjs init|computer");
} catch (e) {
  console.error(`[setup.mjs] FAILED: ${e.message}`);
  process.exit(1);
}
