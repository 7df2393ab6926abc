// The reference GraphQL-over-HTTP audit (graphql-http's serverAudits) against UPKEEP_URL:
// fails on any error or warning result. Prints every result.
import { serverAudits } from 'graphql-http';

const url = `${process.env.UPKEEP_URL ?? 'http://127.0.0.1:8080'}/graphql`;
let failed = 0;
for (const audit of serverAudits({ url, fetchFn: fetch })) {
  const result = await audit.fn();
  const line = `${result.status.padEnd(7)} ${audit.id} ${audit.name}`;
  if (result.status === 'ok') {
    console.log(line);
  } else {
    failed++;
    console.error(`${line}\n        ${result.reason}`);
    if (result.response) {
      const body = await result.response.text().catch(() => '');
      console.error(`        ${result.response.status} ${result.response.headers.get('content-type')} ${body.slice(0, 300)}`);
    }
  }
}
if (failed > 0) {
  console.error(`audit.mjs: ${failed} audit(s) gave an error or a warning`);
  process.exit(1);
}
console.log('audit.mjs: every audit passed');
