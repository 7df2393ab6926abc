#!/usr/bin/env bash
# End-to-end browser tests against a real server and a real agent (run by .ci/browser, which
# builds the binaries and runs `npm install` here first).
#
# Starts upkeep-server-under-test on a free loopback port with a fresh data dir and no SMTP URL
# (mails become .eml files in <data-dir>/outbox-files/), sets up a branded tenant, a person, a
# software with a deployment and an enrollment key (setup.mjs), starts one agent, waits until
# its computer is online and gives it the person, then runs console.mjs (operator console),
# postpone.mjs (the end user's postpone page) and report.mjs (the tenant's monthly report page).
# Exits non-zero when anything fails.
#
# Env: SCREENSHOT_DIR (default <tmp>/shots), CARGO_TARGET_DIR (default <repo>/target),
# CHROMIUM_PATH, TIMEOUT_MS (passed on to the node scripts), KEEP_TMP=1 keeps the temp dir.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
server_bin="$bin/upkeep-server-under-test"
agent_bin="$bin/upkeep-agent-under-test"
for b in "$server_bin" "$agent_bin"; do
  [[ -x "$b" ]] || { echo "run.sh: $b is missing: cargo build -p upkeep-tests --bins" >&2; exit 1; }
done
[[ -d "$here/node_modules/playwright-core" ]] || { echo "run.sh: run 'npm install' in $here first" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/upkeep-browser.XXXXXX")"
shots="${SCREENSHOT_DIR:-$tmp/shots}"
mkdir -p "$shots" "$tmp/work"
server_pid=""
agent_pid=""
status=1

log() { echo "[run.sh] $*"; }

cleanup() {
  local rc=$?
  [[ -n "$agent_pid" ]] && kill "$agent_pid" 2>/dev/null || true
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
  [[ -n "$agent_pid" ]] && wait "$agent_pid" 2>/dev/null || true
  [[ -n "$server_pid" ]] && wait "$server_pid" 2>/dev/null || true
  if [[ $status -ne 0 || $rc -ne 0 ]]; then
    echo "[run.sh] FAILED; last lines of the server log ($tmp/server.log):" >&2
    tail -n 40 "$tmp/server.log" >&2 2>/dev/null || true
    echo "[run.sh] last lines of the agent log ($tmp/agent.log):" >&2
    tail -n 20 "$tmp/agent.log" >&2 2>/dev/null || true
    echo "[run.sh] kept $tmp" >&2
  elif [[ -z "${KEEP_TMP:-}" ]]; then
    # Keep the screenshots (and logs); drop the store and the agent's state.
    rm -rf "$tmp/data" "$tmp/agent-state" "$tmp/work"
  fi
  echo "[run.sh] screenshots: $shots"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port="$(node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });')"
url="http://127.0.0.1:$port"
export UPKEEP_URL="$url"
export UPKEEP_EMAIL="admin@msp.example"
export UPKEEP_PASSWORD="correct horse battery staple"
export UPKEEP_DATA_DIR="$tmp/data"
export SCREENSHOT_DIR="$shots"
export STATE_FILE="$tmp/state.json"
export WORK_DIR="$tmp/work"

log "temp dir $tmp"
log "starting the server on $url"
# The variables would be read by the server too; pass everything as flags and keep the
# environment free of UPKEEP_* for it.
env -u UPKEEP_URL -u UPKEEP_EMAIL -u UPKEEP_PASSWORD -u UPKEEP_DATA_DIR -u UPKEEP_SMTP_URL \
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
log "server is healthy"

cd "$here"
setup_out="$(node setup.mjs init)"
enrollment_key="$(sed -n 's/^ENROLLMENT_KEY=//p' <<<"$setup_out")"
[[ -n "$enrollment_key" ]] || { echo "run.sh: setup.mjs gave no enrollment key" >&2; exit 1; }

log "starting the agent"
env -u UPKEEP_URL -u UPKEEP_EMAIL -u UPKEEP_PASSWORD -u UPKEEP_DATA_DIR \
  "$agent_bin" --server "$url" --enrollment-key "$enrollment_key" --state-dir "$tmp/agent-state" \
  --machine-id "browser-test-$(basename "$tmp")" --reboot-command true --hostname RECEPTION-PC-01 \
  >"$tmp/agent.log" 2>&1 &
agent_pid=$!

node setup.mjs computer >/dev/null

log "console.mjs"
node console.mjs
log "postpone.mjs"
node postpone.mjs
log "report.mjs"
node report.mjs

status=0
log "all browser tests passed"
