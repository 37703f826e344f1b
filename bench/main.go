// Command bench is relaybox's comparative benchmark (issue #7): relaybox, Watermill's
// SQL forwarder, go-pq-cdc-kafka and Debezium's outbox event router, against one
// Postgres, one Kafka, the same topic settings and the same events, measured by one
// franz-go consumer; plus the raw limits of Kafka and Postgres, and relaybox's batch read
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
	Consumer *consumeResult           `json:"consumer,omitempty"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == consumeChildArg { // the consume scenario's consumer
		os.Exit(consumeChildMain())
	}
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
		// Other work on the machine shows in every whole-machine CPU figure.
		rep.Machine["loadavg_at_finish"] = loadAvg()
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(cfg.Out, append(b, '\n'), 0o644); err != nil {
			h.logf("write %s: %v", cfg.Out, err)
		}
	}

	// Build and fetch everything before measuring anything. The relaybox binary is built
	// first: its effective configuration (relayConf) sets the limits' settings too.
	// BENCH_RELAYBOX_BIN: a relaybox binary built elsewhere, instead of this tree's.
	if h.relayBin = os.Getenv("BENCH_RELAYBOX_BIN"); h.relayBin == "" {
		h.relayBin = filepath.Join(h.binDir, "relaybox")
		if err := goBuild(ctx, mainDir, h.relayBin, "./cmd/relaybox"); err != nil {
			return err
		}
	}
	if h.rc, err = readRelayConf(ctx, h.relayBin, os.Environ()); err != nil {
		return err
	}
	cfg.PGBatch, rep.Config.PGBatch = h.rc.BatchSize, h.rc.BatchSize
	systems := map[string]system{
		"relaybox":     &relayboxSystem{},
		"relaybox_eos": &relayboxSystem{eos: true},
		"watermill":    &watermillSystem{},
		"cdc":          &peerSystem{key: "cdc", dir: "pqcdc"},
		"debezium":     &peerSystem{key: "debezium", dir: "debezium"},
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
		rep.Limits = &limitsResult{Settings: map[string]any{}}
		for run := 1; run <= max(1, cfg.Repeat) && ctx.Err() == nil; run++ {
			h.logf("limits: raw franz-go produce of %d records%s", cfg.N, runTag(run, cfg.Repeat))
			if k, err := h.kafkaLimit(ctx, h.rc); err != nil {
				rep.Limits.Errors = append(rep.Limits.Errors, "kafka: "+err.Error())
			} else {
				rep.Limits.KafkaProduceRuns = append(rep.Limits.KafkaProduceRuns, r1(k.EPS))
				rep.Limits.Settings["kafka"] = k.Settings
				h.logf("limits: produce %.0f records/s", k.EPS)
			}
			h.logf("limits: raw Postgres read+delete of %d rows, %v connections%s", cfg.N, cfg.PGWorkers, runTag(run, cfg.Repeat))
			if p, err := h.pgLimit(ctx, h.rc); err != nil {
				rep.Limits.Errors = append(rep.Limits.Errors, "pg: "+err.Error())
			} else {
				rep.Limits.PGDrainRuns = append(rep.Limits.PGDrainRuns, r1(p.EPS))
				rep.Limits.PGByConnections = append(rep.Limits.PGByConnections, p.ByConnections)
				rep.Limits.Settings["pg"] = p.Settings
				h.logf("limits: Postgres %.0f rows/s (best of %v by connections: %d)", p.EPS, p.ByConnections, p.Best)
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
				h.logf("%s drain: %.0f events/s from the first record (%.0f from the process start; first record after %.2f s), %.1f µs CPU/event (relay %.1f), dup %d, missing %d, order %d",
					sys.name(), d.EPSFromFirstRecord, d.EPS, d.FirstRecordS, d.CPUUSPerEvent, d.RelayCPUUSPerEvent, d.Duplicates, d.Missing, d.OrderViolations)
			}
			if len(runs) > 0 {
				// The median run by events/s from the first record (the headline); an
				// incomplete run counts as 0.
				slices.SortStableFunc(runs, func(a, b *drainResult) int { return cmp.Compare(completeEPS(a), completeEPS(b)) })
				res.Drain = runs[len(runs)/2]
				if res.Drain.Complete {
					res.DrainEPS = ptr(res.Drain.EPSFromFirstRecord)
				}
				if cfg.Repeat > 1 {
					for _, d := range runs {
						res.DrainRuns = append(res.DrainRuns, completeEPS(d))
					}
				}
				if l := rep.Limits; l != nil && res.DrainEPS != nil && l.KafkaProduceEPS != nil && l.PGDrainEPS != nil {
					res.DrainVsLesserLimit = ptr(r3(*res.DrainEPS / min(*l.KafkaProduceEPS, *l.PGDrainEPS)))
				}
				if rep.Limits != nil {
					for _, b := range brokenLimits(rep.Limits, sys.name(), res) {
						rep.Limits.Broken = append(rep.Limits.Broken, b)
						h.logf("BROKEN MEASUREMENT: %s", b)
					}
					if len(rep.Limits.Broken) > 0 { // against a broken limit, no system gets a ratio
						for _, r := range rep.Systems {
							r.DrainVsLesserLimit = nil
						}
					}
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
	if has(cfg.Scenarios, "consume") && ctx.Err() == nil {
		rep.Consumer = h.consume(ctx)
	}
	write()
	printTable(os.Stdout, rep)
	printConsume(os.Stdout, rep.Consumer)
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
	m["loadavg_at_start"] = loadAvg()
	return m
}

// loadAvg is /proc/loadavg's 1, 5 and 15 minute load averages ("" if unreadable).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
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
	return d.EPSFromFirstRecord
}

// brokenLimits names each limit that system's drain (the median run) beat in the same
// run: a limit is an upper bound for the relay, so a drain above it means
// the limit was measured wrong (a cold client, a busy machine), not that the relay is
// faster than Kafka or Postgres can go.
func brokenLimits(l *limitsResult, system string, res *systemResult) []string {
	var out []string
	check := func(limit *float64, name string) {
		if limit == nil || res.DrainEPS == nil || *res.DrainEPS <= *limit {
			return
		}
		out = append(out, fmt.Sprintf("%s %.0f/s (median) is below %s's drain of %.0f/s in the same run: not an upper bound, a broken measurement", name, *limit, system, *res.DrainEPS))
	}
	check(l.KafkaProduceEPS, "kafka_produce_eps")
	check(l.PGDrainEPS, "pg_drain_eps")
	return out
}
