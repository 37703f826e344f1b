package relay_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// Postgres crashes (immediate shutdown) and restarts under a running relay and a
// writer: every committed event is published, in order, and the relay needs no restart.
func TestRelay_SurvivesPostgresRestartWithoutRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips the Postgres restart test")
	}
	t.Parallel()
	pg, url := testenv.OwnPostgres(t)
	cfg, _ := pgxpool.ParseConfig(url)
	cfg.MaxConns = 12
	ctx := context.Background()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := migrations.Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	w, _ := outbox.New(pool, nil)
	topic := testenv.Topic(t, 3)
	r, err := relay.New(pool, &relay.Config{Brokers: testenv.Brokers(t), RegistryURL: testenv.RegistryURL(t), AutoRegister: true,
		PollInterval: 200 * time.Millisecond, LeaseTTL: 3 * time.Second, HeartbeatInterval: 500 * time.Millisecond,
		UnreadyAfter: 2 * time.Second, MaxBackoff: time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()

	var committed atomic.Int64
	seq := 0
	write := func() {
		seq++
		evs := make([]outbox.Event, 20)
		for k := range evs {
			key := "key-" + strconv.Itoa(k)
			evs[k] = outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: int64(seq)}}
		}
		// A write that fails while Postgres is down is not committed: the caller retries
		// it, as a service would (the same seq, so per-key order holds).
		for {
			if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return w.Write(ctx, tx, evs...) }); err == nil {
				committed.Add(20)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for range 20 {
		write()
		time.Sleep(50 * time.Millisecond)
	}
	pg.Stop(true)
	t.Log("postgres: immediate shutdown")
	time.Sleep(5 * time.Second)
	if r.Ready() == nil {
		t.Error("Ready() nil with Postgres down 5s (UnreadyAfter 2s)")
	}
	pg.Start()
	t.Log("postgres: back")
	for range 20 {
		write()
		time.Sleep(50 * time.Millisecond)
	}
	want := int(committed.Load())
	got := readBack(t, topic, want, 60*time.Second)
	if got.distinct != want || got.violations != 0 {
		t.Fatalf("distinct %d of %d committed, order violations %d", got.distinct, want, got.violations)
	}
	deadline := time.Now().Add(20 * time.Second)
	for r.Ready() != nil && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if err := r.Ready(); err != nil {
		t.Fatalf("not ready after Postgres came back: %v", err)
	}
	t.Logf("%d events across a Postgres crash and restart: 0 lost, 0 order violations, %d duplicates", want, got.duplicates)
}
