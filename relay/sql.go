package relay

import (
	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/relaysql"
)

type statements struct {
	upsertReplica, renew, live, claim, release, releaseAll, deleteReplica, purgeReplicas, readMany, held string
	read, schemas, delete, markPublished, park, attempt, purgePublished                                  string
	claimGroups                                                                                          string
}

// fence is the head of every outcome write: the leases ($2 shards, $3 generations)
// that $4 still holds, locked FOR KEY SHARE for the rest of the transaction. A claim
// of one of them by another replica (which bumps the generation) either committed
// before, and the row does not match, or does not take the row until this
// transaction ends: claims lock the rows they take FOR UPDATE first (at-least-once:
// SKIP LOCKED moves past it; exactly-once: the claim waits), which conflicts with
// KEY SHARE, and so do releases (they wait). Rows of a shard not in held are not
// touched.
//
// KEY SHARE, not SHARE: the heartbeat's renew (an UPDATE of expires_at, not a key
// column) does not conflict with it. With FOR SHARE every renew waited for the
// outcome writes in flight and every outcome write behind it waited for the renew,
// once a heartbeat (an in-process probe at 5,000 events/s, two runs each: latency
// p50 68 and 29 ms with SHARE, 34 and 11 ms with KEY SHARE).
func fence(leases string) string {
	return `WITH held AS (SELECT l.shard FROM ` + leases + ` l JOIN unnest($2::int[], $3::bigint[]) g(shard, gen)
			ON l.shard = g.shard AND l.generation = g.gen WHERE l.owner = $4 FOR KEY SHARE OF l) `
}

// pinReadPlan makes a batch's read (run after it, in the same transaction) an
// ordered scan of the pending index, whatever the statistics say. Without column
// statistics (a backlog written before the table's first ANALYZE: a drain after an
// outage) the planner guesses about one pending row per shard and may pick a bitmap
// scan of the shard's pending rows and a sort: a 400,000-event backlog then read
// and sorted (on disk) all 6,200 rows of the shard at each batch, 30-60 ms a read
// instead of 5-8, and most of Postgres's CPU in the drain. The read needs neither a
// sort nor a bitmap scan: the index is in (shard, id) order.
const pinReadPlan = `SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)`

func newStatements(schema string) statements {
	q := func(t string) string { return pgx.Identifier{schema, t}.Sanitize() }
	o, l, rp := q("outbox"), q("shard_leases"), q("replicas")
	f := fence(l)
	return statements{
		// $1 id, $2 hostname, $3 TTL, $4 mode, $5 oldest open transaction (or NULL),
		// $6 fenced writes, $7 aborted transactions.
		upsertReplica: `INSERT INTO ` + rp + ` (id, hostname, expires_at, mode, txn_open_since, fenced_writes, aborted_txns)
			VALUES ($1, $2, now() + $3::interval, $4, $5, $6, $7)
			ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), expires_at = excluded.expires_at, mode = excluded.mode,
			txn_open_since = excluded.txn_open_since, fenced_writes = excluded.fenced_writes, aborted_txns = excluded.aborted_txns`,
		renew: `UPDATE ` + l + ` SET expires_at = now() + $2::interval WHERE owner = $1 RETURNING shard, generation`,
		live:  `SELECT id, mode FROM ` + rp + ` WHERE expires_at > now() ORDER BY id`,
		// Every claim bumps the shard's generation: the fence of the previous owner.
		claim: `UPDATE ` + l + ` SET owner = $1, generation = generation + 1, acquired_at = now(), expires_at = now() + $3::interval
			WHERE shard IN (SELECT shard FROM ` + l + ` WHERE owner IS NULL OR expires_at IS NULL OR expires_at < now()
			ORDER BY shard LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING shard, generation`,
		// Exactly-once mode claims whole groups ($4 shards each), $2 groups at most, and
		// only groups whose every shard is free; the caller holds the claim lock, which
		// exactly-once renews take too, so no claim or renew interleaves with it.
		// The rows are locked FOR UPDATE first: that waits for the outcome writes still
		// fenced by them (FOR KEY SHARE, see fence).
		claimGroups: `UPDATE ` + l + ` SET owner = $1, generation = generation + 1, acquired_at = now(), expires_at = now() + $3::interval
			WHERE shard IN (SELECT shard FROM ` + l + ` WHERE shard / $4 IN (SELECT shard / $4 FROM ` + l + ` GROUP BY 1
				HAVING bool_and(owner IS NULL OR expires_at IS NULL OR expires_at < now()) ORDER BY 1 LIMIT $2)
			AND (owner IS NULL OR expires_at IS NULL OR expires_at < now()) FOR UPDATE)
			RETURNING shard, generation`,
		// Releases lock the row FOR UPDATE first, as claims do: they wait for this
		// replica's outcome writes still fenced by it (FOR KEY SHARE does not stop a
		// plain UPDATE of non-key columns, and a release that overtook a fenced delete
		// left it deleting rows of a shard no one held, if only until its commit).
		release: `UPDATE ` + l + ` SET owner = NULL, expires_at = NULL
			WHERE shard IN (SELECT shard FROM ` + l + ` WHERE shard = $1 AND owner = $2 AND generation = $3 FOR UPDATE)`,
		// $1 shards, $2 generations, $3 owner: those still held.
		held: `SELECT l.shard FROM ` + l + ` l JOIN unnest($1::int[], $2::bigint[]) g(shard, gen)
			ON l.shard = g.shard AND l.generation = g.gen WHERE l.owner = $3`,
		releaseAll: `UPDATE ` + l + ` SET owner = NULL, expires_at = NULL
			WHERE shard IN (SELECT shard FROM ` + l + ` WHERE owner = $1 FOR UPDATE)`,
		deleteReplica: `DELETE FROM ` + rp + ` WHERE id = $1`,
		purgeReplicas: `DELETE FROM ` + rp + ` WHERE expires_at < now() - interval '10 minutes'`,
		read:          relaysql.ReadShard(schema),
		// Several shards at once: each shard's rows in id order, which keeps each key's
		// order (a key lives in one shard).
		readMany: relaysql.ReadShards(o),
		schemas:  `SELECT fingerprint, schema FROM ` + q("schemas") + ` WHERE fingerprint = ANY($1)`,
		// The outcome writes: $1 the row ids, $2..$4 the fence, $5 the errors (park:
		// the details), $6 the park reasons. The held shards are one array, computed
		// once: joined to the rows instead, a generic plan (the planner sees neither
		// the ids' nor the held shards' count) probed every id once per held shard,
		// 8× the index lookups of an exactly-once group's delete (163 ms for 4,000
		// rows against 28).
		delete:        f + `DELETE FROM ` + o + ` o WHERE o.id = ANY($1::bigint[]) AND o.shard = ANY(ARRAY(SELECT shard FROM held))`,
		markPublished: f + `UPDATE ` + o + ` o SET published_at = now(), attempts = o.attempts + 1 WHERE o.id = ANY($1::bigint[]) AND o.shard = ANY(ARRAY(SELECT shard FROM held))`,
		park: f + `UPDATE ` + o + ` o SET parked_at = now(), park_reason = u.park_reason, last_error = u.detail, attempts = o.attempts + 1
			FROM unnest($1::bigint[], $5::text[], $6::text[]) u(id, detail, park_reason) WHERE o.id = u.id AND o.shard = ANY(ARRAY(SELECT shard FROM held))`,
		attempt: f + `UPDATE ` + o + ` o SET last_error = u.reason, attempts = o.attempts + 1
			FROM unnest($1::bigint[], $5::text[]) u(id, reason) WHERE o.id = u.id AND o.shard = ANY(ARRAY(SELECT shard FROM held))`,
		purgePublished: `DELETE FROM ` + o + ` WHERE id IN (SELECT id FROM ` + o + ` WHERE published_at < now() - $1::interval LIMIT 10000)`,
	}
}
