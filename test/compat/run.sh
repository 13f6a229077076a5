#!/usr/bin/env bash
# Compatibility suite: real clients (the openai and @anthropic-ai/sdk Node
# SDKs, opencode, the README's curl lines) against a real gateway.
#
# Expects bin/llmproxy and bin/mockllm (make build); builds nothing itself.
# Installs the pinned npm packages (npm ci), starts mockllm and
# `llmproxy serve --target all` with a config of its own in a temp dir, runs
# the tests with node's test runner, stops both and exits non-zero on any
# failure.
#
# Environment:
#   COMPAT_SKIP_NPM_CI=1   reuse test/compat/node_modules as it is
#   COMPAT_KEEP_TMP=1      keep the temp dir (config, data_dir, logs)
#   COMPAT_TESTS="a.test.mjs b.test.mjs"   run only these files
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
llmproxy="$root/bin/llmproxy"
mockllm="$root/bin/mockllm"

for b in "$llmproxy" "$mockllm"; do
  if [ ! -x "$b" ]; then
    echo "compat: $b not found; run 'make build' first" >&2
    exit 2
  fi
done
command -v node >/dev/null || { echo "compat: node not found" >&2; exit 2; }
command -v curl >/dev/null || { echo "compat: curl not found" >&2; exit 2; }

cd "$here"
if [ "${COMPAT_SKIP_NPM_CI:-}" != 1 ] || [ ! -d node_modules ]; then
  echo "== npm ci (test/compat)"
  npm ci --no-audit --no-fund --loglevel=error
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/llmproxy-compat.XXXXXX")"
mock_pid=""
gw_pid=""
cleanup() {
  local rc=$?
  for p in $gw_pid $mock_pid; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in $gw_pid $mock_pid; do
    wait "$p" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ]; then
    echo "== compat failed (exit $rc); last lines of the process logs:" >&2
    for f in "$tmp/mockllm.log" "$tmp/llmproxy.log"; do
      [ -f "$f" ] && { echo "-- $f" >&2; tail -n 40 "$f" >&2; }
    done
  fi
  if [ "${COMPAT_KEEP_TMP:-}" = 1 ]; then
    echo "compat: temp dir kept at $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Three free loopback ports: mockllm, gateway, admin.
read -r mock_port gw_port admin_port < <(node -e '
const net = require("net");
const take = () => new Promise((ok) => { const s = net.createServer(); s.listen(0, "127.0.0.1", () => ok(s)); });
Promise.all([take(), take(), take()]).then((ss) => {
  console.log(ss.map((s) => s.address().port).join(" "));
  ss.forEach((s) => s.close());
});')

admin_token="compat-admin-$RANDOM$RANDOM"
config="$tmp/llmproxy.yaml"
cat >"$config" <<EOF
# Written by test/compat/run.sh.
listen: "127.0.0.1:$gw_port"
data_dir: "$tmp/data"
backends:
  - url: "http://127.0.0.1:$mock_port"
    name: mockllm
    weight: 1
health_check:
  path: /health
  interval: 2s
routing:
  load_balance_strategy: round_robin
  retry:
    enabled: true
    max_retries: 1
    initial_wait: 50ms
    max_wait: 200ms
auth:
  enabled: true
  storage: file
  defaults:
    quota_reset_period: monthly
    total_quota: 0
# One key per client, so each test reads its own usage.
api_keys:
  - { key: "sk-compat-openai-0001",    id: compat-openai,    name: "compat openai",    user_id: compat }
  - { key: "sk-compat-anthropic-0001", id: compat-anthropic, name: "compat anthropic", user_id: compat }
  - { key: "sk-compat-opencode-0001",  id: compat-opencode,  name: "compat opencode",  user_id: compat }
  - { key: "sk-compat-readme-0001",    id: compat-readme,    name: "compat readme",    user_id: compat }
  # 429 with a long Retry-After: one request a minute.
  - key: "sk-compat-rpm-0001"
    id: compat-rpm
    name: "compat rpm"
    user_id: compat
    limits: { requests_per_minute: 1 }
  # 429 with a short Retry-After (about 1 s), so the SDK's own retry can wait it out.
  - key: "sk-compat-rps-0001"
    id: compat-rps
    name: "compat rps"
    user_id: compat
    limits: { requests_per_second: 1 }
  # A daily quota of 1 token: used up by one request, refused until tomorrow.
  - key: "sk-compat-quota-0001"
    id: compat-quota
    name: "compat quota"
    user_id: compat
    quota_reset_period: daily
    total_quota: 1
rate_limit:
  enabled: true
  storage: memory
  global:
    requests_per_second: 500
    burst_size: 1000
admin:
  listen: "127.0.0.1:$admin_port"
  token: "$admin_token"
logging:
  level: info
EOF

"$llmproxy" config check "$config" >/dev/null

echo "== starting mockllm on 127.0.0.1:$mock_port and llmproxy on 127.0.0.1:$gw_port (admin $admin_port)"
"$mockllm" --listen "127.0.0.1:$mock_port" --tokens 16 --name compat-mock >"$tmp/mockllm.log" 2>&1 &
mock_pid=$!
(cd "$tmp" && exec "$llmproxy" serve --config "$config" --target all) >"$tmp/llmproxy.log" 2>&1 &
gw_pid=$!

wait_http() { # url, name
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    if ! kill -0 "$mock_pid" 2>/dev/null || ! kill -0 "$gw_pid" 2>/dev/null; then
      echo "compat: a process exited early while waiting for $2" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "compat: $2 did not come up at $1" >&2
  return 1
}
wait_http "http://127.0.0.1:$mock_port/health" mockllm
wait_http "http://127.0.0.1:$gw_port/healthz" "llmproxy gateway"
wait_http "http://127.0.0.1:$admin_port/healthz" "llmproxy admin"
wait_http "http://127.0.0.1:$gw_port/readyz" "llmproxy readiness"

export COMPAT_ROOT="$root"
export COMPAT_TMP="$tmp"
export COMPAT_CONFIG="$config"
export COMPAT_LLMPROXY="$llmproxy"
export COMPAT_GATEWAY_URL="http://127.0.0.1:$gw_port"
export COMPAT_MOCK_URL="http://127.0.0.1:$mock_port"
export COMPAT_ADMIN_URL="http://127.0.0.1:$admin_port"
export COMPAT_ADMIN_TOKEN="$admin_token"
export COMPAT_MODEL="mock-model"
# Loopback only: anything that tries to reach the internet through a proxy-aware
# client fails fast instead of hanging.
export NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"

tests="${COMPAT_TESTS:-openai.test.mjs anthropic.test.mjs opencode.test.mjs readme.test.mjs}"
echo "== node --test $tests"
# shellcheck disable=SC2086
node --test --test-reporter=spec --test-timeout=120000 $tests
