package writer_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/bench/writer"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

func setup(t *testing.T) (*pgxpool.Pool, *writer.Bench) {
	pool := testenv.Pool(t)
	b, err := writer.Setup(context.Background(), pool, testenv.Name(t, "w"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Drop(context.Background()) })
	return pool, b
}

// Every variant writes what it claims: one business row and its events, in the table
// it names, committed with the transaction; where the table has a shard, the shard is
// the table contract's (md5 in SQL or computed in Go alike). A variant that wrote
// nothing, or wrote into another table, would make the benchmark compare nothing.
func TestVariants_WriteOneBusinessRowAndTheirEvents(t *testing.T) {
	pool, b := setup(t)
	ctx := context.Background()
	orders := pgx.Identifier{b.Schema(), "orders"}.Sanitize()
	seen := map[string]bool{}
	for _, v := range b.Variants() {
		if seen[v.Key()] {
			t.Fatalf("variant %s twice", v.Key())
		}
		seen[v.Key()] = true
		if err := b.Truncate(ctx); err != nil {
			t.Fatal(err)
		}
		if err := v.Run(ctx, pool); err != nil {
			t.Fatalf("%s: %v", v.Key(), err)
		}
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+orders).Scan(&n); err != nil || n != 1 {
			t.Fatalf("%s: %d business rows (%v), want 1", v.Key(), n, err)
		}
		if v.Events == 0 {
			continue
		}
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+v.Table).Scan(&n); err != nil || n != v.Events {
			t.Fatalf("%s: %d rows in %s (%v), want %d", v.Key(), n, v.Table, err, v.Events)
		}
		if v.Group == writer.GroupPeers && (v.Name == "watermill" || v.Name == "watermill-forwarder") {
			continue // no shard column
		}
		if v.Name == "bare-table" {
			continue // the bare copy has no generated shard: 0 for every row
		}
		rows, err := pool.Query(ctx, `SELECT key, shard FROM `+v.Table)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (struct {
			key   string
			shard int
		}, error) {
			var k struct {
				key   string
				shard int
			}
			return k, r.Scan(&k.key, &k.shard)
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if want := outbox.Shard(k.key); k.shard != want {
				t.Fatalf("%s: key %q in shard %d, the table contract says %d", v.Key(), k.key, k.shard, want)
			}
		}
	}
	for _, want := range []string{"0-alone", "1-relaybox-queue", "100-relaybox-write", "1-plain-sql", "100-watermill",
		"100-watermill-forwarder", "100-pk-shard-id", "100-no-checks", "100-go-shard", "100-copy", "100-values-prepared"} {
		if !seen[want] {
			t.Errorf("variant %s missing", want)
		}
	}
}

// Run times every variant and returns a median for each, and the ratios the targets
// name, computed from them.
func TestRun_ReportsEveryVariantAndTheTargetsRatios(t *testing.T) {
	_, b := setup(t)
	ctx := context.Background()
	res, err := b.Run(ctx, 3, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Variants) != len(b.Variants()) {
		t.Fatalf("%d results for %d variants", len(res.Variants), len(b.Variants()))
	}
	p50 := map[string]float64{}
	for i, r := range res.Variants {
		if r.P50us <= 0 || r.P10us > r.P50us || r.P50us > r.P90us {
			t.Errorf("%s: p10 %v p50 %v p90 %v", b.Variants()[i].Key(), r.P10us, r.P50us, r.P90us)
		}
		p50[b.Variants()[i].Key()] = r.P50us
	}
	for _, n := range []string{"1", "100"} {
		got := res.Ratios[n]["queue_vs_plain_sql"]
		want := p50[n+"-relaybox-queue"] / p50[n+"-plain-sql"]
		if got < want*0.99-0.001 || got > want*1.01+0.001 {
			t.Errorf("%s events: queue_vs_plain_sql %v, medians give %v", n, got, want)
		}
		if _, ok := res.Ratios[n]["write_vs_watermill"]; !ok {
			t.Errorf("%s events: no write_vs_watermill ratio", n)
		}
	}
}
