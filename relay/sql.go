package relay

import "github.com/jackc/pgx/v5"

type statements struct {
	upsertReplica, renew, live, claim, release, releaseAll, deleteReplica, purgeReplicas, readMany string
	read, schemas, delete, markPublished, park, attempt, purgePublished                            string
}

func newStatements(schema string) statements {
	q := func(t string) string { return pgx.Identifier{schema, t}.Sanitize() }
	o, l, rp := q("outbox"), q("shard_leases"), q("replicas")
	return statements{
		upsertReplica: `INSERT INTO ` + rp + ` (id, hostname, expires_at) VALUES ($1, $2, now() + $3::interval)
			ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), expires_at = excluded.expires_at`,
		renew: `UPDATE ` + l + ` SET expires_at = now() + $2::interval WHERE owner = $1 RETURNING shard`,
		live:  `SELECT id FROM ` + rp + ` WHERE expires_at > now() ORDER BY id`,
		claim: `UPDATE ` + l + ` SET owner = $1, acquired_at = now(), expires_at = now() + $3::interval
			WHERE shard IN (SELECT shard FROM ` + l + ` WHERE owner IS NULL OR expires_at IS NULL OR expires_at < now()
			ORDER BY shard LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING shard`,
		release:       `UPDATE ` + l + ` SET owner = NULL, expires_at = NULL WHERE shard = $1 AND owner = $2`,
		releaseAll:    `UPDATE ` + l + ` SET owner = NULL, expires_at = NULL WHERE owner = $1`,
		deleteReplica: `DELETE FROM ` + rp + ` WHERE id = $1`,
		purgeReplicas: `DELETE FROM ` + rp + ` WHERE expires_at < now() - interval '10 minutes'`,
		read:          readSQL(o, "o.shard = $1", "p.shard = $1", "o.id"),
		// Several shards at once: ordered by shard then id, which keeps each key's order
		// (a key lives in one shard) and follows the (shard, id) index.
		readMany:       readSQL(o, "o.shard = ANY($1::int[])", "p.shard = o.shard", "o.shard, o.id"),
		schemas:        `SELECT fingerprint, schema FROM ` + q("schemas") + ` WHERE fingerprint = ANY($1)`,
		delete:         `DELETE FROM ` + o + ` WHERE id = ANY($1::bigint[])`,
		markPublished:  `UPDATE ` + o + ` SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1::bigint[])`,
		park:           `UPDATE ` + o + ` o SET parked_at = now(), last_error = u.reason, attempts = o.attempts + 1 FROM unnest($1::bigint[], $2::text[]) u(id, reason) WHERE o.id = u.id`,
		attempt:        `UPDATE ` + o + ` o SET last_error = u.reason, attempts = o.attempts + 1 FROM unnest($1::bigint[], $2::text[]) u(id, reason) WHERE o.id = u.id`,
		purgePublished: `DELETE FROM ` + o + ` WHERE id IN (SELECT id FROM ` + o + ` WHERE published_at < now() - $1::interval LIMIT 10000)`,
	}
}

// ClaimSQL is the statement a batch of one shard reads its rows with, for the outbox
// in schema: $1 is the shard, $2 the most rows (Config.BatchSize). It is exported for
// EXPLAIN on a real database and for benchmarks that time it; the relay prepares it
// itself.
func ClaimSQL(schema string) string {
	return newStatements(schema).read
}

// readSQL is a batch's claim: the oldest pending rows of the shards in where, skipping
// keys blocked behind a parked row, LIMIT $2.
func readSQL(outbox, where, parkedShard, order string) string {
	return `SELECT o.id, o.event_id, o.topic, o.key, o.event_type, o.aggregate_type, o.subject, o.schema_fingerprint,
			o.payload, o.headers, o.occurred_at, o.created_at, o.correlation_id, o.causation_id, o.source, o.traceparent, o.tracestate
			FROM ` + outbox + ` o WHERE ` + where + ` AND o.published_at IS NULL AND o.parked_at IS NULL
			AND NOT EXISTS (SELECT 1 FROM ` + outbox + ` p WHERE ` + parkedShard + ` AND p.key = o.key AND p.parked_at IS NOT NULL)
			ORDER BY ` + order + ` LIMIT $2`
}
