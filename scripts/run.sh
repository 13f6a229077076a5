#!/usr/bin/env bash
# Runs the quickstart: mockllm on 127.0.0.1:9000 and llmproxy (target all)
# on 127.0.0.1:8080 with examples/quickstart.yaml. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
./bin/mockllm --listen 127.0.0.1:9000 --tokens 12 --gap 30ms &
mock=$!
./bin/llmproxy serve --config examples/quickstart.yaml &
proxy=$!
trap 'kill -TERM $proxy $mock 2>/dev/null; wait $proxy $mock 2>/dev/null; exit 0' INT TERM
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
cat <<'MSG'

LLMProxy is up on http://127.0.0.1:8080 (backend: mockllm on 127.0.0.1:9000).
Try:

  curl -sS http://127.0.0.1:8080/v1/chat/completions \
    -H "Authorization: Bearer sk-llmproxy-demo-123" \
    -H "Content-Type: application/json" \
    -d '{"model":"mock-model","messages":[{"role":"user","content":"Hello there"}]}'

  ./bin/llmproxy usage --config examples/quickstart.yaml

Ctrl-C stops both.
MSG
wait $proxy
