// Package consumer is relaybox's idempotent consumer: it reads the events the relay
// publishes (or any Confluent-framed Avro records), decodes them into Go types, and
// applies each one's database effects exactly once per consumer group, however often
// Kafka delivers it.
//
//	c, err := consumer.New(pool, &consumer.Config{
//		Group:       "inventory",
//		Topics:      []string{"orders"},
//		Brokers:     []string{"localhost:9092"},
//		RegistryURL: "http://localhost:8081",
//	})
//	if err != nil {
//		return err
//	}
//	consumer.Handle(c, "OrderCreated", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderCreated]) error {
//		_, err := tx.Exec(ctx, `UPDATE stock SET reserved = reserved + $1 WHERE sku = $2`, ev.Value.Quantity, ev.Value.SKU)
//		return err
//	})
//	return c.Run(ctx) // until ctx is cancelled
//
// # Exactly-once effects
//
// For each record the consumer opens a Postgres transaction and first inserts the
// event id into processed_events (consumer_group, event_id, topic, partition,
// offset):
//
//	INSERT INTO relaybox.processed_events (consumer_group, event_id, topic, "partition", "offset")
//	     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING
//
// If the row already exists the event was applied before: the handler does not run,
// the transaction is rolled back, Hooks.OnDuplicate is called and the offset moves
// on. Otherwise the handler runs in the same transaction and both commit together,
// or neither does. Two deliveries racing each other (a rebalance with the old owner
// still busy) serialize on the row: the second waits for the first to commit and
// then sees a duplicate.
//
// The guarantee covers what the handler does through its tx. Anything else it does
// (an HTTP call, a message sent) happens at least once: on a retry, and on a crash
// between that side effect and the commit. A handler must not commit or roll back
// tx itself; it returns nil or an error.
//
// The event id is the relaybox.event_id header the relay sets. A record without one
// is deduplicated by Config.DedupKey, by default "topic/partition/offset", which
// catches redeliveries of the record but not another copy of it.
//
// # Handlers
//
// [Handle] registers a typed handler for an event type (the relaybox.event_type
// header; for records without it, the full name of the writer schema):
//
//	consumer.Handle(c, "OrderShipped", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderShipped]) error { ... })
//
// [Event] carries the decoded value and the envelope: ID, Type, Key,
// AggregateType, OccurredAt, CorrelationID, CausationID, Source, all headers, and
// the topic, partition and offset. The handler's context carries the record's span
// (see Tracing below), a child of the W3C trace context in the record's traceparent
// and tracestate headers, so spans started in a handler nest under it and continue
// the writer's trace.
//
// # Tracing
//
// Each record is processed in a span named "process <topic>" (kind consumer), made
// through Config.TracerProvider (the global provider by default), a child of the
// context in the record's traceparent header (the write span of the outbox writer,
// or whatever a foreign producer put there), with the messaging semantic-convention
// attributes: messaging.system "kafka", messaging.destination.name,
// messaging.destination.partition.id, messaging.kafka.offset, messaging.message.id
// (the event id, or the DedupKey of a record without one),
// messaging.consumer.group.name, messaging.operation.type "process". It ends when the
// record is done, with relaybox.outcome one of applied, duplicate, skipped,
// dead_lettered (status error, relaybox.dlq.reason) or interrupted (revoked before
// done: delivered again); each failed attempt adds a "retry" span event, and
// relaybox.retries counts them.
//
// In BatchMode every record keeps that span, so a handler's spans still nest under
// their own record's trace, and each record span links to a root span named
// relaybox.consumer.batch for the batch's transaction (messaging.batch.message_count,
// relaybox.outcome committed, split or interrupted). The batch span links to the
// records' trace contexts, one link per distinct trace id for the first 128, as the
// relay's batch span does. See docs/operations.md, "Tracing".
//
// [Consumer.Handle] takes a [Handler] (or a [HandlerFunc]) that gets the undecoded
// [Message] and may call [Message.Decode] itself; [Consumer.Use] wraps every
// handler in [Middleware], as net/http middleware does.
//
// # Decoding
//
// A value is a Confluent wire-format frame: magic byte 0, the 4-byte schema id, the
// Avro body. The writer schema is fetched from the registry by id (once, then
// cached); the reader schema is the handler's Go type's (its AvroSchema() method, or
// one derived from its fields and `avro` tags). The two are resolved with Avro schema
// resolution, once per (type, schema id): a record written with a newer schema that
// added a field with a default decodes into the older Go type, and a Go type with a
// defaulted field the writer lacks gets the default.
//
// # Order and parallelism
//
// The consumer is a franz-go group consumer. Each assigned partition has its own
// goroutine that applies its records one after another, in offset order; partitions
// run in parallel, so a slow partition never holds up the others. Fetched records
// wait in a bounded per-partition queue (Config.MaxBufferedPerPartition); a
// partition whose queue is full is paused (no more fetching) until its goroutine
// catches up, which bounds memory.
//
// Offsets are committed only for records whose transaction committed (or that were
// duplicates, skipped or dead-lettered), every Config.CommitInterval and on revoke:
// when a rebalance takes partitions away, their goroutines finish the record in
// flight, their offsets are committed, and only then does the rebalance go on
// (kgo.BlockRebalanceOnPoll). A crash loses no work and at most redelivers what was
// applied since the last commit, which dedup then skips.
//
// # Failures
//
// A handler error rolls the transaction back and the record is tried again, after a
// backoff starting at Config.RetryBackoff and doubling up to Config.MaxRetryBackoff,
// up to Config.MaxAttempts times in all; then it goes to the dead-letter topic
// (Config.DeadLetterTopic, by default "<topic>.dlq") and the partition moves on to
// the next record. An error wrapped with [Permanent] skips the retries. A record
// that cannot be decoded (not in the wire format, a schema id the registry does not
// know, a body that does not decode, a writer schema the Go type cannot read) is
// dead-lettered at once; so is an event type without a handler under
// [DeadLetterUnknown] (the default, [SkipUnknown], records it in processed_events and
// moves on). A body is decoded only once processed_events says its event is new: a
// duplicate is never decoded (a redelivered backlog costs no Avro decode), so a
// duplicate whose body does not decode, or that the Go type cannot read, is counted
// as a duplicate, not dead-lettered.
//
// A dead letter is the original record (key, value, headers) with headers added:
// relaybox.dlq.error, .reason, .attempts, .group, .topic, .partition, .offset and
// .time (see the HeaderDLQ constants). A dead-letter topic that does not exist is
// created by the consumer with max.message.bytes 8 MiB, so that a record near the
// broker's 1 MiB default still fits with these headers; give topics you create
// yourself the same room (a dead letter that does not fit blocks its partition, with
// a warning per attempt, rather than being dropped). Dead-lettered events are not recorded in
// processed_events, so that [Redrive] (`relaybox dlq redrive`), which moves them back
// to their topic once the cause is fixed, gets them applied. Dead-lettering is at
// least once: a crash right after producing a dead letter produces it again.
//
// Failures of the infrastructure rather than of the record are retried without
// limit and do not count as attempts: Postgres unreachable (or a transaction's
// connection lost), the registry unavailable, the dead-letter topic not accepting
// the record. The partition waits; nothing is dropped. Hooks.OnError reports them.
//
// # Batch mode
//
// With Config.BatchMode the records a partition has waiting (up to Config.MaxBatch)
// run in one transaction, each under its own savepoint: the processed_events row
// and the handler's effects of a failing record are rolled back to its savepoint,
// the record is retried and, if it keeps failing, dead-lettered, all inside the
// batch and in offset order, and the other records commit. This saves a commit per
// record. A record that keeps failing holds the batch's transaction open through its
// retries. If the commit itself fails, the batch runs again (dead letters already
// produced for it may then be produced twice).
//
// The savepoints are the slow path. A batch first records all its event ids in one
// statement and runs the handlers of the new ones without savepoints; it falls back
// to the savepoints when a record fails. After a batch whose events were all new (the
// steady state), the next one is recorded with a plain multi-row INSERT, cheaper for
// Postgres than ON CONFLICT DO NOTHING RETURNING; an event already recorded then
// fails that INSERT, the transaction starts again with ON CONFLICT DO NOTHING
// RETURNING (which says which events are new) and the partition keeps that statement
// until a batch is all new again. A redelivery costs that one restart, not an error.
//
// A handler statement whose result the handler does not need can go through
// [ExecDeferred] instead of tx.Exec: batch mode then sends the whole batch's deferred
// statements in one round trip before its commit (single-record mode sends them with
// the record's COMMIT), instead of a round trip each. An effect that is a plain
// insert can go through [InsertDeferred]: batch mode then sends the rows that the
// batch's handlers insert into one table as one COPY, which costs Postgres less than
// half of a statement per row. A deferred statement or row that fails sends the batch down
// the savepoint path above, so its record alone is retried and dead-lettered.
//
// # Retention
//
// processed_events grows by one row per event and group. [Consumer.Clean] deletes a
// group's rows older than an age, in bounded batches; Config.CleanAfter runs it
// periodically inside Run. Deleting rows reopens the door to duplicates: an event
// redelivered after its row is gone is applied again. Redeliveries come from a crash
// before an offset commit (seconds old), a consumer group reset to an older offset,
// a redrive of an old dead letter, or the relay republishing after a long outage.
// Keep CleanAfter well beyond the oldest of these you can get (days, not minutes); a
// CleanAfter longer than the topics' Kafka retention covers every redelivery from
// Kafka, offset resets included. [Consumer.CleanCommitted] (Config.CleanCommittedOnly)
// also keeps the rows of records Kafka can still deliver to the group (its committed
// offset of their partition is not past them: commits lost, a group rewound); prefer
// it. Copies of an event at another offset are covered by the age only.
//
// # Shutdown
//
// [Consumer.Run] returns when its context is cancelled: each partition finishes the
// record in flight (records fetched but not started are left for the next owner),
// the offsets are committed, and the consumer leaves its group. A handler that never
// returns blocks rebalances and shutdown: give it deadlines.
//
// # Metrics
//
// [Hooks] are plain functions called on each outcome (processed, duplicate,
// skipped, retry, dead letter), with handler latency, partition lag, batch sizes
// and infrastructure errors; each takes one struct. The package itself imports no
// metrics library: package github.com/relaybox/relaybox/metrics turns the hooks
// into Prometheus collectors:
//
//	m, err := metrics.NewConsumer(&metrics.ConsumerOpts{Registerer: prometheus.DefaultRegisterer})
//	if err != nil { ... }
//	m.Install(cfg) // cfg is the *consumer.Config given to New
//	http.Handle("/metrics", promhttp.Handler())
package consumer
