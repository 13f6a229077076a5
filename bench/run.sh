#!/usr/bin/env bash
# bench/run.sh: LLMProxy side by side with its references, in one run on
# loopback. `make bench` builds the binaries and calls this script; see
# bench/README.md for what is measured and the knobs below.
#
# Every figure comes from bench/loadgen (HTTP) or bench/eventload (events),
# so the references and LLMProxy are measured by the same client in the
# same run. The table goes to stdout and to bench/RESULTS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/bin"

# Knobs (durations are Go durations).
WARMUP=${BENCH_WARMUP:-500ms}
# Each load figure is measured in BENCH_ROUNDS rounds; a round visits every
# target in turn, so a slow patch on a shared machine falls on all of them,
# and the report takes the median of the rounds. Many short rounds beat a
# few long ones here: the host's speed drifts over tens of seconds.
ROUNDS=${BENCH_ROUNDS:-5}
LAT_DURATION=${BENCH_LAT_DURATION:-2s}     # per round; concurrency 1, non-stream
TPUT_DURATION=${BENCH_TPUT_DURATION:-2s}   # per round; concurrency BENCH_TPUT_CONC, non-stream
TPUT_CONC=${BENCH_TPUT_CONC:-64}
STREAM_DURATION=${BENCH_STREAM_DURATION:-2s} # per round
STREAMS=${BENCH_STREAMS:-200}
STREAM_GAP=${BENCH_STREAM_GAP:-20ms}
STREAM_TOKENS=${BENCH_STREAM_TOKENS:-20}
# The stream phase starts all STREAMS together, so their events come in
# waves; the targets in BENCH_SPREAD are measured a second time with the
# first streams spread over STREAM_STAGGER (one stream's length), so that
# streams start and send their events spread out, as independent clients do.
STREAM_STAGGER=${BENCH_STREAM_STAGGER:-400ms}
SPREAD=${BENCH_SPREAD-direct httputil nginx core all redis}
IDLE=${BENCH_IDLE:-10000}
METER_EVENTS=${BENCH_METER_EVENTS:-50000}
NOTIFIER_EVENTS=${BENCH_NOTIFIER_EVENTS:-20000}
REDIS_URL_BENCH=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}
# BENCH_NATS_URL points the Redis setup at an existing NATS; by default the
# run starts its own nats-server (or an embedded one) so that no other
# stream consumer shares the LLMPROXY stream with the measurement.
NATS_URL_EXT=${BENCH_NATS_URL:-}
# The NATS the run starts: "embedded" is `eventload nats`, the nats-server
# release LLMProxy embeds (go.mod); "system" the nats-server on PATH, which
# on some distributions is years older than the compose stack's image.
NATS_SERVER=${BENCH_NATS_SERVER:-embedded}
if [[ $NATS_SERVER == system ]] && ! command -v nats-server >/dev/null; then
	echo "bench: BENCH_NATS_SERVER=system but no nats-server on PATH" >&2
	exit 1
fi
# BENCH_ONLY limits the HTTP targets, e.g. "direct httputil all".
ONLY=${BENCH_ONLY:-direct httputil nginx core passthrough all lua capture redis}
# The feature rows (lua, capture) are measured only for the figure they are
# there for: lua the latency at concurrency 1, capture the streams.
declare -A MEAS=(
	[lua]="lat"
	[capture]="stream"
)
measures() { [[ " ${MEAS[$1]:-rss lat tput stream} " == *" $2 "* ]]; }
LUA_SCRIPT="$ROOT/examples/lua/model_alias.lua"
# The Lua row's request names the public alias gpt-4o, which model_alias.lua
# rewrites to qwen2.5-72b (mockllm answers for any model).
LUA_BODY='{"model":"gpt-4o","stream":false,"messages":[{"role":"user","content":"Hello there, how are you today?"}]}'


for b in "$BIN/llmproxy" "$BIN/mockllm"; do
	[[ -x "$b" ]] || { echo "bench: $b missing; run make build" >&2; exit 1; }
done

# The commit `make bench` just built the binaries from, read before the
# run: a commit made while it goes on must not be credited with its figures.
BUILD_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)
BUILD_DIRTY=$(git -C "$ROOT" status --porcelain -- cmd services pkg 2>/dev/null | wc -l)

WORK=$(mktemp -d /tmp/llmproxy-bench.XXXXXX)
RUN_ID=bench$(date +%s)$$
PIDS=()

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	if [[ -n "${REDIS_PREFIX:-}" ]] && command -v redis-cli >/dev/null; then
		redis-cli -u "$REDIS_URL_BENCH" --scan --pattern "${REDIS_PREFIX}*" 2>/dev/null |
			xargs -r -n 500 redis-cli -u "$REDIS_URL_BENCH" del >/dev/null 2>&1 || true
	fi
	[[ "${BENCH_KEEP:-0}" == 1 ]] && echo "bench: work dir kept: $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench: $*" >&2; }

# start NAME CMD...: runs CMD in the background, output to $WORK/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
	LAST_PID=$!
}

# stop PID: ends one process this script started.
stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# port: a free loopback port (not bound now, not handed out before).
# Below the kernel's ephemeral range (32768 and up here), so that no port
# a client connection took in the meantime is handed out: with 10,000 idle
# streams that happens.
NEXT_PORT=$((20000 + RANDOM % 10000))
port() {
	while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
	PORT=$NEXT_PORT
	NEXT_PORT=$((NEXT_PORT + 1))
}

wait_http() { # URL [what]
	local i
	for i in $(seq 1 300); do
		curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	log "${2:-$1} did not come up; its log:"
	tail -20 "$WORK/${2:-x}.log" >&2 2>/dev/null || true
	exit 1
}

wait_tcp() { # HOST PORT
	local i
	for i in $(seq 1 300); do
		(exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
		sleep 0.1
	done
	log "$1:$2 did not open"
	exit 1
}

rss_kb() { # PID...: summed VmRSS in KiB
	local sum=0 pid v
	for pid in "$@"; do
		v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
		sum=$((sum + ${v:-0}))
	done
	echo "$sum"
}


# --- build the bench tools ---------------------------------------------------
log "building bench tools"
(cd "$ROOT/bench" && go build -o "$WORK/bin/" ./loadgen ./httputilproxy ./eventload ./gatewaycore)
LOADGEN="$WORK/bin/loadgen"
EVENTLOAD="$WORK/bin/eventload"

FDMAX=$(ulimit -Hn)
ulimit -n "$FDMAX" 2>/dev/null || true
# A proxy holds two descriptors per idle stream (client and upstream).
FIT=$(((FDMAX - 1024) / 2))
IDLE_NOTE=""
if ((IDLE > FIT)); then
	IDLE_NOTE="idle streams capped at $FIT (asked for $IDLE): the open-files limit here is $FDMAX and a proxy holds two descriptors per stream"
	log "$IDLE_NOTE"
	IDLE=$FIT
fi

# --- mockllm -------------------------------------------------------------------
port; MOCK_PORT=$PORT
MOCK="http://127.0.0.1:$MOCK_PORT"
start mockllm "$BIN/mockllm" --listen "127.0.0.1:$MOCK_PORT"
MOCK_PID=$LAST_PID
wait_http "$MOCK/health" mockllm

# --- NATS for the gateway/meter processes --------------------------------------
start_nats() { # sets NATS_URL
	port
	local p=$PORT dir
	dir=$(mktemp -d "$WORK/nats.XXXX")
	if [[ $NATS_SERVER == system ]]; then
		start "nats-$p" nats-server -a 127.0.0.1 -p "$p" -js -sd "$dir"
	else
		start "nats-$p" "$EVENTLOAD" nats --listen "127.0.0.1:$p" --store "$dir"
	fi
	NATS_PID=$LAST_PID
	wait_tcp 127.0.0.1 "$p"
	NATS_URL="nats://127.0.0.1:$p"
}

# --- configs -------------------------------------------------------------------
KEY="sk-bench-$RUN_ID"
ADMIN_TOKEN="bench-$RUN_ID"
REDIS_PREFIX="llmproxy-$RUN_ID"

port; SINK_PORT=$PORT
start sink "$EVENTLOAD" sink --listen "127.0.0.1:$SINK_PORT"
wait_tcp 127.0.0.1 "$SINK_PORT"

# gw_config NAME LISTEN ADMIN MODE [extra yaml]: MODE is passthrough, all,
# lua (all + the model-alias on_request script), capture (all + response
# capture) or redis.
gw_config() {
	local name=$1 listen=$2 admin=$3 mode=$4 f="$WORK/$1.yaml"
	mkdir -p "$WORK/$name-data"
	cat >"$f" <<EOF
listen: "$listen"
data_dir: "$WORK/$name-data"
backends:
  - url: "$MOCK"
    name: mock
EOF
	case $mode in
	passthrough)
		cat >>"$f" <<EOF
auth: { enabled: false }
rate_limit: { enabled: false }
logging: { level: warn }
EOF
		;;
	all | lua | capture | redis)
		cat >>"$f" <<EOF
health_check: { path: /health, interval: 10s }
admin: { listen: "$admin", token: "$ADMIN_TOKEN" }
routing:
  retry: { enabled: true, max_retries: 2 }
auth:
  enabled: true
  storage: file
api_keys:
  - key: "$KEY"
    id: bench
    name: bench
    user_id: bench-user
    total_quota: 1000000000000000
    quota_reset_period: monthly
rate_limit:
  enabled: true
  storage: $([[ $mode == redis ]] && echo redis || echo memory)
  global: { requests_per_second: 10000000, burst_size: 10000000 }
  per_key:
    requests_per_minute: 1000000000
    tokens_per_minute: 1000000000000
    max_concurrent: 1000000
EOF
		if [[ $mode == capture ]]; then
			echo "logging: { level: info, capture_response: true, max_capture_bytes: 65536 }" >>"$f"
		else
			echo "logging: { level: info }" >>"$f"
		fi
		if [[ $mode == lua ]]; then
			echo "lua: { scripts: [\"$LUA_SCRIPT\"] }" >>"$f"
		fi
		;;
	esac
	# Issue 9's "every feature" is keys, admission, metering events, metrics
	# and the access log; BENCH_WEBHOOK=1 adds webhook delivery (the
	# notifier POSTs every event to a local receiver) on top.
	if [[ $mode =~ ^(all|lua|capture)$ && "${BENCH_WEBHOOK:-0}" == 1 ]]; then
		cat >>"$f" <<EOF
usage_hook: { url: "http://127.0.0.1:$SINK_PORT/usage", timeout: 5s, retry: 2 }
EOF
	fi
	if [[ $mode == redis ]]; then
		cat >>"$f" <<EOF
nats: { url: "$NATS_URL" }
redis: { url: "$REDIS_URL_BENCH", prefix: "$REDIS_PREFIX" }
EOF
	fi
	if [[ -n "${5:-}" ]]; then echo "$5" >>"$f"; fi
	"$BIN/llmproxy" config check "$f" >&2 || { log "bad config $f"; cat "$f" >&2; exit 1; }
}

# --- targets -------------------------------------------------------------------
declare -A URL PIDSOF CPUOF
URL[direct]=$MOCK
PIDSOF[direct]=""

has() { [[ " $ONLY " == *" $1 "* ]]; }

if has httputil; then
	port
	start httputil "$WORK/bin/httputilproxy" --listen "127.0.0.1:$PORT" --target "$MOCK"
	URL[httputil]="http://127.0.0.1:$PORT"; PIDSOF[httputil]=$LAST_PID
	wait_http "${URL[httputil]}/health" httputil
fi

NGINX_NOTE=""
if has nginx; then
	if ! command -v nginx >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		log "installing nginx"
		DEBIAN_FRONTEND=noninteractive apt-get -y install nginx >"$WORK/apt.log" 2>&1 ||
			{ apt-get update >>"$WORK/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get -y install nginx >>"$WORK/apt.log" 2>&1; } || true
	fi
	if command -v nginx >/dev/null; then
		port
		mkdir -p "$WORK/nginx"
		cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
worker_rlimit_nofile $FDMAX;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
daemon off;
events { worker_connections $FDMAX; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 1024; }
  server {
    listen 127.0.0.1:$PORT;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
EOF
		start nginx nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
		URL[nginx]="http://127.0.0.1:$PORT"; PIDSOF[nginx]=$LAST_PID
		wait_http "${URL[nginx]}/health" nginx
		# The master only forks; the workers carry the connections.
		PIDSOF[nginx]="$(pgrep -P "$LAST_PID" | tr '\n' ' ')"
	else
		NGINX_NOTE="nginx not installed (and could not be installed): its column is empty"
		log "$NGINX_NOTE"
		ONLY=${ONLY//nginx/}
	fi
fi

if has core; then
	# The gateway package alone (bench/gatewaycore): the same config as the
	# single-binary passthrough, served without events, NATS or meter.
	port; l="127.0.0.1:$PORT"
	gw_config core "$l" "" passthrough
	start core "$WORK/bin/gatewaycore" --config "$WORK/core.yaml"
	PIDSOF[core]=$LAST_PID
	URL[core]="http://$l"
	wait_http "${URL[core]}/healthz" core
fi

if has passthrough; then
	port; l="127.0.0.1:$PORT"
	gw_config passthrough "$l" "" passthrough
	start passthrough "$BIN/llmproxy" serve --config "$WORK/passthrough.yaml"
	PIDSOF[passthrough]=$LAST_PID
	URL[passthrough]="http://$l"
	wait_http "${URL[passthrough]}/healthz" passthrough
fi

if has all; then
	port; l="127.0.0.1:$PORT"; port; a="127.0.0.1:$PORT"
	gw_config all "$l" "$a" all
	start all "$BIN/llmproxy" serve --config "$WORK/all.yaml"
	PIDSOF[all]=$LAST_PID
	URL[all]="http://$l"
	wait_http "http://$a/readyz" all
fi

for t in lua capture; do
	has $t || continue
	port; l="127.0.0.1:$PORT"; port; a="127.0.0.1:$PORT"
	gw_config $t "$l" "$a" $t
	start $t "$BIN/llmproxy" serve --config "$WORK/$t.yaml"
	PIDSOF[$t]=$LAST_PID
	URL[$t]="http://$l"
	wait_http "http://$a/readyz" $t
done
if has lua; then
	# The script must really rewrite the model, or the row measures nothing.
	got=$(curl -fsS "${URL[lua]}/v1/chat/completions" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$LUA_BODY")
	[[ $got == *'"model":"qwen2.5-72b"'* ]] || { log "lua: the model was not rewritten: $got"; exit 1; }
fi

NATS_NOTE=""
if has redis; then
	NATS_PID=""
	if [[ -n "$NATS_URL_EXT" ]]; then NATS_URL=$NATS_URL_EXT; else start_nats; fi
	port; l="127.0.0.1:$PORT"; port; a="127.0.0.1:$PORT"; port; ma="127.0.0.1:$PORT"
	gw_config redis "$l" "$a" redis
	start redis-gateway "$BIN/llmproxy" serve --config "$WORK/redis.yaml" --target gateway
	PIDSOF[redis]=$LAST_PID
	CPUOF[redis]="gateway=$LAST_PID"
	start redis-meter "$BIN/llmproxy" serve --config "$WORK/redis.yaml" --target meter --admin-listen "$ma"
	CPUOF[redis]+=" meter=$LAST_PID"
	if [[ -n "$NATS_PID" ]]; then CPUOF[redis]+=" nats=$NATS_PID"; fi
	# The Redis server's CPU counts when it runs on this machine.
	rpid=$(redis-cli -u "$REDIS_URL_BENCH" info server 2>/dev/null | awk -F: '/^process_id:/ {print $2}' | tr -d '\r')
	if [[ -n "$rpid" && -r "/proc/$rpid/stat" ]]; then CPUOF[redis]+=" redis=$rpid"; fi
	URL[redis]="http://$l"
	wait_http "http://$a/readyz" redis-gateway
	wait_http "http://$ma/readyz" redis-meter
fi

# CPU per request in the throughput phase: each target's own processes (the
# Redis setup names its gateway, meter, NATS and Redis), and mockllm's as a
# check that every target asked the same of the upstream.
for t in direct httputil nginx core passthrough all lua capture; do
	has "$t" || continue
	CPUOF[$t]=""
	for pid in ${PIDSOF[$t]}; do CPUOF[$t]+=" proxy=$pid"; done
done

# --- HTTP measurements ---------------------------------------------------------
CHAT=/v1/chat/completions
auth_args() { # TARGET
	case $1 in all | lua | capture | redis) printf "%s\n" "--header" "Authorization: Bearer $KEY" ;; esac
}

mock_idle() { # waits until mockllm has no request in flight
	local i n
	for i in $(seq 1 600); do
		n=$(curl -fsS "$MOCK/metrics" | awk '/^mock_requests_inflight / {print $2}')
		[[ "$n" == 0 ]] && return 0
		sleep 0.1
	done
	log "mockllm still has $n requests in flight"
}

TARGETS=()
for t in direct httputil nginx core passthrough all lua capture redis; do
	if has "$t"; then TARGETS+=("$t"); fi
done

# Idle streams first, while every process is fresh: a Go heap grown by the
# load phases is kept and would hide what the open streams cost.
for t in "${TARGETS[@]}"; do
	[[ $t == direct ]] && continue
	measures "$t" rss || continue
	u="${URL[$t]}$CHAT"
	mapfile -t A < <(auth_args "$t")
	log "$t: RSS with $IDLE idle open streams"
	read -r -a P <<<"${PIDSOF[$t]}"
	before=$(rss_kb "${P[@]}")
	rm -f "$WORK/ready"
	"$LOADGEN" --label "$t" --mode idle --concurrency "$IDLE" --url "$u" "${A[@]}" --header "X-Mock-Ttft: 1h" \
		--inflight-url "$MOCK/metrics" --ready-file "$WORK/ready" --hold 5m >"$WORK/res-$t-idle.json" &
	lg=$!
	PIDS+=($lg)
	for i in $(seq 1 1800); do [[ -f "$WORK/ready" ]] && break; kill -0 "$lg" 2>/dev/null || break; sleep 0.1; done
	sleep 1
	after=$(rss_kb "${P[@]}")
	stop "$lg"
	echo "{\"before_kb\":$before,\"after_kb\":$after,\"streams\":$IDLE,\"ready\":$([[ -f "$WORK/ready" ]] && echo true || echo false)}" >"$WORK/res-$t-rss.json"
	mock_idle
done

for r in $(seq 1 "$ROUNDS"); do
	for t in "${TARGETS[@]}"; do
		u="${URL[$t]}$CHAT"
		mapfile -t A < <(auth_args "$t")
		if [[ $t == lua ]]; then A+=(--body "$LUA_BODY"); fi
		if measures "$t" lat; then
			log "round $r, $t: latency at concurrency 1 ($LAT_DURATION)"
			"$LOADGEN" --label "$t" --mode request --concurrency 1 --warmup "$WARMUP" --duration "$LAT_DURATION" --url "$u" "${A[@]}" >"$WORK/res-$t-lat-$r.json"
		fi
		C=(--cpu "mockllm=$MOCK_PID")
		for x in ${CPUOF[$t]}; do C+=(--cpu "$x"); done
		if measures "$t" tput; then
			log "round $r, $t: throughput at concurrency $TPUT_CONC ($TPUT_DURATION)"
			"$LOADGEN" --label "$t" --mode request --concurrency "$TPUT_CONC" --warmup "$WARMUP" --duration "$TPUT_DURATION" --url "$u" "${A[@]}" "${C[@]}" >"$WORK/res-$t-tput-$r.json"
		fi
		if measures "$t" stream; then
			log "round $r, $t: $STREAMS streams, $STREAM_TOKENS tokens $STREAM_GAP apart ($STREAM_DURATION)"
			"$LOADGEN" --label "$t" --mode stream --concurrency "$STREAMS" --warmup "$WARMUP" --duration "$STREAM_DURATION" --url "$u" "${A[@]}" \
				--header "X-Mock-Gap: $STREAM_GAP" --header "X-Mock-Tokens: $STREAM_TOKENS" "${C[@]}" >"$WORK/res-$t-stream-$r.json"
		fi
		if [[ " $SPREAD " == *" $t "* ]]; then
			mock_idle
			log "round $r, $t: $STREAMS streams spread over $STREAM_STAGGER ($STREAM_DURATION)"
			"$LOADGEN" --label "$t" --mode stream --concurrency "$STREAMS" --stagger "$STREAM_STAGGER" --warmup "$WARMUP" --duration "$STREAM_DURATION" --url "$u" "${A[@]}" \
				--header "X-Mock-Gap: $STREAM_GAP" --header "X-Mock-Tokens: $STREAM_TOKENS" "${C[@]}" >"$WORK/res-$t-spread-$r.json"
		fi
		mock_idle
	done
done

# --- event consumers -----------------------------------------------------------
# Each runs against its own fresh NATS so that no backlog from the HTTP phase
# is counted.
METER_NOTE=""
if has redis || [[ "${BENCH_EVENTS:-1}" == 1 ]]; then
	log "meter (Redis ledger, own process): $METER_EVENTS events"
	start_nats
	port; ma="127.0.0.1:$PORT"; port; l="127.0.0.1:$PORT"
	gw_config meter "$l" "" redis
	start meter "$BIN/llmproxy" serve --config "$WORK/meter.yaml" --target meter --admin-listen "$ma"
	METER_PID=$LAST_PID
	wait_http "http://$ma/readyz" meter
	"$EVENTLOAD" measure --label meter-redis --nats "$NATS_URL" --n "$METER_EVENTS" --run "$RUN_ID-m" \
		--metrics "http://$ma/metrics" --metric llmproxy_meter_events_applied_total >"$WORK/res-meter-redis.json" ||
		METER_NOTE="meter (Redis) did not finish: see $WORK/meter.log"
	stop "$METER_PID"

	# The same meter started after its events were published, so that the
	# publisher does not share the CPUs with it: its own rate.
	log "meter (Redis ledger, own process), backlog: $METER_EVENTS events published before it starts"
	start_nats
	"$EVENTLOAD" publish --nats "$NATS_URL" --n "$METER_EVENTS" --run "$RUN_ID-mb" >"$WORK/res-meter-redis-backlog-pub.json"
	port; ma="127.0.0.1:$PORT"; port; l="127.0.0.1:$PORT"
	gw_config meterb "$l" "" redis
	start meterb "$BIN/llmproxy" serve --config "$WORK/meterb.yaml" --target meter --admin-listen "$ma"
	METER_PID=$LAST_PID
	"$EVENTLOAD" measure --backlog --n "$METER_EVENTS" --label meter-redis-backlog \
		--metrics "http://$ma/metrics" --metric llmproxy_meter_events_applied_total >"$WORK/res-meter-redis-backlog.json" ||
		METER_NOTE="$METER_NOTE meter (Redis, backlog) did not finish: see $WORK/meterb.log"
	stop "$METER_PID"

	log "meter (local ledger, single binary): $METER_EVENTS events"
	port; en="127.0.0.1:$PORT"; port; ma="127.0.0.1:$PORT"; port; l="127.0.0.1:$PORT"
	gw_config meterlocal "$l" "$ma" all "nats: { embedded_listen: \"$en\" }"
	start meterlocal "$BIN/llmproxy" serve --config "$WORK/meterlocal.yaml"
	ML_PID=$LAST_PID
	wait_http "http://$ma/readyz" meterlocal
	# Without credentials the embedded listener only lets clients read:
	# the load generator publishes as the server's own user, whose
	# password is in the client file.
	creds=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["user"]+":"+c["token"])' "$WORK/meterlocal-data/nats-client.json")
	"$EVENTLOAD" measure --label meter-local --nats "nats://$creds@$en" --n "$METER_EVENTS" --run "$RUN_ID-l" \
		--metrics "http://$ma/metrics" --metric llmproxy_meter_events_applied_total >"$WORK/res-meter-local.json" ||
		METER_NOTE="$METER_NOTE meter (local) did not finish: see $WORK/meterlocal.log"
	stop "$ML_PID"

	log "notifier (own process, one fast local receiver): $NOTIFIER_EVENTS events"
	start_nats
	port; ma="127.0.0.1:$PORT"; port; l="127.0.0.1:$PORT"
	gw_config notifier "$l" "" passthrough "nats: { url: \"$NATS_URL\" }
admin: { listen: \"$ma\", token: \"$ADMIN_TOKEN\" }
webhooks:
  - { name: sink, url: \"http://127.0.0.1:$SINK_PORT/hook\", timeout: 5s }"
	start notifier "$BIN/llmproxy" serve --config "$WORK/notifier.yaml" --target notifier
	N_PID=$LAST_PID
	wait_http "http://$ma/readyz" notifier
	"$EVENTLOAD" measure --label notifier --nats "$NATS_URL" --n "$NOTIFIER_EVENTS" --run "$RUN_ID-n" \
		--metrics "http://$ma/metrics" --metric llmproxy_webhook_deliveries_total --match 'outcome="success"' >"$WORK/res-notifier.json" ||
		METER_NOTE="$METER_NOTE notifier did not finish: see $WORK/notifier.log"
	stop "$N_PID"
fi

# --- report --------------------------------------------------------------------
CMDLINE="BENCH_NATS_SERVER=$NATS_SERVER BENCH_WEBHOOK=${BENCH_WEBHOOK:-0} BENCH_ROUNDS=$ROUNDS BENCH_LAT_DURATION=$LAT_DURATION BENCH_TPUT_DURATION=$TPUT_DURATION BENCH_TPUT_CONC=$TPUT_CONC BENCH_STREAM_DURATION=$STREAM_DURATION BENCH_STREAMS=$STREAMS BENCH_STREAM_GAP=$STREAM_GAP BENCH_STREAM_TOKENS=$STREAM_TOKENS BENCH_STREAM_STAGGER=$STREAM_STAGGER BENCH_SPREAD='$SPREAD' BENCH_IDLE=$IDLE BENCH_METER_EVENTS=$METER_EVENTS BENCH_NOTIFIER_EVENTS=$NOTIFIER_EVENTS make bench"
python3 "$ROOT/bench/report.py" --work "$WORK" --rounds "$ROUNDS" --targets "${TARGETS[*]}" --out "${BENCH_OUT:-$ROOT/bench/RESULTS.md}" \
	--cmdline "$CMDLINE" --loadgen "$LOADGEN" --mock "$MOCK" --commit "$BUILD_COMMIT" --dirty "$BUILD_DIRTY" --notes "$IDLE_NOTE" --notes "$NGINX_NOTE" --notes "$METER_NOTE" \
	--configs "$WORK/core.yaml" --configs "$WORK/passthrough.yaml" --configs "$WORK/all.yaml" --configs "$WORK/lua.yaml" --configs "$WORK/capture.yaml" --configs "$WORK/redis.yaml" --configs "$WORK/nginx/nginx.conf"
