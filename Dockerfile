# syntax=docker/dockerfile:1
#
# LLMProxy image: llmproxy (every serve target and the operator commands) and
# mockllm (the fake inference engine used by the compose stack and demos).
#
#   docker build -t llmproxy:local .
#   docker run --rm -p 8000:8000 -v $PWD/my.yaml:/etc/llmproxy/llmproxy.yaml:ro llmproxy:local
#   docker run --rm --entrypoint mockllm llmproxy:local --listen 0.0.0.0:9000
#
# The final stage is distroless "static" running as uid 65532 (nonroot): no
# shell, no package manager, only the two static binaries, the container
# probe and CA certificates.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
ARG VERSION=dev

# Module files first: the download layer is reused until a go.mod/go.sum
# changes. go.work names every module, so all of them must be present.
COPY go.work go.work.sum ./
COPY pkg/go.mod pkg/go.sum pkg/
COPY services/gateway/go.mod services/gateway/go.sum services/gateway/
COPY services/meter/go.mod services/meter/go.sum services/meter/
COPY services/notifier/go.mod services/notifier/go.sum services/notifier/
COPY services/recorder/go.mod services/recorder/go.sum services/recorder/
COPY cmd/go.mod cmd/go.sum cmd/
COPY test/e2e/go.mod test/e2e/go.sum test/e2e/
COPY bench/go.mod bench/go.sum bench/
RUN --mount=type=cache,target=/go/pkg/mod \
    cd cmd && go mod download

COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    mkdir -p /out/data \
 && go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/llmproxy ./cmd/llmproxy \
 && go build -trimpath -ldflags "-s -w" -o /out/mockllm ./cmd/mockllm \
 && GOWORK=off go build -trimpath -ldflags "-s -w" -o /out/healthcheck ./deploy/docker/healthcheck/main.go

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/llmproxy /out/mockllm /out/healthcheck /usr/local/bin/
# data_dir (outbox, embedded NATS store, local ledger). A named volume mounted
# here starts with this directory's owner, so the nonroot user can write it.
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
USER 65532:65532
# 8000: the gateway (API, /healthz, /readyz, /metrics); 8001: the admin
# listener (/healthz, /readyz, /metrics, /admin/*) when admin.listen is set.
EXPOSE 8000 8001
# No HEALTHCHECK here: which port answers depends on the target and the
# config. Probe with the bundled binary, e.g. in compose:
#   test: ["CMD", "/usr/local/bin/healthcheck", "http://127.0.0.1:8001/healthz"]
ENTRYPOINT ["/usr/local/bin/llmproxy"]
CMD ["serve", "--config", "/etc/llmproxy/llmproxy.yaml"]
