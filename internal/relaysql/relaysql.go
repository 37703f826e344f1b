// Package relaysql holds the relay's batch read statement, shared by package relay,
// which prepares it, and the benchmarks under bench/, which time it alone (EXPLAIN
// and latency on a real database). It is internal: the statement is not an API.
package relaysql

import "github.com/jackc/pgx/v5"

// Read is a batch's read of the outbox table (quoted): the oldest pending rows of
// the shards in where, skipping keys blocked behind a parked row (parkedShard
// restricts the parked probe to the same shard), ordered by order, LIMIT $2.
func Read(outbox, where, parkedShard, order string) string {
	return `SELECT o.id, o.event_id, o.topic, o.key, o.event_type, o.aggregate_type, o.subject, o.schema_fingerprint,
			o.payload, o.headers, o.occurred_at, o.created_at, o.correlation_id, o.causation_id, o.source, o.traceparent, o.tracestate
			FROM ` + outbox + ` o WHERE ` + where + ` AND o.published_at IS NULL AND o.parked_at IS NULL
			AND NOT EXISTS (SELECT 1 FROM ` + outbox + ` p WHERE ` + parkedShard + ` AND p.key = o.key AND p.parked_at IS NOT NULL)
			ORDER BY ` + order + ` LIMIT $2`
}

// ReadShard is the statement a batch of one shard reads its rows with, for the outbox
// in schema: $1 is the shard, $2 the most rows (relay.Config.BatchSize).
func ReadShard(schema string) string {
	return Read(pgx.Identifier{schema, "outbox"}.Sanitize(), "o.shard = $1", "p.shard = $1", "o.id")
}
