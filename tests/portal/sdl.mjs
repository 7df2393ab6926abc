// The committed SDL (schema/schema.graphql) is the schema the server serves: graphql-js prints
// both the same — the committed file parsed, and the running server's introspection (what
// portal tools download) — so a portal team may build against either. Descriptions, defaults,
// deprecations and @specifiedBy included.
import { readFileSync } from 'node:fs';
import { buildClientSchema, buildSchema, getIntrospectionQuery, printSchema } from 'graphql';

const url = `${process.env.UPKEEP_URL ?? 'http://127.0.0.1:8080'}/graphql`;
const login = await fetch(url, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({
    query: 'mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }',
    variables: { e: process.env.UPKEEP_EMAIL, p: process.env.UPKEEP_PASSWORD },
  }),
}).then((r) => r.json());
const token = login.data.login.token;
const answer = await fetch(url, {
  method: 'POST',
  headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
  body: JSON.stringify({
    query: getIntrospectionQuery({ specifiedByUrl: true, inputValueDeprecation: true }),
  }),
}).then((r) => r.json());
if (answer.errors) {
  console.error('sdl.mjs: introspection failed', JSON.stringify(answer.errors));
  process.exit(1);
}
const served = printSchema(buildClientSchema(answer.data));
const committed = printSchema(buildSchema(readFileSync(process.argv[2], 'utf8')));
if (served !== committed) {
  const a = served.split('\n');
  const b = committed.split('\n');
  const at = a.findIndex((line, i) => line !== b[i]);
  console.error(`sdl.mjs: the committed SDL differs from the served schema at line ${at + 1}:`);
  console.error(`  served:    ${a[at]}\n  committed: ${b[at]}`);
  process.exit(1);
}
console.log(`sdl.mjs: the committed SDL prints as the served schema (${served.split("\n").length} lines)`);

