package relay_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/relay"
)

// fillOutbox inserts n pending rows (200k keys, so every shard has some; created one
// hour ago onwards) and parked rows, straight with generate_series: minutes for
// millions, where the writer would take far longer.
func fillOutbox(tb testing.TB, pool *pgxpool.Pool, schema string, n, parked int) {
	tb.Helper()
	o := pgx.Identifier{schema, "outbox"}.Sanitize()
	ctx := context.Background()
	const chunk = 1_000_000
	for from := 1; from <= n; from += chunk {
		to := min(from+chunk-1, n)
		if _, err := pool.Exec(ctx, `INSERT INTO `+o+` (event_id, topic, key, event_type, subject, schema_fingerprint, payload, created_at)
			SELECT gen_random_uuid(), 'status-bench', 'key-' || (g % 200000), 'T', 'status-bench-value',
				decode(repeat('00', 32), 'hex'), '\x0102'::bytea, now() - interval '1 hour' + g * interval '0.5 ms'
			FROM generate_series($1::int, $2::int) g`, from, to); err != nil {
			tb.Fatalf("filling the outbox: %v", err)
		}
	}
	if parked > 0 {
		if _, err := pool.Exec(ctx, `INSERT INTO `+o+` (event_id, topic, key, event_type, subject, schema_fingerprint, payload,
				parked_at, park_reason, last_error)
			SELECT gen_random_uuid(), 'status-bench', 'parked-' || g, 'T', 'status-bench-value', decode(repeat('00', 32), 'hex'),
				'\x01'::bytea, now(), CASE WHEN g % 2 = 0 THEN 'too_large' ELSE 'topic_missing' END,
				CASE WHEN g % 2 = 0 THEN 'big' ELSE 'gone' END
			FROM generate_series(1, $1::int) g`, parked); err != nil {
			tb.Fatalf("parking rows: %v", err)
		}
	}
}

// legacyStatusSQL is the status query before it was bounded (relaybox 0.x): an
// aggregate over every pending row, kept here to measure against.
func legacyStatusSQL(schema string) string {
	q := func(t string) string { return pgx.Identifier{schema, t}.Sanitize() }
	return `SELECT l.shard, coalesce(b.n, 0), coalesce(extract(epoch FROM now() - b.oldest), 0)::float8
		FROM ` + q("shard_leases") + ` l LEFT JOIN (
			SELECT shard, count(*) n, min(created_at) oldest FROM ` + q("outbox") + `
			WHERE published_at IS NULL AND parked_at IS NULL GROUP BY shard) b ON b.shard = l.shard ORDER BY l.shard`
}

// BenchmarkReadStatus times relay.Admin.Status (what `relaybox status` and every
// /metrics scrape run) with RELAYBOX_STATUS_ROWS pending rows (default 5,000,000),
// against the unbounded aggregate it replaced. `make bench-status` runs it; filling
// takes a few minutes. The CLI's collector gives the query 5 s.
//
//	go test ./relay -run '^$' -bench ReadStatus -benchtime 5x -timeout 30m
func BenchmarkReadStatus(b *testing.B) {
	n := 5_000_000
	if v, err := strconv.Atoi(os.Getenv("RELAYBOX_STATUS_ROWS")); err == nil && v > 0 {
		n = v
	}
	pool := testenv.PoolWith(b, func(c *pgxpool.Config) { c.MaxConns = 4 })
	schema := testenv.Schema(b, pool)
	start := time.Now()
	fillOutbox(b, pool, schema, n, 100)
	b.Logf("filled %d pending rows in %s", n, time.Since(start).Round(time.Second))
	ctx := context.Background()

	b.Run("legacy-aggregate", func(b *testing.B) {
		for range b.N {
			rows, err := pool.Query(ctx, legacyStatusSQL(schema))
			if err != nil {
				b.Fatal(err)
			}
			var total int64
			for rows.Next() {
				var shard int
				var cnt int64
				var age float64
				if err := rows.Scan(&shard, &cnt, &age); err != nil {
					b.Fatal(err)
				}
				total += cnt
			}
			if rows.Err() != nil || total != int64(n) {
				b.Fatalf("legacy backlog %d, want %d (%v)", total, n, rows.Err())
			}
		}
	})
	b.Run("ReadStatus", func(b *testing.B) {
		for range b.N {
			st, err := statusOf(ctx, pool, schema)
			if err != nil {
				b.Fatal(err)
			}
			if st.Parked != 100 || st.OldestAge < 59*time.Minute {
				b.Fatalf("parked %d, oldest %s", st.Parked, st.OldestAge)
			}
			b.ReportMetric(float64(st.Backlog), "backlog")
		}
	})
}

// ReadStatus counts exactly in a small outbox table, and in a large one the shards
// holding at most StatusExactBacklog rows; a larger shard of a large table is
// estimated (flagged) close to the truth. The oldest age and the parked counts stay
// exact.
func TestReadStatus_ExactBelowTheLimitEstimatedAbove(t *testing.T) {
	pool := testenv.Pool(t)
	ctx := context.Background()
	check := func(schema string, want int64, estimated bool) {
		t.Helper()
		st, err := statusOf(ctx, pool, schema)
		if err != nil {
			t.Fatal(err)
		}
		if st.BacklogEstimated != estimated || st.Parked != 10 || st.ParkedByReason["too_large"] != 5 {
			t.Fatalf("estimated %v (want %v), parked %d %v", st.BacklogEstimated, estimated, st.Parked, st.ParkedByReason)
		}
		if st.OldestAge < 59*time.Minute || st.OldestAge > 2*time.Hour {
			t.Errorf("oldest age %s, want about an hour", st.OldestAge)
		}
		var sum int64
		for _, s := range st.Shards {
			sum += s.Backlog
			if s.Estimated && s.Backlog <= relay.StatusExactBacklog {
				t.Errorf("shard %d: backlog %d estimated, under the exact limit", s.Shard, s.Backlog)
			}
		}
		if sum != st.Backlog {
			t.Errorf("backlog %d is not the sum of the shards' %d", st.Backlog, sum)
		}
		if !estimated && st.Backlog != want {
			t.Errorf("backlog %d, want exactly %d", st.Backlog, want)
		}
		// The sample reads about half the table's pages here: 20% is many standard deviations.
		if estimated && (st.Backlog < want*8/10 || st.Backlog > want*12/10) {
			t.Errorf("estimated backlog %d, want %d ± 20%%", st.Backlog, want)
		}
		t.Logf("backlog %d (want %d), estimated %v", st.Backlog, want, st.BacklogEstimated)
	}
	// A table smaller than StatusSamplePages: read whole, exact, even above the limit.
	small := testenv.Schema(t, pool)
	fillOutbox(t, pool, small, 70000, 10) // about 1100 a shard, 1300 pages
	check(small, 70000, false)
	// A larger table: sampled, estimated.
	large := testenv.Schema(t, pool)
	const n = 64 * relay.StatusExactBacklog * 4
	fillOutbox(t, pool, large, n, 10)
	check(large, n, true)
	// The same table with few rows still pending (retention mode marks the others):
	// the sample says "small", and the index counts them exactly.
	if _, err := pool.Exec(ctx, `UPDATE `+pgx.Identifier{large, "outbox"}.Sanitize()+
		` SET published_at = now() WHERE id > 300 AND parked_at IS NULL`); err != nil {
		t.Fatal(err)
	}
	check(large, 300, false)
}

// statusOf is Admin.Status of the outbox in schema.
func statusOf(ctx context.Context, pool *pgxpool.Pool, schema string) (*relay.Status, error) {
	a, err := relay.NewAdmin(pool, &relay.AdminConfig{Schema: schema})
	if err != nil {
		return nil, err
	}
	return a.Status(ctx)
}
