# LLMProxy — build, run, test, benchmark.
GO       ?= go
MODULES  := pkg services/gateway services/meter services/notifier services/recorder cmd test/e2e bench
REDIS_URL ?= redis://127.0.0.1:6379/15
export REDIS_URL

.PHONY: build run test vet lint fmt bench clean stack

build: bin/llmproxy bin/mockllm

bin/llmproxy: FORCE
	cd cmd && $(GO) build -o ../bin/llmproxy ./llmproxy

bin/mockllm: FORCE
	cd cmd && $(GO) build -o ../bin/mockllm ./mockllm

FORCE:

# Starts mockllm and the single binary with examples/quickstart.yaml; Ctrl-C
# stops both.
run: build
	@bash scripts/run.sh

# The compose topology as local processes: 3-node NATS JetStream cluster,
# Redis, 2 gateways, 2 meters, 1 notifier, mockllm (scripts/stack.sh).
stack:
	@bash scripts/stack.sh

vet:
	@for m in $(MODULES); do (cd $$m && $(GO) vet ./...) || exit 1; done

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Unit and integration tests in every module, with the race detector, then
# the compatibility suite with real clients (needs node and npm).
# Integration tests use an embedded nats-server, the Redis at REDIS_URL and
# the PostgreSQL at PG_URL.
# The end-to-end tests marked parallel spend most of their time waiting
# (an outage, ack waits), so they all run at once there, not two at a time.
test: lint build
	@for m in $(MODULES); do echo "== $$m"; p=; [ $$m = test/e2e ] && p="-parallel 8"; \
		(cd $$m && $(GO) test -race -count=1 -timeout 600s $$p ./...) || exit 1; done
	@if [ -n "$$LLMPROXY_TEST_VALKEY" ]; then echo "== pkg/ledger's replication tests on $$LLMPROXY_TEST_VALKEY"; \
		(cd pkg/ledger && LLMPROXY_TEST_REDIS_SERVER="$$LLMPROXY_TEST_VALKEY" $(GO) test -race -count=1 -timeout 300s \
			-run 'Replicas|AppliedAgain|WaitRefused|FollowUpsBehind|CancellationsGoBefore|WantOfReplicas' .) || exit 1; fi
	@echo "== test/compat (real clients: openai, @anthropic-ai/sdk, opencode, the README's curl lines)"
	@bash test/compat/run.sh

bench: build
	@bash bench/run.sh

clean:
	rm -rf bin
