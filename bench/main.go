// Command bench is relaybox's comparative benchmark (issue #7): relaybox, Watermill's
// SQL forwarder, go-pq-cdc-kafka and Debezium's outbox event router, against one
// Postgres, one Kafka, the same topic settings and the same events, measured by one
// franz-go consumer; plus the raw limits of Kafka and Postgres, and relaybox's claim
// latency under a large backlog. Run it with `make bench` from the repository root;
// docs/benchmarks.md explains every figure.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

type report struct {
	Machine  map[string]any           `json:"machine"`
	Config   config                   `json:"config"`
	Started  string                   `json:"started"`
	Finished string                   `json:"finished"`
	Systems  map[string]*systemResult `json:"systems"`
	Limits   *limitsResult            `json:"limits"`
	Backlog  *backlogResult           `json:"backlog"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg, err := parseConfig(os.Args[1:])
	if err != nil {
		return err
	}
	benchDir, err := os.Getwd()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(benchDir, "cmd", "watermill-relay")); err != nil {
		return fmt.Errorf("run from the bench directory (make bench does)")
	}
	mainDir := filepath.Dir(benchDir)
	if cfg.Out == "" {
		cfg.Out = filepath.Join(mainDir, "bench-out", "bench.json")
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Out), 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := newHarness(ctx, cfg, mainDir)
	if err != nil {
		return err
	}
	defer h.close()
	defer os.RemoveAll(h.binDir)
	rep := &report{Config: cfg, Started: time.Now().UTC().Format(time.RFC3339), Systems: map[string]*systemResult{}}
	rep.Machine = h.machine(ctx)
	h.logf("run %s: systems %v, scenarios %v, N=%d, rates %v, %s per rate after %s warm-up; logs in %s",
		h.runID, cfg.Systems, cfg.Scenarios, cfg.N, cfg.Rates, cfg.Duration, cfg.Warmup, h.runDir)
	write := func() {
		rep.Finished = time.Now().UTC().Format(time.RFC3339)
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(cfg.Out, append(b, '\n'), 0o644); err != nil {
			h.logf("write %s: %v", cfg.Out, err)
		}
	}

	// Build and fetch everything before measuring anything.
	systems := map[string]system{
		"relaybox":  &relayboxSystem{},
		"watermill": &watermillSystem{},
		"cdc":       &peerSystem{key: "cdc", dir: "pqcdc"},
		"debezium":  &peerSystem{key: "debezium", dir: "debezium"},
	}
	var active []system
	for _, name := range cfg.Systems {
		sys, ok := systems[name]
		if !ok {
			return fmt.Errorf("unknown system %q (want %s)", name, strings.Join(allSystems, ","))
		}
		res := &systemResult{Steady: []steadyResult{}}
		rep.Systems[name] = res
		h.logf("preparing %s", name)
		if err := sys.prepare(ctx, h); err != nil {
			res.SkippedReason = err.Error()
			h.logf("%s skipped: %s", name, err)
			continue
		}
		active = append(active, sys)
	}
	probeBin := filepath.Join(h.binDir, "relay-probe")
	if has(cfg.Scenarios, "backlog") {
		if err := goBuild(ctx, benchDir, probeBin, "./cmd/relay-probe"); err != nil {
			rep.Backlog = &backlogResult{SkippedReason: err.Error()}
		}
	}
	write()

	if has(cfg.Scenarios, "limits") {
		rep.Limits = &limitsResult{Settings: map[string]any{
			"kafka": "franz-go, acks=all, idempotent, linger 2ms, the drain's N records from memory (framed value, key, 2 headers), same partitions",
			"pg":    fmt.Sprintf("relaybox outbox table filled with the drain's N rows by outbox.Writer; %d connections, each its share of the 64 shards: SELECT the relay's columns WHERE shard=$1 ORDER BY id LIMIT %d, then DELETE WHERE id = ANY", cfg.PGWorkers, cfg.PGBatch),
		}}
		for run := 1; run <= max(1, cfg.Repeat) && ctx.Err() == nil; run++ {
			h.logf("limits: raw franz-go produce of %d records%s", cfg.N, runTag(run, cfg.Repeat))
			if v, err := h.kafkaLimit(ctx); err != nil {
				rep.Limits.Errors = append(rep.Limits.Errors, "kafka: "+err.Error())
			} else {
				rep.Limits.KafkaProduceRuns = append(rep.Limits.KafkaProduceRuns, r1(v))
			}
			h.logf("limits: raw Postgres read+delete of %d rows%s", cfg.N, runTag(run, cfg.Repeat))
			if v, err := h.pgLimit(ctx); err != nil {
				rep.Limits.Errors = append(rep.Limits.Errors, "pg: "+err.Error())
			} else {
				rep.Limits.PGDrainRuns = append(rep.Limits.PGDrainRuns, r1(v))
			}
		}
		rep.Limits.KafkaProduceEPS, rep.Limits.PGDrainEPS = median(rep.Limits.KafkaProduceRuns), median(rep.Limits.PGDrainRuns)
		if cfg.Repeat <= 1 {
			rep.Limits.KafkaProduceRuns, rep.Limits.PGDrainRuns = nil, nil
		}
		write()
	}

	for _, sys := range active {
		res := rep.Systems[sys.name()]
		if has(cfg.Scenarios, "drain") && ctx.Err() == nil {
			var runs []*drainResult
			for run := 1; run <= max(1, cfg.Repeat) && ctx.Err() == nil; run++ {
				h.logf("%s: drain of %d events%s", sys.name(), cfg.N, runTag(run, cfg.Repeat))
				d, settings, err := h.drain(ctx, sys, run)
				if settings != nil {
					res.Settings = settings
				}
				if err != nil {
					res.Errors = append(res.Errors, "drain: "+err.Error())
					h.logf("%s drain: %v", sys.name(), err)
				}
				if d == nil {
					continue
				}
				runs = append(runs, d)
				res.Duplicates += d.Duplicates
				res.Missing += d.Missing
				res.OrderViolations += d.OrderViolations
				h.logf("%s drain: %.0f events/s (%.0f from the first record), dup %d, missing %d, order %d", sys.name(), d.EPS, d.EPSFromFirstRecord, d.Duplicates, d.Missing, d.OrderViolations)
			}
			if len(runs) > 0 {
				// The median run by events/s; an incomplete run counts as 0.
				slices.SortStableFunc(runs, func(a, b *drainResult) int { return cmp.Compare(completeEPS(a), completeEPS(b)) })
				res.Drain = runs[len(runs)/2]
				if res.Drain.Complete {
					res.DrainEPS = ptr(res.Drain.EPS)
				}
				if cfg.Repeat > 1 {
					for _, d := range runs {
						res.DrainRuns = append(res.DrainRuns, completeEPS(d))
					}
				}
				if l := rep.Limits; l != nil && res.DrainEPS != nil && l.KafkaProduceEPS != nil && l.PGDrainEPS != nil {
					res.DrainVsLesserLimit = ptr(r3(*res.DrainEPS / min(*l.KafkaProduceEPS, *l.PGDrainEPS)))
				}
			}
			write()
		}
		if has(cfg.Scenarios, "steady") {
			for _, rate := range cfg.Rates {
				if ctx.Err() != nil {
					break
				}
				h.logf("%s: steady %d/s for %s after %s warm-up", sys.name(), rate, cfg.Duration, cfg.Warmup)
				s, settings := h.steady(ctx, sys, rate)
				if settings != nil && res.Settings == nil {
					res.Settings = settings
				}
				if s.Error != "" {
					res.Errors = append(res.Errors, fmt.Sprintf("steady %d/s: %s", rate, s.Error))
				}
				res.Steady = append(res.Steady, s)
				res.Duplicates += s.Duplicates
				res.Missing += s.Missing
				res.UndeliveredAtCutoff += s.UndeliveredAtCutoff
				res.OrderViolations += s.OrderViolations
				h.logf("%s steady %d/s: achieved %.0f/s, p50 %.1f ms, p99 %.1f ms, max %.1f ms, flat %v", sys.name(), rate, s.AchievedRate, s.P50, s.P99, s.Max, s.Flat)
				write()
			}
		}
	}

	if has(cfg.Scenarios, "backlog") && rep.Backlog == nil && ctx.Err() == nil {
		if has(cfg.Systems, "relaybox") {
			h.logf("backlog: %d, %d (0: none) and %d rows", cfg.BacklogSmall, cfg.BacklogMid, cfg.BacklogBig)
			b := h.backlog(ctx, probeBin)
			rep.Backlog = &b
		} else {
			rep.Backlog = &backlogResult{SkippedReason: "relaybox not among the systems"}
		}
	}
	write()
	printTable(os.Stdout, rep)
	fmt.Printf("\nJSON: %s\n", cfg.Out)
	return ctx.Err()
}

func (h *harness) machine(ctx context.Context) map[string]any {
	m := map[string]any{"cpus": runtime.NumCPU(), "go": runtime.Version(), "os": runtime.GOOS + "/" + runtime.GOARCH}
	if host, err := os.Hostname(); err == nil {
		m["hostname"] = host
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				m["memory"] = strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:"))
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m["cpu_model"] = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	var v string
	if err := h.pool.QueryRow(ctx, `SELECT version()`).Scan(&v); err == nil {
		m["postgres"] = v
	}
	if kv := os.Getenv("RELAYBOX_KAFKA_VERSION"); kv != "" {
		m["kafka"] = kv
	} else if kv := kafkaVersionFromPom(h.mainDir); kv != "" {
		m["kafka"] = kv
	}
	m["broker"] = strings.Join(h.brokers, ",")
	return m
}

// runTag labels run k of n in the log ("" when there is one).
func runTag(k, n int) string {
	if n <= 1 {
		return ""
	}
	return fmt.Sprintf(" (run %d of %d)", k, n)
}

// median of vs, nil when there are none (the upper middle for an even count).
func median(vs []float64) *float64 {
	if len(vs) == 0 {
		return nil
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return ptr(s[len(s)/2])
}

func completeEPS(d *drainResult) float64 {
	if !d.Complete {
		return 0
	}
	return d.EPS
}
