// Package relaysql holds the relay's batch read statement and the head of its outcome
// writes, shared by package relay, which prepares them, and the benchmarks under
// bench/, which time them alone (EXPLAIN, latency and the Postgres limit on a real
// database). It is internal: the statements are not an API.
package relaysql

import "github.com/jackc/pgx/v5"

// AsyncCommit makes the transaction it runs in (a batch's outcome writes, sent
// with it in one pgx batch: one implicit transaction, no BEGIN or COMMIT) commit
// without waiting for the WAL flush, as SET LOCAL synchronous_commit TO off would.
const AsyncCommit = `SELECT set_config('synchronous_commit', 'off', true)`

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

// ReadShards is the statement a batch of several shards reads its rows with: $1 the
// shards (an int array), $2 the most rows in all. Each shard's rows come as the
// single-shard read finds them (equality on the leading column of the (shard, id)
// index: an ordered index scan, whatever the statistics say), in the array's order
// of shards, and the LIMIT stops the scans once $2 rows are found. The earlier form,
// shard = ANY($1) ORDER BY shard, id, let the planner sort every pending row of the
// shards when its statistics were stale (a backlog written since the last ANALYZE:
// a bitmap scan of all 25,700 rows of 8 shards and an on-disk sort, 187 ms, to
// return 4,000; 15 ms in this form). This form alone still flips at 400,000 rows
// without statistics: the relay runs both reads after turning off sorts and bitmap
// scans for them (relay's pinReadPlan). Rows of one shard are a prefix of that shard's
// pending rows in id order, which is all a batch needs: a key lives in one shard.
func ReadShards(outbox string) string {
	return `SELECT o.* FROM unnest($1::int[]) s(shard) CROSS JOIN LATERAL (` +
		Read(outbox, "o.shard = s.shard", "p.shard = s.shard", "o.id") + `) o LIMIT $2`
}

// ReadShard is the statement a batch of one shard reads its rows with, for the outbox
// in schema: $1 is the shard, $2 the most rows (relay.Config.BatchSize).
func ReadShard(schema string) string {
	return Read(pgx.Identifier{schema, "outbox"}.Sanitize(), "o.shard = $1", "p.shard = $1", "o.id")
}
