package outbox_test

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
)

type ShipmentBooked struct {
	ShipmentID string `avro:"shipment_id"`
	Parcels    int32  `avro:"parcels"`
}

func (ShipmentBooked) AvroNamespace() string { return "shipping.v1" }

// exampleDB connects to DATABASE_URL and migrates a throwaway schema.
func exampleDB(ctx context.Context, schema string) (*pgxpool.Pool, func()) {
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema}); err != nil {
		panic(err)
	}
	return pool, func() {
		pool.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		pool.Close()
	}
}

// The typed path: one event, its value's Avro schema derived from the Go type.
func ExamplePublish() {
	ctx := context.Background()
	pool, done := exampleDB(ctx, "example_publish")
	defer done()
	w, _ := outbox.New(pool, &outbox.Config{Schema: "example_publish"})

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// ... the business rows, in tx ...
		return outbox.Publish(ctx, w, tx, "shipments", "shp-1", "ShipmentBooked", ShipmentBooked{ShipmentID: "shp-1", Parcels: 2})
	})
	fmt.Println("committed:", err == nil)

	var topic, subject string
	var shard int
	pool.QueryRow(ctx, `SELECT topic, subject, shard FROM example_publish.outbox`).Scan(&topic, &subject, &shard)
	fmt.Println(topic, subject, shard == outbox.Shard("shp-1"))
	// Output:
	// committed: true
	// shipments shipments-value true
}

// The general path: several events in one round trip, with envelope fields.
func ExampleWriter_Write() {
	ctx := context.Background()
	pool, done := exampleDB(ctx, "example_write")
	defer done()
	w, _ := outbox.New(pool, &outbox.Config{Schema: "example_write", Source: "shipping-svc"})

	tx, _ := pool.Begin(ctx)
	err := w.Write(ctx, tx,
		outbox.Event{Topic: "shipments", Key: "shp-1", Type: "ShipmentBooked", AggregateType: "Shipment",
			Value: ShipmentBooked{ShipmentID: "shp-1", Parcels: 1}, CorrelationID: "req-7"},
		outbox.Event{Topic: "shipments", Key: "shp-2", Type: "ShipmentBooked", AggregateType: "Shipment",
			Value: ShipmentBooked{ShipmentID: "shp-2", Parcels: 3}, CorrelationID: "req-7"},
	)
	fmt.Println("written:", err == nil)
	tx.Rollback(ctx) // rolled back: the events go with it

	var n int
	pool.QueryRow(ctx, `SELECT count(*) FROM example_write.outbox`).Scan(&n)
	fmt.Println("rows after rollback:", n)
	// Output:
	// written: true
	// rows after rollback: 0
}

// Business rows and events in one round trip: queue both in one batch.
func ExampleWriter_Queue() {
	ctx := context.Background()
	pool, done := exampleDB(ctx, "example_queue")
	defer done()
	w, _ := outbox.New(pool, &outbox.Config{Schema: "example_queue"})
	pool.Exec(ctx, `CREATE TABLE example_queue.shipments (id text PRIMARY KEY, parcels int)`)

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO example_queue.shipments (id, parcels) VALUES ($1, $2)`, "shp-1", 2)
		if err := w.Queue(ctx, b, outbox.Event{Topic: "shipments", Key: "shp-1", Type: "ShipmentBooked",
			Value: ShipmentBooked{ShipmentID: "shp-1", Parcels: 2}}); err != nil {
			return err // bad input: nothing was sent
		}
		return tx.SendBatch(ctx, b).Close()
	})
	fmt.Println("committed:", err == nil)

	var shipments, events int
	pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM example_queue.shipments), (SELECT count(*) FROM example_queue.outbox)`).Scan(&shipments, &events)
	fmt.Println(shipments, events)
	// Output:
	// committed: true
	// 1 1
}
