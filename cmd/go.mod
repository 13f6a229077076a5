module github.com/llmproxy/llmproxy/cmd

go 1.26.0

require (
	github.com/llmproxy/llmproxy/pkg v0.0.0
	github.com/llmproxy/llmproxy/services/gateway v0.0.0
	github.com/llmproxy/llmproxy/services/meter v0.0.0
	github.com/llmproxy/llmproxy/services/notifier v0.0.0
)

require (
	github.com/antithesishq/antithesis-sdk-go v0.8.0-default-no-op // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/google/go-tpm v0.9.8 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/llmproxy/llmproxy/services/recorder v0.0.0
	github.com/minio/highwayhash v1.0.4 // indirect
	github.com/nats-io/jwt/v2 v2.8.2
	github.com/nats-io/nats-server/v2 v2.15.2 // indirect
	github.com/nats-io/nats.go v1.55.0 // indirect
	github.com/nats-io/nkeys v0.4.16
	github.com/nats-io/nuid v1.0.1 // indirect
	github.com/redis/go-redis/v9 v9.23.0 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)

replace github.com/llmproxy/llmproxy/pkg => ../pkg

replace github.com/llmproxy/llmproxy/services/gateway => ../services/gateway

replace github.com/llmproxy/llmproxy/services/meter => ../services/meter

replace github.com/llmproxy/llmproxy/services/notifier => ../services/notifier

replace github.com/llmproxy/llmproxy/services/recorder => ../services/recorder
