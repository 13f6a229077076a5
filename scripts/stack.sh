#!/usr/bin/env bash
# `make stack`: the compose topology (deploy/compose) as local processes —
# a 3-node NATS JetStream cluster (bin/natsd with deploy/nats/cluster/n1..3.conf),
# Redis, 2 gateways, 2 meters, 1 notifier and mockllm. State lives under
# ./data/stack (STACK_DIR). A process that exits (killed to watch the
# failover) is reported and the rest keeps running; Ctrl-C stops everything.
#
# Redis: the one at 127.0.0.1:6379 (db 13, key prefix "stack") when it
# answers, else a redis-server started here on that port. STACK_REDIS_DB and
# STACK_REDIS_PREFIX choose another database and key prefix.
#
# STACK_PORT_OFFSET=N adds N to every port but Redis's (NATS, gateways,
# admin listeners, mockllm), to run beside something already on them.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${STACK_DIR:-./data/stack}
REDIS_DB=${STACK_REDIS_DB:-13}
REDIS_PREFIX=${STACK_REDIS_PREFIX:-stack}
GO=${GO:-go}
OFF=${STACK_PORT_OFFSET:-0}
port() { echo $(($1 + OFF)); }

# Ports first: a stack already running is reported before anything is built,
# created or stopped.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for p in 4222 4223 4224 6222 6223 6224 8222 8223 8224 9000 8000 8001 8002 8003 8011 8012 8021; do
  if port_busy "$(port $p)"; then
    echo "port 127.0.0.1:$(port $p) is in use (a stack already running? set STACK_PORT_OFFSET); stop it first" >&2
    exit 1
  fi
done

echo "building bin/llmproxy bin/mockllm bin/natsd"
(cd cmd && $GO build -o ../bin/llmproxy ./llmproxy && $GO build -o ../bin/mockllm ./mockllm && $GO build -o ../bin/natsd ./natsd)

mkdir -p "$DIR"/logs "$DIR"/nats
pids=()
names=()
stopping=0
stop_all() {
  [ "$stopping" = 1 ] && return 0
  stopping=1
  echo
  echo "stopping the stack… (Ctrl-C again kills what is left)"
  # Gateways first: they let open streams finish and flush their outbox to
  # NATS. Then the workers (they ack what they applied) and mockllm, then
  # NATS, Redis last.
  stop_group 'gateway-*'
  stop_group 'meter-*' notifier mockllm
  stop_group 'nats-*'
  stop_group redis
  echo "stopped; state kept in $DIR and in Redis db $REDIS_DB under the prefix \"$REDIS_PREFIX\" (deploy/README.md says how to start afresh)"
}

# stop_group PATTERN... sends SIGTERM to the processes whose names match and
# waits until they have exited. (In a trap a bare `return` gives the status
# from before the trap, e.g. an interrupted wait's 130, and set -e would end
# the script there: hence `return 0`.)
stop_group() {
  local i pat sel=()
  for i in "${!pids[@]}"; do
    for pat in "$@"; do
      # shellcheck disable=SC2053 # pat is a glob
      [[ ${names[$i]} == $pat ]] && sel+=("${pids[$i]}")
    done
  done
  [ ${#sel[@]} = 0 ] && return 0
  kill -TERM "${sel[@]}" 2>/dev/null || true
  for i in "${sel[@]}"; do
    wait "$i" 2>/dev/null || true
  done
}

# on_signal stops the stack in order; a second Ctrl-C while it stops kills
# what is left.
on_signal() {
  if [ "$stopping" = 1 ]; then
    echo "killing what is left of the stack" >&2
    kill -KILL "${pids[@]}" 2>/dev/null || true
    exit 130
  fi
  stop_all
  exit 0
}
trap on_signal INT TERM HUP
trap stop_all EXIT

# run NAME CMD... starts CMD in the background, output to $DIR/logs/NAME.log.
# CMD gets a process group of its own (set -m), out of the terminal's
# foreground group: Ctrl-C reaches this script alone, which stops the
# processes in order, instead of every process at once (NATS would be gone
# before the gateways had flushed their events). Stdin is /dev/null, as for
# any background command without job control.
run() {
  local name=$1
  shift
  set -m
  "$@" </dev/null >"$DIR/logs/$name.log" 2>&1 &
  set +m
  pids+=($!)
  names+=("$name")
}

# wait_http NAME URL waits until URL answers 2xx (60 s).
wait_http() {
  local name=$1 url=$2
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name did not come up ($url); see $DIR/logs/$name.log" >&2
  tail -n 20 "$DIR/logs/$name.log" >&2 || true
  exit 1
}

# Redis.
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || port_busy 6379; then
  redis_note="127.0.0.1:6379 (already running)"
else
  command -v redis-server >/dev/null || { echo "no Redis on 127.0.0.1:6379 and no redis-server to start" >&2; exit 1; }
  mkdir -p "$DIR/redis"
  run redis redis-server --bind 127.0.0.1 --port 6379 --dir "$DIR/redis" --save "" --appendonly yes
  for _ in $(seq 1 100); do port_busy 6379 && break; sleep 0.1; done
  redis_note="127.0.0.1:6379 (started here, data in $DIR/redis)"
fi

# NATS: three JetStream nodes from deploy/nats/cluster, stores under
# $DIR/nats (the flags repeat the files' ports, shifted by the offset).
routes="nats-route://127.0.0.1:$(port 6222),nats-route://127.0.0.1:$(port 6223),nats-route://127.0.0.1:$(port 6224)"
for n in 1 2 3; do
  run "nats-n$n" ./bin/natsd -c "deploy/nats/cluster/n$n.conf" --store-dir "$DIR/nats/n$n" \
    -a 127.0.0.1 -p "$(port $((4221 + n)))" -m "$(port $((8221 + n)))" \
    --cluster "nats://127.0.0.1:$(port $((6221 + n)))" --routes "$routes"
done
for n in 1 2 3; do
  wait_http "nats-n$n" "http://127.0.0.1:$(port $((8221 + n)))/healthz"
done
NATS_URL="nats://127.0.0.1:$(port 4222),nats://127.0.0.1:$(port 4223),nats://127.0.0.1:$(port 4224)"

MOCK=127.0.0.1:$(port 9000)
run mockllm ./bin/mockllm --listen "$MOCK" --tokens 12 --gap 30ms
wait_http mockllm "http://$MOCK/health"

# One config for every llmproxy process; the gateways differ only in their
# ports and data_dir (each its own outbox), so each gets a copy.
abs=$(cd "$DIR" && pwd)
write_config() { # FILE LISTEN ADMIN DATA_DIR
  cat >"$1" <<YAML
# Generated by scripts/stack.sh — edit the script, not this file.
listen: "$2"
data_dir: "$4"
nats:
  url: $NATS_URL
  stream: { replicas: 3 }
redis: { url: "redis://127.0.0.1:6379/$REDIS_DB", prefix: "$REDIS_PREFIX" }
admin: { listen: "$3", token: "\${LLMPROXY_ADMIN_TOKEN:-change-me}" }
server: { drain_timeout: 30s }
backends:
  - url: http://$MOCK
    name: mockllm
health_check: { path: /health, interval: 5s }
routing:
  load_balance_strategy: round_robin
  retry: { enabled: true, max_retries: 2, initial_wait: 100ms, max_wait: 2s }
auth:
  enabled: true
  storage: file
  defaults: { quota_reset_period: monthly }
api_keys:
  - key: sk-llmproxy-demo-123
    id: demo
    name: Demo key
    user_id: demo-user
rate_limit:
  enabled: true
  storage: redis
  per_key: { enabled: true, requests_per_second: 200, max_concurrent: 256 }
logging: { level: info }
YAML
}
G1=127.0.0.1:$(port 8000) A1=127.0.0.1:$(port 8001)
G2=127.0.0.1:$(port 8002) A2=127.0.0.1:$(port 8003)
write_config "$DIR/llmproxy.yaml" "$G1" "$A1" "$abs/workers"
write_config "$DIR/gateway-1.yaml" "$G1" "$A1" "$abs/gateway-1"
write_config "$DIR/gateway-2.yaml" "$G2" "$A2" "$abs/gateway-2"
./bin/llmproxy config check "$DIR/llmproxy.yaml" >/dev/null

run meter-1 ./bin/llmproxy serve --config "$DIR/llmproxy.yaml" --target meter --admin-listen "127.0.0.1:$(port 8011)"
run meter-2 ./bin/llmproxy serve --config "$DIR/llmproxy.yaml" --target meter --admin-listen "127.0.0.1:$(port 8012)"
run notifier ./bin/llmproxy serve --config "$DIR/llmproxy.yaml" --target notifier --admin-listen "127.0.0.1:$(port 8021)"
run gateway-1 ./bin/llmproxy serve --config "$DIR/gateway-1.yaml" --target gateway
run gateway-2 ./bin/llmproxy serve --config "$DIR/gateway-2.yaml" --target gateway
for a in meter-1:8011 meter-2:8012 notifier:8021 gateway-1:8001 gateway-2:8003; do
  wait_http "${a%%:*}" "http://127.0.0.1:$(port "${a##*:}")/readyz"
done

procs=
for i in "${!pids[@]}"; do procs+="${procs:+ }${names[$i]}=${pids[$i]}"; done

cat <<MSG

LLMProxy stack is up (logs in $DIR/logs, config $DIR/llmproxy.yaml):

  gateway-1   http://$G1   admin/metrics http://$A1
  gateway-2   http://$G2   admin/metrics http://$A2
  meter-1     http://127.0.0.1:$(port 8011)/metrics
  meter-2     http://127.0.0.1:$(port 8012)/metrics
  notifier    http://127.0.0.1:$(port 8021)/metrics
  mockllm     http://$MOCK
  nats        $NATS_URL
              monitoring http://127.0.0.1:$(port 8222) … $(port 8224) (streams with 3 replicas)
  redis       $redis_note db $REDIS_DB, prefix "$REDIS_PREFIX"
  pids        $procs

Try:

  curl -sS http://$G1/v1/chat/completions \\
    -H "Authorization: Bearer sk-llmproxy-demo-123" -H "Content-Type: application/json" \\
    -d '{"model":"mock-model","messages":[{"role":"user","content":"Hello"}]}'
  curl -sN http://$G2/v1/chat/completions \\
    -H "Authorization: Bearer sk-llmproxy-demo-123" -H "Content-Type: application/json" \\
    -d '{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"Hello"}]}'
  ./bin/llmproxy usage --config $DIR/llmproxy.yaml

To see failover, kill -9 one NATS node or one meter: the rest keeps running.
Ctrl-C stops all.
MSG
# Run until Ctrl-C (which interrupts the wait and runs on_signal). A process
# that exits — a NATS node or a meter killed to watch the failover — is
# reported and the rest keeps running.
gone=()
while :; do
  alive=0
  for i in "${!pids[@]}"; do
    [ -n "${gone[$i]:-}" ] && continue
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      alive=$((alive + 1))
      continue
    fi
    gone[$i]=1
    rc=0
    wait "${pids[$i]}" 2>/dev/null || rc=$?
    how="with status $rc"
    [ "$rc" -gt 128 ] && how="killed by signal $((rc - 128))"
    echo "$(date +%T) ${names[$i]} (pid ${pids[$i]}) exited $how; the rest keeps running (see $DIR/logs/${names[$i]}.log)" >&2
  done
  if [ "$alive" = 0 ]; then
    echo "every process of the stack has exited; see $DIR/logs" >&2
    exit 1
  fi
  wait -n || true
done
