package relayboxtest_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relayboxtest"
)

type OrderPlaced struct {
	OrderID string `avro:"order_id"`
	Total   int64  `avro:"total"`
}

func (OrderPlaced) AvroNamespace() string { return "shop.v1" }

type OrderShipped struct {
	OrderID string `avro:"order_id"`
}

func (OrderShipped) AvroNamespace() string { return "shop.v1" }

// exampleT plays the *testing.T a test has and an Example has not: it runs the
// cleanups when done, and panics on a failure. In a test, pass t.
type exampleT struct {
	testing.TB // nil: only the methods below are called
	cleanups   []func()
}

func (t *exampleT) Helper()                   {}
func (t *exampleT) Name() string              { return "Example" }
func (t *exampleT) Log(...any)                {}
func (t *exampleT) Logf(string, ...any)       {}
func (t *exampleT) Errorf(f string, a ...any) { fmt.Printf("FAIL: "+f+"\n", a...) }
func (t *exampleT) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (t *exampleT) Fatal(a ...any)            { panic(fmt.Sprint(a...)) }
func (t *exampleT) FailNow()                  { panic("relayboxtest assertion failed") }
func (t *exampleT) Cleanup(fn func())         { t.cleanups = append(t.cleanups, fn) }
func (t *exampleT) done() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// examplePool connects to DATABASE_URL.
func examplePool(t *exampleT) *pgxpool.Pool {
	pool, err := pgxpool.New(context.Background(), os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// placeOrder is the unit of work under test: it writes its events in tx.
func placeOrder(ctx context.Context, w *outbox.Writer, tx pgx.Tx, id string, total int64) error {
	// ... the order's own rows, in tx ...
	return w.Write(ctx, tx,
		outbox.Event{Topic: "orders", Key: id, Type: "OrderPlaced", Value: OrderPlaced{OrderID: id, Total: total}},
		outbox.Event{Topic: "orders", Key: id, Type: "OrderShipped", Value: OrderShipped{OrderID: id}})
}

// Assert, inside the unit of work's transaction, the one event of a type it wrote.
func ExampleRequireEvent() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)
	schema := relayboxtest.NewSchema(t, pool) // migrated; dropped when the test ends
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})

	tx, _ := pool.Begin(ctx)
	defer tx.Rollback(ctx) // nothing is published: the test leaves no trace
	if err := placeOrder(ctx, w, tx, "o-1", 4200); err != nil {
		panic(err)
	}

	ev := relayboxtest.RequireEvent[OrderPlaced](t, tx, &relayboxtest.Filter{Schema: schema, Type: "OrderPlaced"})
	fmt.Println(ev.Key, ev.Value.Total)
	// Output: o-1 4200
}

// Assert every event of a key, decoded into one type.
func ExampleRequireEvents() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)
	schema := relayboxtest.NewSchema(t, pool) // migrated; dropped when the test ends
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})
	pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return placeOrder(ctx, w, tx, "o-1", 100) })
	pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return placeOrder(ctx, w, tx, "o-2", 250) })

	// The committed events, through the pool.
	for _, ev := range relayboxtest.RequireEvents[OrderPlaced](t, pool, &relayboxtest.Filter{Schema: schema, Type: "OrderPlaced"}) {
		fmt.Println(ev.Value.OrderID, ev.Value.Total)
	}
	// Output:
	// o-1 100
	// o-2 250
}

// Assert that a rolled-back unit of work left no event behind.
func ExampleRequireNoEvents() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)
	schema := relayboxtest.NewSchema(t, pool) // migrated; dropped when the test ends
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := placeOrder(ctx, w, tx, "o-1", 100); err != nil {
			return err
		}
		return fmt.Errorf("payment declined") // rolls back the order and its events
	})
	relayboxtest.RequireNoEvents(t, pool, &relayboxtest.Filter{Schema: schema, Key: "o-1"})
	fmt.Println(err)
	// Output: payment declined
}

// Assert the exact sequence of events of a key, and decode each into its own type.
func ExampleRequireManyEvents() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)
	schema := relayboxtest.NewSchema(t, pool) // migrated; dropped when the test ends
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})
	tx, _ := pool.Begin(ctx)
	defer tx.Rollback(ctx)
	placeOrder(ctx, w, tx, "o-1", 990)

	var placed OrderPlaced
	envs := relayboxtest.RequireManyEvents(t, tx, &relayboxtest.Filter{Schema: schema, Key: "o-1"},
		relayboxtest.Want{Type: "OrderPlaced", Into: &placed},
		relayboxtest.Want{Type: "OrderShipped"})
	fmt.Println(len(envs), placed.Total)
	// Output: 2 990
}

// Start a harness (here on the in-process Kafka and registry), write, and wait until
// the relay has published everything.
func ExampleStart() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)

	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool, Services: relayboxtest.InProcess})
	w := h.Writer(nil) // on the harness's schema
	pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return placeOrder(ctx, w, tx, "o-1", 100) })

	if err := h.Drain(ctx); err != nil {
		panic(err)
	}
	evs := relayboxtest.RequireEvents[any](t, pool, &relayboxtest.Filter{Schema: h.Schema()})
	fmt.Println(len(evs), "published:", evs[0].Published && evs[1].Published)
	// Output: 2 published: true
}

// Drain reports an event the relay parks instead of waiting for it.
func ExampleHarness_Drain() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool, Services: relayboxtest.InProcess})

	// A row a plain-SQL writer got wrong: its schema is not in the schemas table.
	pool.Exec(ctx, `INSERT INTO `+pgx.Identifier{h.Schema(), "outbox"}.Sanitize()+`
		(event_id, topic, key, event_type, subject, schema_fingerprint, payload)
		VALUES (gen_random_uuid(), 'orders', 'o-1', 'OrderPlaced', 'orders-value', '\x00', '\x00')`)

	err := h.Drain(ctx)
	fmt.Println(strings.Contains(err.Error(), `1 event(s) parked`), strings.Contains(err.Error(), `key="o-1"`))
	// Output: true true
}

// Run a consumer on the harness and wait until it has applied what was written.
func ExampleConsumer_AwaitApplied() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool, Services: relayboxtest.InProcess})
	topic := h.Topic("orders")

	// The consumer under test: it records the totals it saw, in its transaction.
	pool.Exec(ctx, `CREATE TABLE `+pgx.Identifier{h.Schema(), "totals"}.Sanitize()+` (order_id text PRIMARY KEY, total bigint)`)
	c := h.Consumer(&consumer.Config{Group: "billing", Topics: []string{topic}})
	consumer.Handle(c.Consumer, "OrderPlaced", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderPlaced]) error {
		_, err := tx.Exec(ctx, `INSERT INTO `+pgx.Identifier{h.Schema(), "totals"}.Sanitize()+` VALUES ($1, $2)`, ev.Value.OrderID, ev.Value.Total)
		return err
	})
	c.Start()

	w := h.Writer(nil)
	pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx, outbox.Event{Topic: topic, Key: "o-7", Type: "OrderPlaced", Value: OrderPlaced{OrderID: "o-7", Total: 700}})
	})
	placed := relayboxtest.RequireEvent[OrderPlaced](t, pool, &relayboxtest.Filter{Schema: h.Schema(), Key: "o-7"})

	if err := c.AwaitApplied(ctx, placed.ID); err != nil {
		panic(err)
	}
	var total int64
	pool.QueryRow(ctx, `SELECT total FROM `+pgx.Identifier{h.Schema(), "totals"}.Sanitize()+` WHERE order_id = 'o-7'`).Scan(&total)
	fmt.Println("applied:", total)
	// Output: applied: 700
}

// A schema of the test's own: all that tests of the write path need besides Postgres.
func ExampleNewSchema() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)

	schema := relayboxtest.NewSchema(t, pool) // migrated now, dropped when the test ends
	var tables int
	pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name IN ('outbox', 'schemas', 'processed_events')`, schema).Scan(&tables)
	fmt.Println(tables)
	// Output: 3
}

// Wait for a consumer the service builds itself (as its main does), on the harness's
// Kafka, registry and schema.
func ExampleHarness_AwaitApplied() {
	t := &exampleT{}
	defer t.done()
	ctx := context.Background()
	pool := examplePool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool, Services: relayboxtest.InProcess})
	topic := h.Topic("orders")

	c, err := consumer.New(pool, &consumer.Config{Group: "shipping", Topics: []string{topic},
		Brokers: h.Brokers(), RegistryURL: h.RegistryURL(), Schema: h.Schema()})
	if err != nil {
		panic(err)
	}
	shipped := make(chan string, 1)
	consumer.Handle(c, "OrderShipped", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderShipped]) error {
		shipped <- ev.Value.OrderID
		return nil
	})
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	defer func() { stop(); <-done }()

	w := h.Writer(nil)
	pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx, outbox.Event{Topic: topic, Key: "o-9", Type: "OrderShipped", Value: OrderShipped{OrderID: "o-9"}})
	})
	if err := h.AwaitApplied(ctx, "shipping"); err != nil { // every event of the outbox
		panic(err)
	}
	fmt.Println("shipped:", <-shipped)
	// Output: shipped: o-9
}
