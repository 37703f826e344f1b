package consumer

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// A Run cancelled while it checks the schema at start is a graceful stop: nil, as
// when it is cancelled while waiting for Postgres (the hardening test stopped a
// consumer mid-start and got "migrations: reading status: context canceled").
func TestRun_CancelledAtStartReturnsNil(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	c := &Consumer{pool: pool, cfg: &Config{Schema: "relaybox"}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}
