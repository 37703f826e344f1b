// Package outbox is relaybox's embedded writer: it records events in the same
// Postgres transaction as the business rows they describe, so that an event exists if
// and only if the business change committed. Nothing on this path talks to Kafka or a
// schema registry; the relay (package relay) publishes the rows later.
//
// # Writing
//
//	w, err := outbox.New(pool, &outbox.Config{})
//	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if _, err := tx.Exec(ctx, `INSERT INTO orders ...`); err != nil {
//			return err
//		}
//		return outbox.Publish(ctx, w, tx, "orders", order.ID, "OrderCreated", created)
//	})
//
// [Writer.Write] takes any number of events and writes them in one round trip: one
// INSERT (VALUES for one event, SELECT FROM unnest(...) for many, with only the columns
// that differ between the events sent as arrays), pipelined with the schema upsert
// when needed and the NOTIFY. [Writer.Queue] appends the same statements to the
// caller's pgx.Batch instead, so the business statements and the events share one
// round trip:
//
//	b := &pgx.Batch{}
//	b.Queue(`INSERT INTO orders ...`, ...)
//	if err := w.Queue(ctx, b, events...); err != nil {
//		return err // bad input: nothing sent
//	}
//	return tx.SendBatch(ctx, b).Close()
//
// What an event adds to a business transaction, with Queue and with Write, is
// measured by BenchmarkBusinessTx; the figures are in docs/benchmarks.md ("The
// writer's cost"). Most of it is the outbox row itself, not the writer.
//
// # Avro
//
// Each value is encoded with hamba/avro at write time. Its schema is, in order of
// preference: [Event.Schema] (the text of an .avsc), the value type's AvroSchema()
// string method, or a record derived from the type's exported fields and `avro:"name"`
// tags (cached per type). The schema text is stored once per fingerprint (SHA-256 of the
// text) in the schemas table; the row references it and names the registry subject
// (see [SubjectStrategy]).
//
// # Table contract
//
// A service in another language writes rows the relay accepts with plain SQL; see
// docs/table-contract.md. In short, inside the business transaction:
//
//	INSERT INTO relaybox.schemas (fingerprint, schema)
//	     VALUES (sha256(convert_to($1, 'UTF8')), $1) ON CONFLICT DO NOTHING;
//	INSERT INTO relaybox.outbox (event_id, topic, key, event_type, subject,
//	                             schema_fingerprint, payload)
//	     VALUES ($2, $3, $4, $5, $3 || '-value', sha256(convert_to($1, 'UTF8')), $6);
//	SELECT pg_notify('relaybox_outbox', '');
//
// The shard is computed by the database (a generated column): the first four bytes of
// md5(key), big-endian, modulo 64. [Shard] computes the same in Go.
//
// # Schema governance
//
// The registry judges a schema only when the relay registers it, after the business
// transaction committed. A service lists the schemas it writes as [EventSchema] values
// and calls [CheckSchemas] at start-up (refusing to start on a break), or the helpers
// of package outbox/outboxtest in its tests; `relaybox schema check` does the same in
// CI. None of this is on the write path. See docs/operations.md, "Evolving a schema
// safely".
//
// # Tracing
//
// When ctx carries a span, Write (and Queue) start a child span named [SpanName]
// (kind producer, messaging.operation.type "create", with the topic, the number of
// events and the first 32 event ids) through Config.TracerProvider, and every event
// of the write stores that span's W3C context (traceparent, tracestate). The relay
// carries it onward unchanged in the Kafka record's headers, so the consumer's span
// for the record is a child of the write span. With a no-op provider the events
// store the caller's own span context and a span event named [SpanName] on the
// caller's span marks the write. A ctx without a span makes no span and stores no
// trace context. Only the OpenTelemetry API is used here: the application installs
// the SDK. See docs/operations.md, "Tracing".
package outbox
