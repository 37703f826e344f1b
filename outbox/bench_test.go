package outbox_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

// BenchmarkBusinessTx compares, in one run, a business transaction that inserts one
// row alone, with one outbox event and with 100 events, written with Write (a
// statement of its own) and with Queue (in the business INSERT's batch). Every
// iteration runs each variant once, round robin, so a noisy machine (a disk whose
// fsync time varies) weighs on all of them alike; the reported figures are medians
// per variant and their ratios to the business transaction alone. Targets: ≤ 1.15×
// for one event and ≤ 2× for 100. The floors (a second business row; a minimal
// (id, payload) row; a plain SQL insert of outbox rows; the same into a bare copy of
// the table, without its indexes, CHECKs and generated shard) show how much of an
// event's cost is the round trip, the row, and the outbox table itself. Against the
// peers (Watermill's SQL publisher) and variant tables: bench/writer, `make bench-writer`.
//
//	go test ./outbox -run '^$' -bench BusinessTx -benchtime 2000x
func BenchmarkBusinessTx(b *testing.B) {
	pool := testenv.Pool(b)
	schema := testenv.Schema(b, pool)
	ctx := context.Background()
	biz := pgx.Identifier{schema, "orders"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE TABLE `+biz+` (id bigserial PRIMARY KEY, customer text, total numeric, created_at timestamptz DEFAULT now())`); err != nil {
		b.Fatal(err)
	}
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})
	v := OrderCreated{OrderID: "o", SKU: strings.Repeat("s", 200), Qty: 2, At: time.Now()}
	events := func(n int) []outbox.Event {
		evs := make([]outbox.Event, n)
		for i := range evs {
			evs[i] = outbox.Event{Topic: "orders", Key: fmt.Sprintf("order-%d", i), Type: "OrderCreated", AggregateType: "Order", Value: v}
		}
		return evs
	}
	// Floors, to read the ratios against: a minimal row (id, payload) holding the same
	// 250-byte payload, and a plain SQL INSERT of outbox rows (what the table itself
	// costs, whoever writes it).
	if _, err := pool.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "minimal"}.Sanitize()+` (id bigserial PRIMARY KEY, payload bytea)`); err != nil {
		b.Fatal(err)
	}
	minimal := func(n int) func(tx pgx.Tx) error {
		pl := make([][]byte, n)
		for i := range pl {
			pl[i] = make([]byte, 250)
		}
		return func(tx pgx.Tx) error {
			batch := &pgx.Batch{}
			batch.Queue(`INSERT INTO `+biz+` (customer, total) VALUES ($1, $2)`, "c-1", 42.5)
			batch.Queue(`INSERT INTO `+pgx.Identifier{schema, "minimal"}.Sanitize()+` (payload) SELECT * FROM unnest($1::bytea[])`, pl)
			return tx.SendBatch(ctx, batch).Close()
		}
	}
	// A bare copy of the outbox table: the same columns, defaults and identity, but no
	// index, CHECK or generated shard: what the row itself costs.
	if _, err := pool.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "bare"}.Sanitize()+` (LIKE `+pgx.Identifier{schema, "outbox"}.Sanitize()+` INCLUDING DEFAULTS INCLUDING IDENTITY);
		ALTER TABLE `+pgx.Identifier{schema, "bare"}.Sanitize()+` ALTER COLUMN shard SET DEFAULT 0`); err != nil {
		b.Fatal(err)
	}
	plainSQL := func(table string, n int) func(tx pgx.Tx) error {
		keys, fps, pls := make([]string, n), make([][]byte, n), make([][]byte, n)
		for i := range keys {
			keys[i], fps[i], pls[i] = fmt.Sprintf("order-%d", i), make([]byte, 32), make([]byte, 250)
		}
		return func(tx pgx.Tx) error {
			batch := &pgx.Batch{}
			batch.Queue(`INSERT INTO `+biz+` (customer, total) VALUES ($1, $2)`, "c-1", 42.5)
			batch.Queue(`INSERT INTO `+pgx.Identifier{schema, table}.Sanitize()+` (event_id, topic, key, event_type, subject, schema_fingerprint, payload)
				SELECT gen_random_uuid(), 'orders', k, 'OrderCreated', 'orders-value', f, p FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS u(k, f, p)`, keys, fps, pls)
			return tx.SendBatch(ctx, batch).Close()
		}
	}
	insert := `INSERT INTO ` + biz + ` (customer, total) VALUES ($1, $2)`
	write := func(evs []outbox.Event) func(tx pgx.Tx) error {
		return func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, insert, "c-1", 42.5); err != nil {
				return err
			}
			return w.Write(ctx, tx, evs...)
		}
	}
	queue := func(evs []outbox.Event) func(tx pgx.Tx) error {
		return func(tx pgx.Tx) error {
			batch := &pgx.Batch{}
			batch.Queue(insert, "c-1", 42.5)
			if err := w.Queue(ctx, batch, evs...); err != nil {
				return err
			}
			return tx.SendBatch(ctx, batch).Close()
		}
	}
	variants := []struct {
		name string
		tx   func(pgx.Tx) error
	}{
		{"alone", write(nil)},
		// The floor for comparison: one more business INSERT instead of an event.
		{"two-rows", func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, insert, "c-1", 42.5); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, insert, "c-2", 1.5)
			return err
		}},
		{"1-write", write(events(1))},
		{"1-queue", queue(events(1))},
		{"1-minimal-row", minimal(1)},
		{"1-plain-sql", plainSQL("outbox", 1)},
		{"1-bare-table", plainSQL("bare", 1)},
		{"100-write", write(events(100))},
		{"100-queue", queue(events(100))},
		{"100-minimal-rows", minimal(100)},
		{"100-plain-sql", plainSQL("outbox", 100)},
		{"100-bare-table", plainSQL("bare", 100)},
	}
	times := make([][]time.Duration, len(variants))
	for _, v := range variants { // warm up: statements prepared, schema stored
		if err := pgx.BeginFunc(ctx, pool, v.tx); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		for i, v := range variants {
			start := time.Now()
			if err := pgx.BeginFunc(ctx, pool, v.tx); err != nil {
				b.Fatal(err)
			}
			times[i] = append(times[i], time.Since(start))
		}
	}
	med := make([]float64, len(variants))
	for i, ts := range times {
		slices.Sort(ts)
		med[i] = float64(ts[len(ts)/2].Microseconds())
		b.ReportMetric(med[i], "µs-"+variants[i].name)
	}
	for i := 1; i < len(variants); i++ {
		b.ReportMetric(med[i]/med[0], "x-"+variants[i].name)
	}
}
