// Command relay-probe runs the relaybox relay (relay.New with the CLI's defaults:
// batch 4000, 4 batches in flight, 16 Postgres connections, auto-register) and prints one line per claim
// query, "READ <shard> <rows> <nanoseconds>", from the relay's OnRead hook: the
// backlog scenario of the benchmark times the claim query with it, exactly, while the
// harness reads the process's memory from /proc.
//
// Environment: DATABASE_URL, KAFKA_BROKERS, SCHEMA_REGISTRY_URL, RELAYBOX_SCHEMA,
// RELAYBOX_BATCH_SIZE (default 1000). Prints "BENCH_SETTINGS {json}", "BENCH_READY"
// once the relay reports ready, and runs until SIGTERM.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/relay"
)

type read struct {
	shard, rows int
	d           time.Duration
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "relay-probe:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	batch := relay.DefaultBatchSize
	if v := os.Getenv("RELAYBOX_BATCH_SIZE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		batch = n
	}
	pc, err := pgxpool.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	pc.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return err
	}
	defer pool.Close()

	reads := make(chan read, 1<<16)
	r, err := relay.New(pool, &relay.Config{
		Schema: os.Getenv("RELAYBOX_SCHEMA"), Brokers: strings.Split(os.Getenv("KAFKA_BROKERS"), ","),
		RegistryURL: os.Getenv("SCHEMA_REGISTRY_URL"), BatchSize: batch,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Hooks: relay.Hooks{OnRead: func(e relay.ReadEvent) {
			select {
			case reads <- read{e.Shard, e.Rows, e.Duration}:
			default: // never block the relay; a lost sample is only a lost sample
			}
		}},
	})
	if err != nil {
		return err
	}
	settings, _ := json.Marshal(map[string]any{"binary": "relay-probe (relay.New, CLI defaults, OnRead hook)",
		"batch_size": batch, "max_inflight_batches": relay.DefaultMaxInFlightBatches, "pool_size": 16, "poll_interval": "1s", "notify": true})
	fmt.Println("BENCH_SETTINGS " + string(settings))
	ready := make(chan struct{})
	go func() { // the only writer of stdout from here on
		out := bufio.NewWriter(os.Stdout)
		rdy := ready
		flush := time.NewTicker(100 * time.Millisecond)
		defer flush.Stop()
		for {
			select {
			case rd := <-reads:
				fmt.Fprintf(out, "READ %d %d %d\n", rd.shard, rd.rows, rd.d.Nanoseconds())
			case <-rdy:
				fmt.Fprintln(out, "BENCH_READY")
				out.Flush()
				rdy = nil
			case <-flush.C:
				out.Flush()
			}
		}
	}()
	go func() {
		for ctx.Err() == nil {
			if r.Ready() == nil {
				close(ready)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	err = r.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
