// Package chaos is relaybox's fault suite: writers, 3 relay processes and 2 consumer
// processes on a Postgres, a Kafka broker and a registry it owns, while faults are
// injected at random moments from a printed seed; then it verifies, from the business
// table and from Kafka read back and decoded by an independent client, that nothing
// was lost, nothing reordered, and every effect applied exactly once. Each fault's harm
// is observed, not assumed (faults_effective, fault_log), and CHAOS_MODE=exactly-once
// runs the relays with --exactly-once and requires a read_committed topic without a
// duplicate or a stale record.
//
// It runs as a Go test: the short variant (TestChaos_Short) is part of `make test`;
// `make chaos` runs TestChaos with CHAOS_EVENTS, CHAOS_FAULTS, CHAOS_SEED, CHAOS_MODE
// and writes the JSON report to CHAOS_OUT (docs/fault-suite.md).
package chaos
