package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/relaysql"
	"github.com/relaybox/relaybox/internal/testenv"
)

// The batch statements of a group of shards touch about the rows they return, whatever
// plan the planner picks: without statistics (a backlog written before the table's
// first ANALYZE) and with generic and custom plans alike. Before, the read
// of several shards sorted every pending row of the shards (an exactly-once group
// of 8 with a 200,000-event backlog: 25,700 rows for 4,000), and the fenced delete
// probed each id once per held shard; the exactly-once drain ran at 45 % of
// at-least-once's, with Postgres's CPU twice as high. And a read of one shard or
// several, without statistics on a table this size, read every pending row of the
// shard through a bitmap scan and sorted them (5,920 here for a LIMIT of 1,200; the
// bench's 400,000-event drain sorted 6,200 on disk at each read) until pinReadPlan.
func TestBatchStatements_TouchAboutTheRowsTheyReturn(t *testing.T) {
	ctx := context.Background()
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	sql := newStatements(schema)
	outbox := pgx.Identifier{schema, "outbox"}.Sanitize()
	leases := pgx.Identifier{schema, "shard_leases"}.Sanitize()
	for _, q := range []string{
		// No statistics: a backlog written before the table's first ANALYZE.
		`ALTER TABLE ` + outbox + ` SET (autovacuum_enabled = false)`,
		`INSERT INTO ` + outbox + ` (event_id, topic, key, event_type, subject, schema_fingerprint, payload)
			SELECT gen_random_uuid(), 't', 'k' || (i % 5000), 'E', 's', '\x00'::bytea, convert_to(repeat('x', 1000), 'UTF8')
			FROM generate_series(1, 400000) i`,
		`UPDATE ` + leases + ` SET owner = 'me', generation = 1, expires_at = now() + interval '1 hour' WHERE shard < 8`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	shards := []int{0, 1, 2, 3, 4, 5, 6, 7}
	gens := []int64{1, 1, 1, 1, 1, 1, 1, 1}
	const limit = 1200
	var pending int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+outbox+` WHERE shard < 8`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if pending < 8*2*limit {
		t.Fatalf("setup: %d rows in the group's shards, want more than %d", pending, 8*2*limit)
	}
	for _, mode := range []string{"force_generic_plan", "force_custom_plan"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Release()
			if _, err := conn.Exec(ctx, `SET plan_cache_mode = `+mode); err != nil {
				t.Fatal(err)
			}
			defer conn.Exec(ctx, `RESET plan_cache_mode`) //nolint:errcheck
			var ids []int64
			// As Relay.read runs them: in a transaction, after pinReadPlan.
			rtx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := rtx.Exec(ctx, pinReadPlan); err != nil {
				t.Fatal(err)
			}
			read := explain(t, rtx.Conn(), "r_"+mode, sql.readMany, []string{"int[]", "int"}, shards, limit)
			if n := touched(t, read); n > 2*limit {
				t.Errorf("the read of %d shards, LIMIT %d, fetched %d outbox rows (of %d pending)", len(shards), limit, n, pending)
			}
			one := explain(t, rtx.Conn(), "r1_"+mode, sql.read, []string{"int", "int"}, 0, limit)
			if n := touched(t, one); n > 2*limit {
				t.Errorf("the read of one shard, LIMIT %d, fetched %d outbox rows", limit, n)
			}
			if err := rtx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			rows, err := conn.Query(ctx, sql.readMany, shards, limit)
			if err != nil {
				t.Fatal(err)
			}
			last := map[int]int64{}
			for rows.Next() {
				vals, err := rows.Values()
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, vals[0].(int64))
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if len(ids) != limit {
				t.Fatalf("the read returned %d rows, want %d", len(ids), limit)
			}
			// Each shard's rows are its oldest pending ones, in id order.
			var shardOf = map[int64]int{}
			r2, err := conn.Query(ctx, `SELECT id, shard FROM `+outbox+` WHERE id = ANY($1)`, ids)
			if err != nil {
				t.Fatal(err)
			}
			for r2.Next() {
				var id int64
				var s int
				if err := r2.Scan(&id, &s); err != nil {
					t.Fatal(err)
				}
				shardOf[id] = s
			}
			for _, id := range ids {
				s := shardOf[id]
				if id <= last[s] {
					t.Fatalf("shard %d: id %d after %d", s, id, last[s])
				}
				last[s] = id
			}
			for s, max := range last {
				var older int
				if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+outbox+` WHERE shard = $1 AND id <= $2 AND NOT id = ANY($3)`,
					s, max, ids).Scan(&older); err != nil {
					t.Fatal(err)
				}
				if older != 0 {
					t.Fatalf("shard %d: %d older rows left behind", s, older)
				}
			}
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck
			// A drain's delete: every pending row of the group (a batch of 4,000 by default).
			var all []int64
			if err := tx.QueryRow(ctx, `SELECT array_agg(id) FROM (SELECT id FROM `+outbox+` WHERE shard < 8 ORDER BY id LIMIT 4000) x`).Scan(&all); err != nil {
				t.Fatal(err)
			}
			del := explain(t, tx.Conn(), "d_"+mode, sql.delete, []string{"bigint[]", "int[]", "bigint[]", "text"}, all, shards, gens, "me")
			if n := touched(t, del); n > 2*len(all) {
				t.Errorf("the fenced delete of %d rows of %d held shards fetched %d outbox rows", len(all), len(shards), n)
			}
		})
	}
}

// explain runs stmt as a prepared statement (types: its parameters') under EXPLAIN
// ANALYZE and returns the plan.
func explain(t *testing.T, conn *pgx.Conn, name, stmt string, types []string, args ...any) map[string]any {
	t.Helper()
	ctx := context.Background()
	params := ""
	for i, ty := range types {
		if i > 0 {
			params += ", "
		}
		params += ty
	}
	if _, err := conn.Exec(ctx, `PREPARE `+name+` (`+params+`) AS `+stmt); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `DEALLOCATE `+name) //nolint:errcheck
	// EXPLAIN takes no parameters: the arguments go in as literals.
	call := `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE ` + name + `(`
	for i, a := range args {
		if i > 0 {
			call += ", "
		}
		call += literal(a)
	}
	var out []map[string]any
	var raw []byte
	if err := conn.QueryRow(ctx, call+`)`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	var flat bytes.Buffer
	if err := json.Compact(&flat, raw); err == nil {
		t.Logf("%s: %s", name, flat.String())
	}
	return out[0]["Plan"].(map[string]any)
}

// touched sums the rows the plan's scans of the outbox (alias o) produced, over all
// their loops.
func touched(t *testing.T, plan map[string]any) int {
	n := 0
	if plan["Relation Name"] == "outbox" && plan["Alias"] == "o" {
		n += int(plan["Actual Rows"].(float64) * plan["Actual Loops"].(float64))
	}
	if kids, ok := plan["Plans"].([]any); ok {
		for _, k := range kids {
			n += touched(t, k.(map[string]any))
		}
	}
	return n
}

// literal is a's SQL literal (the types explain's callers pass).
func literal(a any) string {
	switch v := a.(type) {
	case []int:
		return "'{" + strings.Trim(strings.Join(strings.Fields(fmt.Sprint(v)), ","), "[]") + "}'"
	case []int64:
		return "'{" + strings.Trim(strings.Join(strings.Fields(fmt.Sprint(v)), ","), "[]") + "}'"
	case string:
		return "'" + strings.ReplaceAll(v, "'", "''") + "'"
	default:
		return fmt.Sprint(v)
	}
}

// Relay.read and the outcome writes send their statements without BEGIN and COMMIT:
// a pgx batch runs in one implicit transaction, up to the Sync after its last
// statement, so set_config(..., true) in its first statement holds for the others
// (the read's plan pin; the writes' commit without waiting for the WAL flush) and
// ends with it.
func TestBatchStatements_SettingsHoldForTheirBatchOnly(t *testing.T) {
	ctx := context.Background()
	conn, err := testenv.Pool(t).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	const show = `SELECT current_setting('enable_sort') || current_setting('enable_bitmapscan') || current_setting('synchronous_commit'), txid_current()`
	b := &pgx.Batch{}
	b.Queue(pinReadPlan)
	b.Queue(relaysql.AsyncCommit)
	b.Queue(show)
	b.Queue(show)
	br := conn.SendBatch(ctx, b)
	for range 2 {
		if _, err := br.Exec(); err != nil {
			t.Fatal(err)
		}
	}
	var in1, in2 string
	var x1, x2 int64
	if err := br.QueryRow().Scan(&in1, &x1); err != nil {
		t.Fatal(err)
	}
	if err := br.QueryRow().Scan(&in2, &x2); err != nil {
		t.Fatal(err)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	var after string
	var x3 int64
	if err := conn.QueryRow(ctx, show).Scan(&after, &x3); err != nil {
		t.Fatal(err)
	}
	if in1 != "offoffoff" || in2 != in1 || x1 != x2 {
		t.Errorf("in the batch: settings %q then %q, transactions %d and %d; want offoffoff twice, one transaction", in1, in2, x1, x2)
	}
	if after == in1 || x3 == x1 {
		t.Errorf("after the batch: settings %q in transaction %d; want the defaults in another", after, x3)
	}
}
