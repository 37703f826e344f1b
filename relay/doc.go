// Package relay drains relaybox's outbox into Kafka: in per-key order, through a
// Confluent-compatible schema registry, with several replicas sharing the work.
//
// # Flow
//
// The outbox is split into 64 shards (hash of the key, fixed by the migration). Each
// shard is leased to one live replica at a time. For every shard it owns, a replica
// reads the oldest unpublished rows by the (shard, id) index, resolves each row's schema
// to a registry id (cached; registered unless DisableAutoRegister is set), frames the Avro payload
// in the Confluent wire format, produces with franz-go's idempotent producer
// (acks=all, record key = event key, envelope as headers), waits for the acks, and
// deletes the acked rows in one statement (or marks them published in retention mode).
// Shards are drained concurrently, so Postgres reads of one shard overlap Kafka
// round trips of others. LISTEN on the writer's channel wakes the drains at once;
// PollInterval is the fallback.
//
// A row that fails and every later row of its key stay in the table: other keys go on.
// A failure that a retry cannot fix (the registry calls the schema incompatible, the
// record is too large, the topic does not exist) parks the row with its reason; rows of
// the same key wait behind it until an operator retries or skips it.
//
// # Shard leases
//
// Two tables carry the protocol. replicas holds one row per live relay, refreshed every
// HeartbeatInterval with expires_at = now() + LeaseTTL (database time). shard_leases
// holds one row per shard: its owner and expires_at.
//
// Every heartbeat a replica, in order:
//
//  1. refreshes its replicas row;
//  2. renews its leases: UPDATE shard_leases SET expires_at = now() + LeaseTTL WHERE
//     owner = me RETURNING shard. A shard it thought it held that is not returned is
//     lost: its drain is stopped at once;
//  3. reads the live replicas (expires_at > now()) ordered by id, and computes its fair
//     share: 64 / n, plus one for the first 64 mod n replicas;
//  4. claims free or expired shards up to its share (UPDATE ... WHERE shard IN (SELECT
//     ... FOR UPDATE SKIP LOCKED)), or, holding more than its share, stops the drains of
//     the excess, waits for their batch in flight, and sets their owner to NULL.
//
// A joining replica thus gets shards as the others shed them; a leaving one releases
// its shards on Stop; a dead one's leases expire after LeaseTTL and are claimed.
//
// # Why a replica stops before another starts
//
// Before each renew or claim a replica notes its monotonic clock, t0. The database sets
// expires_at = now() + LeaseTTL where now() is at or after t0. The replica holds the
// lease locally only until t0 + LeaseTTL - LeaseTTL/10, which passes before the database
// expiry: a replica that cannot renew (its Postgres session gone, the database down, or
// the process paused) stops starting batches for the shard at that local deadline, a
// tenth of LeaseTTL before any other replica may claim it. Each batch is also bounded
// in time by the deadline it started under.
//
// # Fencing
//
// A lease is a promise about time, not a fence: a paused process wakes up believing it
// still owns its shards. So every claim bumps the shard's generation, and every write a
// replica makes about a shard's rows names the owner and the generation it drains
// under (and locks the lease row FOR SHARE for its transaction): a replica that lost
// the lease changes nothing. A lost lease also cancels the batch in flight, and a batch
// whose deadline passed before produce does not produce (sql.go, batch.go).
//
// The window fencing cannot close in at-least-once mode is a process frozen while its
// records are already handed to the Kafka client: when it wakes, they may be delivered
// after the new owner published the same rows (duplicates, and records landing after
// newer ones of their key). Config.ExactlyOnce closes it with Kafka transactions: see
// eos.go and docs/guarantees.md.
//
// Defaults: LeaseTTL 15s, HeartbeatInterval 3s (so two missed heartbeats still leave
// 9s), PollInterval 1s.
//
// # Tracing
//
// Each batch is one span, [BatchSpanName] (kind producer), made through
// Config.TracerProvider (the global provider by default), from the read to the
// outcome's commit, with the shard, rows, bytes handed to Kafka, published, parked,
// retried and the outcome (the Outcome* values). It links to the trace context the
// writer stored with the events: one link per distinct trace id, for the first
// [MaxBatchLinks] = 128 distinct traces in row order (the SDK's default link limit,
// past which it would drop links silently); the distinct traces past that are counted
// in relaybox.links.dropped and the events without a context in
// relaybox.links.untraced. A 4,000-row batch of 4,000 requests therefore links the
// first 128 and says that 3,872 more were carried. A batch whose traced events all
// belong to one trace is a child of the first one's context; any other batch is a
// root. The Kafka record carries the writer's traceparent and tracestate unchanged:
// the consumer continues the writer's trace, not the relay's. See
// docs/operations.md, "Tracing".
package relay
