#!/usr/bin/env bash
# bench/profile.sh: CPU profile of the single binary with every feature on,
# under the throughput load of `make bench` (non-stream, concurrency 64) and
# then under 200 streams. llmproxy serves no pprof endpoint, so the profile
# is taken from outside with perf (call graphs from frame pointers, which Go
# keeps on amd64 and arm64).
#
#   bash bench/profile.sh            # after make build
#   BENCH_PROFILE_SECONDS=20 bash bench/profile.sh
#   BENCH_PROFILE_SETUP=redis bash bench/profile.sh   # the Redis setup's gateway
#
# With BENCH_PROFILE_SETUP=redis the profiled process is the gateway of the
# Redis setup (`--target gateway`, admission in Redis at BENCH_REDIS_URL,
# default redis://127.0.0.1:6379/14), with its meter in a process of its own
# and a NATS server (`eventload nats`) beside it.
#
# It prints the hottest functions (self time) and the hottest callers
# (time including callees) for each load, and keeps perf.data in the
# directory it names.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/bin"
SECS=${BENCH_PROFILE_SECONDS:-12}
SETUP=${BENCH_PROFILE_SETUP:-all}
REDIS_URL_BENCH=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}
[[ $SETUP == all || $SETUP == redis ]] || { echo "profile: BENCH_PROFILE_SETUP is all or redis" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile: perf is not installed" >&2; exit 1; }

OUT=$(mktemp -d /tmp/llmproxy-profile.XXXXXX)
PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	if [[ $SETUP == redis ]] && command -v redis-cli >/dev/null; then
		redis-cli -u "$REDIS_URL_BENCH" --scan --pattern "llmproxy-profile-$$*" 2>/dev/null |
			xargs -r -n 500 redis-cli -u "$REDIS_URL_BENCH" del >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NEXT_PORT=$((20000 + RANDOM % 20000))
port() {
	while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
	PORT=$NEXT_PORT
	NEXT_PORT=$((NEXT_PORT + 1))
}
wait_http() {
	for _ in $(seq 1 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
	echo "profile: $1 did not come up" >&2
	exit 1
}

(cd "$ROOT/bench" && go build -o "$OUT/" ./loadgen ./eventload)
port; MOCK_PORT=$PORT
"$BIN/mockllm" --listen "127.0.0.1:$MOCK_PORT" >"$OUT/mockllm.log" 2>&1 &
PIDS+=($!)
port; GW=$PORT; port; ADMIN=$PORT
KEY=sk-profile-$$
mkdir -p "$OUT/data"
cat >"$OUT/all.yaml" <<EOF
listen: "127.0.0.1:$GW"
data_dir: "$OUT/data"
backends:
  - { url: "http://127.0.0.1:$MOCK_PORT", name: mock }
health_check: { path: /health, interval: 10s }
routing: { retry: { enabled: true, max_retries: 2 } }
admin: { listen: "127.0.0.1:$ADMIN", token: "profile-$$" }
auth: { enabled: true, storage: file }
api_keys:
  - { key: "$KEY", id: bench, name: bench, user_id: bench-user, total_quota: 1000000000000000, quota_reset_period: monthly }
rate_limit:
  enabled: true
  storage: memory
  global: { requests_per_second: 10000000, burst_size: 10000000 }
  per_key: { requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, max_concurrent: 1000000 }
logging: { level: info }
EOF
if [[ $SETUP == redis ]]; then
	port; NATS_PORT=$PORT
	"$OUT/eventload" nats --listen "127.0.0.1:$NATS_PORT" --store "$OUT/nats" >"$OUT/nats.log" 2>&1 &
	PIDS+=($!)
	sed -i 's/storage: memory/storage: redis/' "$OUT/all.yaml"
	cat >>"$OUT/all.yaml" <<EOF
nats: { url: "nats://127.0.0.1:$NATS_PORT" }
redis: { url: "$REDIS_URL_BENCH", prefix: "llmproxy-profile-$$" }
EOF
	port; METER_ADMIN=$PORT
	"$BIN/llmproxy" serve --config "$OUT/all.yaml" --target gateway >"$OUT/access.log" 2>&1 &
	GPID=$!
	PIDS+=($GPID)
	"$BIN/llmproxy" serve --config "$OUT/all.yaml" --target meter --admin-listen "127.0.0.1:$METER_ADMIN" >"$OUT/meter.log" 2>&1 &
	PIDS+=($!)
	wait_http "http://127.0.0.1:$METER_ADMIN/readyz"
else
	"$BIN/llmproxy" serve --config "$OUT/all.yaml" >"$OUT/access.log" 2>&1 &
	GPID=$!
	PIDS+=($GPID)
fi
wait_http "http://127.0.0.1:$ADMIN/readyz"
U="http://127.0.0.1:$GW/v1/chat/completions"

profile() { # NAME LOADGEN-ARGS...
	local name=$1
	shift
	"$OUT/loadgen" --warmup 2s --duration "$((SECS + 2))s" --url "$U" --header "Authorization: Bearer $KEY" "$@" >"$OUT/$name.json" &
	local lg=$!
	sleep 2.5
	perf record -q -F 499 -g -p "$GPID" -o "$OUT/$name.perf.data" -- sleep "$SECS" >/dev/null 2>&1
	wait "$lg"
	echo "== $name: $(cut -c1-200 "$OUT/$name.json")"
	perf script -i "$OUT/$name.perf.data" -F comm,tid,ip,sym 2>/dev/null >"$OUT/$name.stacks" || true
	python3 "$ROOT/bench/perfsum.py" "$OUT/$name.stacks" || true
}

profile nonstream --mode request --concurrency 64
profile stream --mode stream --concurrency 200 --header "X-Mock-Gap: 20ms" --header "X-Mock-Tokens: 20"
echo "profile: data in $OUT"
