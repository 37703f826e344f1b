package relay_test

import (
	"context"
	"strconv"
	"sync"
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

// Postgres crashes (immediate shutdown) and restarts under a running relay that has a
// backlog to drain and a writer that keeps writing (and retrying while Postgres is
// down): every committed event is published, in per-key order, and the relay needs no
// restart.
func TestRelay_SurvivesPostgresRestartWithoutRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips the Postgres restart test")
	}
	t.Parallel()
	pg, url := testenv.OwnPostgres(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
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
	w, err := outbox.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	topic := testenv.Topic(t, 3)
	const keys = 20

	// The writer: one transaction of one event per key at a time. A write that fails
	// (Postgres down) is retried with the same seq, as a service would, so per-key
	// order holds; an ambiguous commit that did land shows up as a duplicate only.
	var committed, failedWrites, afterRestart atomic.Int64
	var restarted atomic.Bool
	seq := 0
	write := func() {
		seq++
		evs := make([]outbox.Event, keys)
		for k := range evs {
			key := "key-" + strconv.Itoa(k)
			evs[k] = outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: int64(seq)}}
		}
		for {
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return w.Write(ctx, tx, evs...) })
			if err == nil {
				committed.Add(keys)
				if restarted.Load() {
					afterRestart.Add(1)
				}
				return
			}
			failedWrites.Add(1)
			time.Sleep(100 * time.Millisecond) // the writer's retry backoff
		}
	}
	// A backlog first: 500 transactions (10,000 events), drained in batches of 20, one
	// batch at a time, so that rows are still pending when Postgres goes down.
	for range 500 {
		write()
	}

	var pgErrors, published atomic.Int64
	r, err := relay.New(pool, &relay.Config{Brokers: testenv.Brokers(t), RegistryURL: testenv.RegistryURL(t),
		PollInterval: 200 * time.Millisecond, LeaseTTL: 3 * time.Second, HeartbeatInterval: 500 * time.Millisecond,
		UnreadyAfter: 2 * time.Second, MaxBackoff: time.Second, Logger: testLogger(t),
		BatchSize: 20, MaxInFlightBatches: 1,
		Hooks: relay.Hooks{
			OnError: func(e relay.ErrorEvent) {
				if e.Kind == relay.ErrorPostgres {
					pgErrors.Add(1)
				}
			},
			OnPublished: func(relay.PublishedEvent) { published.Add(1) },
		}})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()

	// The writer goes on (a transaction every 50 ms) through the crash and restart.
	stopWriting := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopWriting:
				return
			case <-tick.C:
				write()
			}
		}
	}()

	waitFor(t, 60*time.Second, "the relay publishing its backlog", func() bool { return published.Load() >= 200 })
	var pending int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM relaybox.outbox WHERE published_at IS NULL AND parked_at IS NULL`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	errorsBefore, writeFailuresBefore := pgErrors.Load(), failedWrites.Load()
	pg.Stop(true)
	t.Logf("postgres: immediate shutdown with %d rows pending", pending)
	if pending == 0 {
		t.Fatal("the outbox was empty when Postgres went down: the relay's retry path would not run")
	}
	waitFor(t, 30*time.Second, "the relay unready, its Postgres errors reported and the writer retrying", func() bool {
		return r.Ready() != nil && pgErrors.Load() > errorsBefore && failedWrites.Load() >= writeFailuresBefore+3
	})
	restarted.Store(true)
	pg.Start()
	t.Log("postgres: back")
	waitFor(t, 60*time.Second, "50 transactions committed after the restart", func() bool { return afterRestart.Load() >= 50 })
	close(stopWriting)
	wg.Wait()

	want := int(committed.Load())
	got := readBack(t, topic, want, 120*time.Second)
	if got.distinct != want || got.violations != 0 {
		t.Fatalf("distinct %d of %d committed, order violations %d", got.distinct, want, got.violations)
	}
	for k := range keys {
		key := "key-" + strconv.Itoa(k)
		if n := len(got.byKey[key]); n != seq {
			t.Errorf("%s: %d distinct events on Kafka, want %d", key, n, seq)
		}
	}
	waitFor(t, 30*time.Second, "the relay ready after Postgres came back", func() bool { return r.Ready() == nil })
	t.Logf("%d events across a Postgres crash and restart (%d pending at the crash, %d Postgres errors reported, %d failed writes retried): 0 lost, 0 order violations, %d duplicates",
		want, pending, pgErrors.Load(), failedWrites.Load(), got.duplicates)
}
