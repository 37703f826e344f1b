// Package chaos is relaybox's fault suite: writers, 3 relay processes and 2 consumer
// processes on a Postgres, a Kafka broker and a registry it owns, while faults are
// injected at random moments from a printed seed; then it verifies, from the business
// table and from Kafka read back by an independent client, that nothing was lost,
// nothing reordered, and every effect applied exactly once.
//
// It runs as a Go test: the short variant (TestChaos_Short) is part of `make test`;
// `make chaos` runs TestChaos with CHAOS_EVENTS, CHAOS_FAULTS, CHAOS_SEED and writes
// the JSON report to CHAOS_OUT.
package chaos
