package outbox_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

// BenchmarkBusinessTx compares, in one run, a business transaction that inserts one
// row alone, with one outbox event, and with 100 events (one Write call). Read the
// ratios of ns/op: targets are ≤ 1.15× for one event and ≤ 2× for 100.
//
//	go test ./outbox -run '^$' -bench BusinessTx -benchtime 3s
func BenchmarkBusinessTx(b *testing.B) {
	pool := testenv.Pool(b)
	schema := testenv.Schema(b, pool)
	ctx := context.Background()
	biz := pgx.Identifier{schema, "orders"}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE TABLE `+biz+` (id bigserial PRIMARY KEY, customer text, total numeric, created_at timestamptz DEFAULT now())`); err != nil {
		b.Fatal(err)
	}
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})
	quiet, _ := outbox.New(pool, &outbox.Config{Schema: schema, DisableNotify: true})
	v := OrderCreated{OrderID: "o", SKU: strings.Repeat("s", 200), Qty: 2, At: time.Now()}
	events := func(n int) []outbox.Event {
		evs := make([]outbox.Event, n)
		for i := range evs {
			evs[i] = outbox.Event{Topic: "orders", Key: fmt.Sprintf("order-%d", i), Type: "OrderCreated", AggregateType: "Order", Value: v}
		}
		return evs
	}
	// The floor: the same transaction with one more business INSERT instead of an event.
	b.Run("events=0/two-rows", func(b *testing.B) {
		for b.Loop() {
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO `+biz+` (customer, total) VALUES ($1, $2)`, "c-1", 42.5); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `INSERT INTO `+biz+` (customer, total) VALUES ($1, $2)`, "c-2", 1.5)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, c := range []struct {
		n      int
		w      *outbox.Writer
		suffix string
	}{{0, w, ""}, {1, w, ""}, {100, w, ""}, {1, quiet, "/no-notify"}, {100, quiet, "/no-notify"}} {
		evs, w := events(c.n), c.w
		b.Run(fmt.Sprintf("events=%d%s", c.n, c.suffix), func(b *testing.B) {
			for b.Loop() {
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO `+biz+` (customer, total) VALUES ($1, $2)`, "c-1", 42.5); err != nil {
						return err
					}
					return w.Write(ctx, tx, evs...)
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
