package main

import (
	"errors"
	"fmt"

	"github.com/llmproxy/llmproxy/pkg/config"
)

// checkTarget reports, one line each, what target needs that cfg does not
// give, before anything starts. Only target all runs on its own (embedded
// NATS, local ledger); every other target is one process of many and
// shares the bus and the ledger with the others. A gateway without Redis
// would enforce no token quota at all, so it is refused rather than run
// unlimited.
func checkTarget(cfg *config.Config, target string) error {
	var errs []error
	need := func(ok bool, key, why string) {
		if !ok {
			errs = append(errs, fmt.Errorf("--target %s needs %s: %s", target, key, why))
		}
	}
	const embedded = "the embedded NATS server runs only with --target all"
	hasNATS, hasRedis := cfg.NATS.URL != "", cfg.Redis.Enabled()
	switch target {
	case "gateway":
		need(hasNATS, "nats.url", embedded)
		need(hasRedis, "redis.url (or redis.addrs, or redis.sentinel)",
			"gateways admit requests against the shared ledger; without it no token quota would be enforced")
	case "meter":
		need(hasNATS, "nats.url", embedded)
		need(hasRedis, "redis.url (or redis.addrs, or redis.sentinel)", "the meter writes usage to the shared ledger")
	case "notifier":
		need(hasNATS, "nats.url", embedded)
	case "recorder":
		need(hasNATS, "nats.url", embedded)
		need(cfg.Logging.Postgres.URL != "", "logging.postgres.url", "the recorder writes the request log there")
	}
	return errors.Join(errs...)
}
