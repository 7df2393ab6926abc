#!/usr/bin/env bash
# Upkeep as a portal team meets it, against a real server (run by .ci/portal, which builds the
# binaries and runs `npm ci` here first):
#
#   audit.mjs    the reference GraphQL-over-HTTP audit (graphql-http): no error, no warning;
#   codegen      docs/codegen.ts over operations/*.graphql and schema/schema.graphql, then
#                `tsc --strict --noEmit` over client.ts, which uses the generated types;
#   apollo.mjs   Apollo Client: relayStylePagination over computers and maintenanceSessions,
#                a subscription that survives a reconnect, persisted queries, batching;
#   graphiql.mjs GraphiQL in headless Chromium with every other host blocked.
#
# Starts upkeep-server-under-test on a free loopback port with a fresh data dir; setup.mjs
# makes a tenant, computers (enrolled over HTTP) and sessions. Exits non-zero on any failure.
# Env: CARGO_TARGET_DIR (default <repo>/target), CHROMIUM_PATH, TIMEOUT_MS, KEEP_TMP=1,
# SCREENSHOT_DIR (default <tmp>/shots).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
server_bin="${CARGO_TARGET_DIR:-$root/target}/debug/upkeep-server-under-test"
[[ -x "$server_bin" ]] || { echo "run.sh: $server_bin is missing: cargo build -p upkeep-tests --bins" >&2; exit 1; }
[[ -d "$here/node_modules/graphql-http" ]] || { echo "run.sh: run 'npm ci' in $here first" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/upkeep-portal.XXXXXX")"
server_pid=""
status=1
log() { echo "[portal/run.sh] $*"; }

cleanup() {
  local rc=$?
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
  [[ -n "$server_pid" ]] && wait "$server_pid" 2>/dev/null || true
  if [[ $status -ne 0 || $rc -ne 0 ]]; then
    echo "[portal/run.sh] FAILED; last lines of the server log ($tmp/server.log):" >&2
    tail -n 40 "$tmp/server.log" >&2 2>/dev/null || true
    echo "[portal/run.sh] kept $tmp" >&2
  elif [[ -z "${KEEP_TMP:-}" ]]; then
    rm -rf "$tmp/data"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port="$(node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')"
url="http://127.0.0.1:$port"
export UPKEEP_URL="$url"
export UPKEEP_EMAIL="admin@msp.example"
export UPKEEP_PASSWORD="correct horse battery staple"
export STATE_FILE="$tmp/state.json"
export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$tmp/shots}"
mkdir -p "$SCREENSHOT_DIR"

log "starting the server on $url (temp dir $tmp)"
env -u UPKEEP_URL -u UPKEEP_EMAIL -u UPKEEP_PASSWORD -u UPKEEP_DATA_DIR -u UPKEEP_SMTP_URL \
  -u UPKEEP_CORS_ORIGINS -u UPKEEP_CORS_HEADERS \
  "$server_bin" --listen "127.0.0.1:$port" --data-dir "$tmp/data" \
  --admin-email "$UPKEEP_EMAIL" --admin-password "$UPKEEP_PASSWORD" \
  >"$tmp/server.log" 2>&1 &
server_pid=$!
for i in $(seq 1 300); do
  if curl -fsS "$url/healthz" >/dev/null 2>&1; then break; fi
  kill -0 "$server_pid" 2>/dev/null || { echo "run.sh: the server exited" >&2; exit 1; }
  [[ $i -eq 300 ]] && { echo "run.sh: no /healthz after 30 s" >&2; exit 1; }
  sleep 0.1
done

cd "$here"
log "audit.mjs (graphql-http serverAudits)"
node audit.mjs

log "codegen (docs/codegen.ts) and tsc --strict"
rm -rf generated
UPKEEP_SCHEMA="$root/schema/schema.graphql" UPKEEP_OPERATIONS="operations/*.graphql" \
  UPKEEP_GENERATED="generated/graphql.ts" \
  node_modules/.bin/graphql-codegen --config "$root/docs/codegen.ts" --silent
[[ -s generated/graphql.ts ]] || { echo "run.sh: codegen wrote no generated/graphql.ts" >&2; exit 1; }
node_modules/.bin/tsc -p tsconfig.json

log "setup.mjs"
node setup.mjs
log "apollo.mjs"
node apollo.mjs
log "graphiql.mjs"
node graphiql.mjs

status=0
log "all portal checks passed"
