// Package relayboxtest is the test kit for services built on relaybox: assert which
// events a unit of work wrote to the outbox, and run the relay and a consumer
// in-process so that a test can follow its events through Kafka into the consumer's
// effects, waiting on conditions, never sleeping. Import it from tests only.
//
// # Asserting what a unit of work wrote
//
// The Require functions read the outbox through a pool, a connection or the unit of
// work's own transaction (before it commits), and decode each event's value into the
// test's Go type with Avro schema resolution from the schema it was written with, as
// the consumer does. They need Postgres only: no Kafka, no registry.
//
//	func TestCreateOrder_WritesOrderCreated(t *testing.T) {
//		tx, _ := pool.Begin(ctx)
//		defer tx.Rollback(ctx)
//		id, _ := svc.CreateOrder(ctx, tx, "c1", lines)
//		ev := relayboxtest.RequireEvent[ordersvc.OrderCreated](t, tx, &relayboxtest.Filter{Type: "OrderCreated", Key: id})
//		if ev.Value.Customer != "c1" { ... }
//	}
//
// [RequireEvent] wants exactly one match, [RequireEvents] at least one (it returns
// them all, in write order), [RequireNoEvents] none, and [RequireManyEvents] exactly
// a list, in order. A failure lists the events the outbox holds. The rows' schemas
// are the ones the writer stored: to check that a type stays compatible with what
// the registry or a git ref holds, use package outbox/outboxtest.
//
// # Running the pipeline in a test
//
// [Start] migrates a schema of the test's own in the test's Postgres, starts a relay
// on it, and runs on franz-go's in-process Kafka (kfake) and schema registry (srfake),
// or on the real ones when KAFKA_BROKERS and SCHEMA_REGISTRY_URL are set (see
// [Services]). [Harness.Drain] returns once every event written is published;
// [Harness.Consumer] builds a consumer on the harness, and [Consumer.AwaitApplied]
// returns once it has applied the given events (or all of them).
//
//	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool})
//	topic := h.Topic("orders")
//	c := h.Consumer(&consumer.Config{Group: "inventory", Topics: []string{topic}})
//	inventory.Register(c.Consumer)
//	c.Start()
//	// ... the service under test writes its events with h.Writer(nil) ...
//	if err := c.AwaitApplied(ctx); err != nil {
//		t.Fatal(err)
//	}
//
// Everything the harness starts stops when the test ends, and the schema is dropped.
// Waits are bounded by the context, or DefaultAwaitTimeout without a deadline, and
// return early, with the reason, for an event the relay parked or the consumer
// dead-lettered.
//
// examples/orders and examples/inventory test their services this way.
package relayboxtest
