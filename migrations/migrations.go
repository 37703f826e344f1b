// Package migrations holds relaybox's versioned SQL and applies it.
//
// The files NNN_name.up.sql / NNN_name.down.sql are embedded in the binary. They use
// unqualified table names: [Migrate] creates the configured schema (default "relaybox")
// and sets search_path to it inside the migration transaction, so the same files work
// with goose or golang-migrate when search_path is set in the connection URL.
//
// A run takes a transaction-scoped Postgres advisory lock keyed by the schema name, so
// two migrators (two replicas starting at once) never race: the second waits, then
// finds nothing left to do. Every migration of a run commits in one transaction.
//
// # Usage
//
//	res, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: "relaybox"})
//	// res.Versions lists the versions that ran.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed *.sql
var files embed.FS

// DefaultSchema is the Postgres schema relaybox's tables live in unless configured.
const DefaultSchema = "relaybox"

// Direction says which way [Migrate] goes.
type Direction string

const (
	// Up applies every pending migration up to TargetVersion (0: all).
	Up Direction = "up"
	// Down rolls back applied migrations above TargetVersion (0: all of them).
	Down Direction = "down"
)

// Options configures [Migrate], [Status] and [Check]. A nil *Options means defaults.
type Options struct {
	// Schema is the Postgres schema for relaybox's tables. Defaults to "relaybox".
	// It is quoted as an identifier, never interpolated.
	Schema string
	// Direction defaults to Up.
	Direction Direction
	// TargetVersion: for Up, the last version to apply (0 means latest); for Down,
	// the version to roll back to (0 means roll back everything).
	TargetVersion int
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.Schema == "" {
		r.Schema = DefaultSchema
	}
	if r.Direction == "" {
		r.Direction = Up
	}
	return r
}

// Migration is one versioned step.
type Migration struct {
	Version int
	Name    string
	Up      string
	Down    string
}

// MigrationStatus is a migration and whether (and when) it is applied.
type MigrationStatus struct {
	Version   int
	Name      string
	Applied   bool
	AppliedAt time.Time
}

// Result reports what [Migrate] did.
type Result struct {
	Direction Direction
	// Versions applied (Up) or rolled back (Down), in the order they ran.
	Versions []int
}

var fileRE = regexp.MustCompile(`^(\d{3})_([a-z0-9_]+)\.(up|down)\.sql$`)

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, err
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		m := fileRE.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migrations: unexpected file name %q", e.Name())
		}
		v, _ := strconv.Atoi(m[1])
		body, err := fs.ReadFile(files, e.Name())
		if err != nil {
			return nil, err
		}
		mig := byVersion[v]
		if mig == nil {
			mig = &Migration{Version: v, Name: m[2]}
			byVersion[v] = mig
		}
		if m[3] == "up" {
			mig.Up = string(body)
		} else {
			mig.Down = string(body)
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		if m.Up == "" || m.Down == "" {
			return nil, fmt.Errorf("migrations: version %03d lacks its up or down file", m.Version)
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Latest is the highest embedded migration version.
func Latest() int {
	all, err := All()
	if err != nil || len(all) == 0 {
		return 0
	}
	return all[len(all)-1].Version
}

// lockKey is the advisory lock key a migration run on schema takes.
func lockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("relaybox.migrate:" + schema))
	return int64(h.Sum64())
}

// Migrate applies (Up) or rolls back (Down) migrations under an advisory lock, all in
// one transaction: either the whole run commits or nothing changes.
func Migrate(ctx context.Context, pool *pgxpool.Pool, opts *Options) (*Result, error) {
	o := opts.withDefaults()
	if o.Direction != Up && o.Direction != Down {
		return nil, fmt.Errorf("migrations: Direction must be %q or %q, got %q", Up, Down, o.Direction)
	}
	all, err := All()
	if err != nil {
		return nil, err
	}
	if o.TargetVersion < 0 || o.TargetVersion > all[len(all)-1].Version {
		return nil, fmt.Errorf("migrations: TargetVersion %d out of range 0..%d", o.TargetVersion, all[len(all)-1].Version)
	}
	res := &Result{Direction: o.Direction}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		applied, err := prepare(ctx, tx, o.Schema)
		if err != nil {
			return err
		}
		if o.Direction == Up {
			for _, m := range all {
				if applied[m.Version] || (o.TargetVersion != 0 && m.Version > o.TargetVersion) {
					continue
				}
				if _, err := tx.Exec(ctx, m.Up); err != nil {
					return fmt.Errorf("migrations: applying %03d_%s: %w", m.Version, m.Name, err)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
					return err
				}
				res.Versions = append(res.Versions, m.Version)
			}
			return nil
		}
		for i := len(all) - 1; i >= 0; i-- {
			m := all[i]
			if !applied[m.Version] || m.Version <= o.TargetVersion {
				continue
			}
			if _, err := tx.Exec(ctx, m.Down); err != nil {
				return fmt.Errorf("migrations: rolling back %03d_%s: %w", m.Version, m.Name, err)
			}
			if _, err := tx.Exec(ctx, `DELETE FROM schema_migrations WHERE version = $1`, m.Version); err != nil {
				return err
			}
			res.Versions = append(res.Versions, m.Version)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// prepare locks, creates the schema and the version table, points search_path at the
// schema for this transaction and returns the applied versions.
func prepare(ctx context.Context, tx pgx.Tx, schema string) (map[int]bool, error) {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey(schema)); err != nil {
		return nil, fmt.Errorf("migrations: taking advisory lock: %w", err)
	}
	ident := pgx.Identifier{schema}.Sanitize()
	if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+ident); err != nil {
		return nil, fmt.Errorf("migrations: creating schema %s: %w", ident, err)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL search_path TO `+ident); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("migrations: creating schema_migrations: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return nil, err
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, err
	}
	applied := map[int]bool{}
	for _, v := range versions {
		applied[v] = true
	}
	return applied, nil
}

// Status lists every embedded migration and whether it is applied in the schema.
func Status(ctx context.Context, pool *pgxpool.Pool, opts *Options) ([]MigrationStatus, error) {
	o := opts.withDefaults()
	all, err := All()
	if err != nil {
		return nil, err
	}
	appliedAt := map[int]time.Time{}
	tbl := pgx.Identifier{o.Schema, "schema_migrations"}.Sanitize()
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, tbl).Scan(&exists); err != nil {
		return nil, fmt.Errorf("migrations: reading status: %w", err)
	}
	if exists {
		rows, err := pool.Query(ctx, `SELECT version, applied_at FROM `+tbl)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var v int
			var at time.Time
			if err := rows.Scan(&v, &at); err != nil {
				return nil, err
			}
			appliedAt[v] = at
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	out := make([]MigrationStatus, 0, len(all))
	for _, m := range all {
		at, ok := appliedAt[m.Version]
		out = append(out, MigrationStatus{Version: m.Version, Name: m.Name, Applied: ok, AppliedAt: at})
	}
	return out, nil
}

// ErrNotMigrated is returned by [Check] when the schema lacks migrations.
var ErrNotMigrated = errors.New("relaybox schema is not migrated")

// Check returns ErrNotMigrated (wrapped, naming the schema) unless every embedded
// migration is applied in opts.Schema. Direction and TargetVersion are not used.
func Check(ctx context.Context, pool *pgxpool.Pool, opts *Options) error {
	o := opts.withDefaults()
	st, err := Status(ctx, pool, &o)
	if err != nil {
		return err
	}
	for _, s := range st {
		if !s.Applied {
			return fmt.Errorf("%w: schema %q lacks %03d_%s (run `relaybox migrate up`)", ErrNotMigrated, o.Schema, s.Version, s.Name)
		}
	}
	return nil
}
