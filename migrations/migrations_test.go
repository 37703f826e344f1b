package migrations_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/migrations"
)

func TestAll_EmbeddedFilesArePaired(t *testing.T) {
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 2 || all[0].Version != 1 || migrations.Latest() != all[len(all)-1].Version {
		t.Fatalf("migrations = %+v", all)
	}
}

func tables(t *testing.T, ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, schema string) int {
	var n int
	if err := q.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, schema).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMigrate_UpDownUpRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.Pool(t)
	schema := testenv.Name(t, "m")
	t.Cleanup(func() { pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE") })
	opts := &migrations.Options{Schema: schema}

	res, err := migrations.Migrate(ctx, pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Versions) != migrations.Latest() {
		t.Fatalf("applied %v", res.Versions)
	}
	// outbox, schemas, replicas, shard_leases, processed_events, schema_migrations
	if n := tables(t, ctx, pool, schema); n != 6 {
		t.Fatalf("tables after up = %d", n)
	}
	var leases int
	pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{schema, "shard_leases"}.Sanitize()).Scan(&leases)
	if leases != 64 {
		t.Fatalf("shard_leases rows = %d, want 64", leases)
	}
	// Second up is a no-op.
	if res, err := migrations.Migrate(ctx, pool, opts); err != nil || len(res.Versions) != 0 {
		t.Fatalf("second up: %v %v", res, err)
	}
	// Down to 1 rolls back 4 (park_reason), 3 (the fencing columns), then 2 (processed_events).
	res, err = migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema, Direction: migrations.Down, TargetVersion: 1})
	if err != nil || len(res.Versions) != 3 || res.Versions[0] != 4 || res.Versions[1] != 3 || res.Versions[2] != 2 {
		t.Fatalf("down to 1: %v %v", res, err)
	}
	var gen int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND column_name = 'generation'`, schema).Scan(&gen); err != nil || gen != 0 {
		t.Fatalf("after down to 1, %d generation columns (err %v), want 0", gen, err)
	}
	st, _ := migrations.Status(ctx, pool, opts)
	if !st[0].Applied || st[1].Applied || st[2].Applied {
		t.Fatalf("status after down to 1: %+v", st)
	}
	// All the way down, then up again.
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema, Direction: migrations.Down}); err != nil {
		t.Fatal(err)
	}
	if n := tables(t, ctx, pool, schema); n != 1 { // schema_migrations stays
		t.Fatalf("tables after down = %d", n)
	}
	if err := migrations.Check(ctx, pool, opts); err == nil {
		t.Fatal("Check passed on an empty schema")
	}
	if _, err := migrations.Migrate(ctx, pool, opts); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, pool, opts); err != nil {
		t.Fatal(err)
	}
}

func TestMigrate_ConcurrentMigratorsDoNotRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.Pool(t)
	schema := testenv.Name(t, "m")
	t.Cleanup(func() { pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE") })
	var wg sync.WaitGroup
	applied := make([]int, 5)
	errs := make([]error, 5)
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema})
			errs[i] = err
			if err == nil {
				applied[i] = len(res.Versions)
			}
		}()
	}
	wg.Wait()
	total := 0
	for i := range 5 {
		if errs[i] != nil {
			t.Fatalf("migrator %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if total != migrations.Latest() {
		t.Fatalf("versions applied across migrators = %d, want %d (each exactly once)", total, migrations.Latest())
	}
}

func TestMigrate_HostileSchemaNameIsQuoted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.Pool(t)
	schema := `x"; DROP TABLE pg_class; --` + testenv.Name(t, "")
	t.Cleanup(func() { pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE") })
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema}); err != nil {
		t.Fatal(err)
	}
	if n := tables(t, ctx, pool, schema); n != 6 {
		t.Fatalf("tables in hostile-named schema = %d", n)
	}
}

func TestMigrate_RejectsBadOptions(t *testing.T) {
	pool := testenv.Pool(t)
	if _, err := migrations.Migrate(context.Background(), pool, &migrations.Options{Direction: "sideways"}); err == nil {
		t.Fatal("want error for bad direction")
	}
	if _, err := migrations.Migrate(context.Background(), pool, &migrations.Options{TargetVersion: 999}); err == nil {
		t.Fatal("want error for bad target")
	}
}

// 004 moves the reason of rows parked before it out of last_error's "reason: detail"
// prefix into park_reason, and its down migration puts it back.
func TestMigrate_004ConvertsParkedRowsReasons(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.Pool(t)
	schema := testenv.Name(t, "m")
	t.Cleanup(func() { pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE") })
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema, TargetVersion: 3}); err != nil {
		t.Fatal(err)
	}
	outbox := pgx.Identifier{schema, "outbox"}.Sanitize()
	// Three parked rows (a known reason, a detail holding colons, a prefix that is no
	// reason) and a pending row that once failed.
	for _, r := range []struct {
		key, lastErr string
		parked       bool
	}{
		{"a", "too_large: record is 2000000 bytes, limit 1048576 (MaxRecordBytes)", true},
		{"b", "incompatible_schema: registry: 409: schema: not compatible", true},
		{"c", "parked by hand: see ticket 12", true},
		{"d", "kafka: broker down", false},
	} {
		if _, err := pool.Exec(ctx, `INSERT INTO `+outbox+` (event_id, topic, key, event_type, subject, schema_fingerprint, payload, last_error, parked_at)
			VALUES (gen_random_uuid(), 't', $1, 'E', 't-value', '\x00', '\x00', $2, CASE WHEN $3 THEN now() END)`, r.key, r.lastErr, r.parked); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema}); err != nil {
		t.Fatal(err)
	}
	got := map[string][2]string{}
	rows, _ := pool.Query(ctx, `SELECT key, coalesce(park_reason, '<null>'), last_error FROM `+outbox)
	var key, reason, lastErr string
	if _, err := pgx.ForEachRow(rows, []any{&key, &reason, &lastErr}, func() error {
		got[key] = [2]string{reason, lastErr}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"a": {"too_large", "record is 2000000 bytes, limit 1048576 (MaxRecordBytes)"},
		"b": {"incompatible_schema", "registry: 409: schema: not compatible"},
		"c": {"unknown", "parked by hand: see ticket 12"},
		"d": {"<null>", "kafka: broker down"},
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("after 004, row %s = %q, want %q", k, got[k], w)
		}
	}
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema, Direction: migrations.Down, TargetVersion: 3}); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT last_error FROM `+outbox+` WHERE key = 'b'`).Scan(&lastErr); err != nil ||
		lastErr != "incompatible_schema: registry: 409: schema: not compatible" {
		t.Fatalf("after down to 3, last_error = %q (%v), want the reason prefixed again", lastErr, err)
	}
}
