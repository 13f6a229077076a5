// Package balancer chooses an inference backend for each request.
//
// An Upstream is one backend with its state held in atomics (in flight,
// passive failures and ejection, active health verdict, time-to-first-token
// EWMA, last scraped engine load). A Pool holds the configured upstreams and
// one Picker, the load-balancing strategy; Pool.Pick filters the upstreams
// that serve a model, are available and were not tried yet in this request,
// and hands the candidates to the Picker; with none, it reads the fallback
// chains of those that cannot take the request, and with nothing available
// at all it picks among the passively ejected ones (panic mode). Pickers are small types, one per
// file, with randomness and time injected so tests are deterministic.
//
// The HealthChecker runs active health checks and, for least_load, scrapes
// the engines' Prometheus metrics on the same loop. NewCollector exposes the
// upstreams' state to Prometheus; Pool.Snapshot feeds /readyz.
package balancer
