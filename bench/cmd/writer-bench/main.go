// Command writer-bench measures relaybox's outbox writer against a plain SQL insert
// of its row and Watermill's SQL publisher, and the outbox table's floor against
// variant tables, in one interleaved run (package bench/writer). It prints a table
// and writes the figures as JSON. Run it with `make bench-writer` from the repository
// root; docs/benchmarks.md explains the figures.
//
//	writer-bench [-iterations 1000] [-commit on,off] [-concurrency 8 -slice 2s -slices 5]
//	             [-out ../bench-out/writer.json] [-truncate-every 50]
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/bench/writer"
)

type report struct {
	Postgres string `json:"postgres"`
	Runs     []run  `json:"runs"`
}

// run is one pass over every variant with the sessions' synchronous_commit.
type run struct {
	SynchronousCommit string         `json:"synchronous_commit"`
	Started           string         `json:"started"`
	Finished          string         `json:"finished"`
	LoadAvg           []string       `json:"loadavg_start_finish"`
	Result            *writer.Result `json:"result"`
	// Concurrent is the throughput part (-concurrency).
	Concurrent *writer.ConcurrentResult `json:"concurrent,omitempty"`
}

func main() {
	if err := runAll(); err != nil {
		fmt.Fprintln(os.Stderr, "writer-bench:", err)
		os.Exit(1)
	}
}

func runAll() error {
	fs := flag.NewFlagSet("writer-bench", flag.ContinueOnError)
	iterations := fs.Int("iterations", 1000, "rounds per run; each runs every variant once")
	out := fs.String("out", "", "JSON output file (default ../bench-out/writer.json)")
	commit := fs.String("commit", "on,off", "the runs, one per synchronous_commit value, in order: on (commits wait for the WAL flush, "+
		"as a service's do) and off (they do not: the disk's noise is out and the statements' cost is left)")
	workers := fs.Int("concurrency", 8, "then run a few variants with this many concurrent transactions, in time slices (0: skip)")
	slice := fs.Duration("slice", 2*time.Second, "with -concurrency: the length of one variant's time slice")
	slices := fs.Int("slices", 5, "with -concurrency: the slices per variant, round robin")
	truncate := fs.Int("truncate-every", 50, "empty the tables every N rounds, outside the timing (0: never)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if *iterations < 1 {
		return fmt.Errorf("-iterations must be at least 1, got %d", *iterations)
	}
	modes := strings.Split(*commit, ",")
	for _, m := range modes {
		if m != "on" && m != "off" {
			return fmt.Errorf("-commit takes on, off or both (on,off), got %q", *commit)
		}
	}
	if *out == "" {
		*out = filepath.Join("..", "bench-out", "writer.json")
	}
	dsn := os.Getenv("DATABASE_URL")
	if dsn == "" {
		return fmt.Errorf("DATABASE_URL is not set (run `make env` and export what it prints, or use `make bench-writer`)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep := &report{}
	for _, m := range modes {
		r, err := runOne(ctx, dsn, m, *iterations, *truncate, *workers, *slice, *slices, &rep.Postgres)
		if err != nil {
			return err
		}
		rep.Runs = append(rep.Runs, *r)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(*out, append(j, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "writer-bench: wrote", *out)
	return nil
}

// concurrentKeys are the variants the concurrent part runs.
var concurrentKeys = []string{"1-relaybox-queue", "1-relaybox-queue-nonotify", "1-relaybox-queue-notify-after", "1-plain-sql", "1-watermill",
	"100-relaybox-queue", "100-relaybox-queue-nonotify", "100-relaybox-queue-notify-after", "100-plain-sql", "100-watermill"}

func runOne(ctx context.Context, dsn, syncCommit string, iterations, truncate, workers int, slice time.Duration, slices int, version *string) (*run, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL does not parse: %w", err)
	}
	// Transactions run one at a time, on one connection mostly (the pool reuses the
	// last released); a second one lets the Writer store its schema outside the
	// transaction, as a service's pool would; the concurrent part needs the others.
	cfg.MaxConns = int32(max(workers, 1) + 1)
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = syncCommit
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	r := &run{Started: time.Now().UTC().Format(time.RFC3339), LoadAvg: []string{loadAvg()}}
	if err := pool.QueryRow(ctx, `SELECT version(), current_setting('synchronous_commit')`).Scan(version, &r.SynchronousCommit); err != nil {
		return nil, fmt.Errorf("postgres at DATABASE_URL: %w", err)
	}
	var tag [4]byte
	_, _ = rand.Read(tag[:])
	b, err := writer.Setup(ctx, pool, "bench_writer_"+hex.EncodeToString(tag[:]))
	if err != nil {
		return nil, err
	}
	defer func() {
		// The run's context may be cancelled: drop the schema anyway.
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.Drop(dctx); err != nil {
			fmt.Fprintln(os.Stderr, "writer-bench: dropping schema", b.Schema(), err)
		}
	}()
	fmt.Fprintf(os.Stderr, "writer-bench: %d variants, %d rounds, synchronous_commit %s, schema %s\n",
		len(b.Variants()), iterations, r.SynchronousCommit, b.Schema())
	start := time.Now()
	res, err := b.Run(ctx, iterations, truncate, func(done int) {
		if done%100 == 0 {
			fmt.Fprintf(os.Stderr, "writer-bench: %d/%d rounds, %s\n", done, iterations, time.Since(start).Round(time.Second))
		}
	})
	if err != nil {
		return nil, err
	}
	r.Result = res
	if workers > 0 {
		fmt.Fprintf(os.Stderr, "writer-bench: %d concurrent transactions, %d slices of %s per variant\n", workers, slices, slice)
		if r.Concurrent, err = b.RunConcurrent(ctx, concurrentKeys, workers, slice, slices); err != nil {
			return nil, err
		}
	}
	r.Finished = time.Now().UTC().Format(time.RFC3339)
	r.LoadAvg = append(r.LoadAvg, loadAvg())
	fmt.Printf("\nsynchronous_commit %s, %d rounds:\n", r.SynchronousCommit, iterations)
	printTable(res)
	if c := r.Concurrent; c != nil {
		fmt.Printf("\n%d concurrent transactions (%d slices of %.0f s each):\n", c.Workers, c.Slices, c.SliceS)
		for _, k := range concurrentKeys {
			fmt.Printf("  %-30s %8.1f tx/s\n", k, c.TxPerS[k])
		}
	}
	return r, nil
}

func printTable(res *writer.Result) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "events\tvariant\tgroup\tp10 µs\tp50 µs\tp90 µs\t× alone\tµs/event\t")
	for _, v := range res.Variants {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.3f\t%.1f\t\n", v.Events, v.Name, v.Group, v.P10us, v.P50us, v.P90us, v.XAlone, v.PerRowU)
	}
	tw.Flush()
	for _, n := range []string{"1", "100"} {
		fmt.Printf("\nratios of medians, %s event(s) per transaction:\n", n)
		r := res.Ratios[n]
		for _, k := range slices.Sorted(maps.Keys(r)) {
			fmt.Printf("  %-34s %.3f\n", k, r[k])
		}
	}
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
