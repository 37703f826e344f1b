package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/consumer"
)

// OrderCreated is an event payload; its Avro schema is derived from the avro tags.
type OrderCreated struct {
	OrderID  string `avro:"order_id"`
	SKU      string `avro:"sku"`
	Quantity int32  `avro:"quantity"`
}

// A consumer applying OrderCreated events to a stock table, exactly once per event.
// (Needs Postgres, Kafka and a schema registry, so it is not run as a test.)
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	c, err := consumer.New(pool, &consumer.Config{
		Group:       "inventory",
		Topics:      []string{"orders"},
		Brokers:     []string{"localhost:9092"},
		RegistryURL: "http://localhost:8081",
		MaxAttempts: 5,
	})
	if err != nil {
		log.Fatal(err)
	}
	consumer.Handle(c, "OrderCreated", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderCreated]) error {
		tag, err := tx.Exec(ctx, `UPDATE stock SET reserved = reserved + $1 WHERE sku = $2`, ev.Value.Quantity, ev.Value.SKU)
		if err != nil {
			return err // retried, then dead-lettered
		}
		if tag.RowsAffected() == 0 {
			return consumer.Permanent(fmt.Errorf("order %s: unknown sku %q", ev.Value.OrderID, ev.Value.SKU))
		}
		return nil
	})
	if err := c.Run(ctx); err != nil { // until Ctrl-C, then a graceful stop
		log.Fatal(err)
	}
}

// A projection whose effect is one row per event: in batch mode InsertDeferred sends
// the rows of a whole batch as one COPY, in the transaction that records the events
// in processed_events. (Needs Postgres, Kafka and a schema registry, so it is not run
// as a test.)
func ExampleInsertDeferred() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	c, err := consumer.New(pool, &consumer.Config{
		Group:       "order-history",
		Topics:      []string{"orders"},
		Brokers:     []string{"localhost:9092"},
		RegistryURL: "http://localhost:8081",
		BatchMode:   true,
	})
	if err != nil {
		log.Fatal(err)
	}
	table, columns := pgx.Identifier{"order_lines"}, []string{"event_id", "order_id", "sku", "quantity"}
	consumer.Handle(c, "OrderCreated", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[OrderCreated]) error {
		return consumer.InsertDeferred(ctx, tx, table, columns, ev.ID, ev.Value.OrderID, ev.Value.SKU, ev.Value.Quantity)
	})
	if err := c.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// Permanent marks an error that retrying cannot fix: the record is dead-lettered at
// once.
func ExamplePermanent() {
	err := fmt.Errorf("reserving stock: %w", consumer.Permanent(errors.New("unknown sku")))
	fmt.Println(consumer.IsPermanent(err))
	fmt.Println(consumer.IsPermanent(errors.New("connection reset")))
	// Output:
	// true
	// false
}

// Records without a relaybox.event_id header are deduplicated by their position.
func ExampleDefaultDedupKey() {
	fmt.Println(consumer.DefaultDedupKey(&kgo.Record{Topic: "orders", Partition: 3, Offset: 1042}))
	// Output: orders/3/1042
}

// Middleware wraps every handler, here to report failures. The consumer runs each
// record's handler through it; the last lines run it by hand on one failing record to
// show what it prints.
func ExampleConsumer_Use() {
	c, err := consumer.New(nopPool, &consumer.Config{Group: "g", Topics: []string{"orders"},
		Brokers: []string{"localhost:9092"}, RegistryURL: "http://localhost:8081"})
	if err != nil {
		log.Fatal(err)
	}
	reportFailures := func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
			err := next.Handle(ctx, tx, m)
			if err != nil {
				fmt.Printf("%s %s at %s/%d/%d: %v\n", m.Type, m.ID, m.Topic, m.Partition, m.Offset, err)
			}
			return err
		})
	}
	c.Use(reportFailures)
	cancelOrder := func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
		return consumer.Permanent(fmt.Errorf("order %s: already shipped", m.Key))
	}
	c.HandleFunc("OrderCancelled", cancelOrder)

	m := &consumer.Message{Envelope: consumer.Envelope{ID: "e-1", Type: "OrderCancelled", Key: "o-7", Topic: "orders", Partition: 2, Offset: 41}}
	err = reportFailures(consumer.HandlerFunc(cancelOrder)).Handle(context.Background(), nil, m)
	fmt.Println("dead-lettered:", consumer.IsPermanent(err))
	// Output:
	// OrderCancelled e-1 at orders/2/41: order o-7: already shipped
	// dead-lettered: true
}
