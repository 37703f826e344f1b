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
	// Down to 1 rolls back 3 (the fencing columns), then 2 (processed_events).
	res, err = migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema, Direction: migrations.Down, TargetVersion: 1})
	if err != nil || len(res.Versions) != 2 || res.Versions[0] != 3 || res.Versions[1] != 2 {
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
	if err := migrations.Check(ctx, pool, schema); err == nil {
		t.Fatal("Check passed on an empty schema")
	}
	if _, err := migrations.Migrate(ctx, pool, opts); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, pool, schema); err != nil {
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
