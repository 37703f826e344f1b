package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/relaybox/relaybox/migrations"
)

// consumeResult is the consume scenario's part of BENCH_OUT ("consumer"): N events
// the relay published, applied by relaybox's consumer and by its two baselines.
type consumeResult struct {
	SkippedReason string           `json:"skipped_reason,omitempty"`
	Settings      map[string]any   `json:"settings"`
	Runs          map[string]*cRun `json:"runs"` // with BENCH_CONSUME_REPEAT > 1, each variant's median run
	// EPSRuns: with BENCH_CONSUME_REPEAT > 1, every run's events/s (0: incomplete).
	EPSRuns map[string][]float64 `json:"eps_runs,omitempty"`
	RSS     *consumeRSS          `json:"rss,omitempty"`
	Targets map[string]target    `json:"targets"`
	Errors  []string             `json:"errors,omitempty"`

	// The headline figures: events per second from the first record fetched to the
	// last effect committed.
	BatchEPS       *float64 `json:"batch_eps"`
	SingleEPS      *float64 `json:"single_eps"`
	HandwrittenEPS *float64 `json:"handwritten_eps"`
	LimitEPS       *float64 `json:"limit_eps"`
	BatchNoDedup   *float64 `json:"batch_nodedup_eps"`
	// DedupOverhead is batch_nodedup_eps / batch_eps: what recording every event in
	// processed_events costs batch mode.
	DedupOverhead *float64 `json:"dedup_overhead"`
	// RedeliveryEPS is the second pass of the batch mode's group over the same
	// events (offsets reset to the start): every record a duplicate.
	RedeliveryEPS *float64 `json:"redelivery_eps"`
	// RSS of the batch-mode consumer's process over the 1M-event backlog.
	RSSPeakMB  *float64 `json:"rss_peak_mb"`
	RSSFlat    *bool    `json:"rss_flat"`
	RSSBacklog int64    `json:"rss_backlog_events"`
}

// target is one of the targets, as measured in this run.
type target struct {
	Want  string  `json:"want"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
}

// cRun is one variant's pass over the topic.
type cRun struct {
	Variant      string  `json:"variant"`
	Group        string  `json:"group"`
	Events       int64   `json:"events"`
	Applied      int64   `json:"applied"`
	Duplicates   int64   `json:"duplicates"`
	EPS          float64 `json:"eps"`            // from the first record fetched to the last commit
	EPSFromStart float64 `json:"eps_from_start"` // from the process start (group join included)
	FirstAfterS  float64 `json:"first_record_after_s"`
	ElapsedS     float64 `json:"elapsed_s"`
	RSSPeakMB    float64 `json:"rss_peak_mb"`
	// CPUUSPerEvent is the consumer process's own CPU time (user + system, read
	// from /proc when it reported DONE) over the events: unlike events/s, it hardly
	// depends on what else the machine runs. Postgres's and the broker's work is
	// not in it.
	CPUUSPerEvent float64 `json:"consumer_cpu_us_per_event"`
	// PGCPUUSPerEvent is the CPU time of the consumer's Postgres backends (found by
	// their application_name, read from /proc; the WAL writer and checkpointer are
	// not in it) over the events. With CPUUSPerEvent, the work a variant costs.
	PGCPUUSPerEvent float64 `json:"pg_backends_cpu_us_per_event"`
	// EffectRows and DistinctEffects count the effects table after the run: both
	// must be the events (each applied exactly once).
	EffectRows      int64       `json:"effect_rows"`
	DistinctEffects int64       `json:"distinct_effects"`
	RSS             []rssSample `json:"rss_samples,omitempty"`
	Error           string      `json:"error,omitempty"`
}

// rssSample is the child's RSS at a point of its run.
type rssSample struct {
	AtS  float64 `json:"at_s"`
	Done int64   `json:"done"` // applied + duplicates reported so far
	MB   float64 `json:"mb"`
}

// consumeRSS is the RSS check: batch mode over a backlog of RSSBacklog events.
type consumeRSS struct {
	Run *cRun `json:"run"`
	// FirstHalfPeakMB, SecondHalfPeakMB: the peaks over the two halves of the events.
	FirstHalfPeakMB  float64 `json:"first_half_peak_mb"`
	SecondHalfPeakMB float64 `json:"second_half_peak_mb"`
	// PeakAtNMB is the batch run's peak over the scenario's N events: with the
	// backlog's, whether memory grows with the backlog.
	PeakAtNMB float64 `json:"batch_peak_mb_at_n,omitempty"`
	BacklogMB float64 `json:"backlog_mb"`
	Flat      bool    `json:"flat"`
	Why       string  `json:"why"`
}

// consumeSettings is the scenario's configuration (BENCH_CONSUME_*).
type consumeSettings struct {
	N        int
	RSSN     int
	Conns    int
	Repeat   int
	Variants []string
	Effect   string // BENCH_CONSUME_EFFECT: how the relaybox consumer's handler applies its effect
}

var allConsumeVariants = []string{variantLimit, variantBatch, "redelivery", variantBatchNoDup, variantSingle, variantHandwritten, "rss"}

func consumeSettingsFromEnv(cfg config) (consumeSettings, error) {
	s := consumeSettings{N: cfg.N, Conns: 12, RSSN: 1000000, Repeat: 1, Variants: allConsumeVariants}
	if cfg.Quick {
		s.RSSN = 100000
	}
	for name, dst := range map[string]*int{"BENCH_CONSUME_N": &s.N, "BENCH_CONSUME_RSS_N": &s.RSSN, "BENCH_CONSUME_CONNS": &s.Conns, "BENCH_CONSUME_REPEAT": &s.Repeat} {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return s, fmt.Errorf("%s: want a number ≥ 0, got %q", name, v)
			}
			*dst = n
		}
	}
	if s.N <= 0 || s.Conns <= 0 || s.Repeat <= 0 {
		return s, errors.New("BENCH_CONSUME_N, BENCH_CONSUME_CONNS and BENCH_CONSUME_REPEAT must be positive")
	}
	if v := os.Getenv("BENCH_CONSUME_VARIANTS"); v != "" {
		s.Variants = splitList(v)
		for _, x := range s.Variants {
			if !slices.Contains(allConsumeVariants, x) {
				return s, fmt.Errorf("BENCH_CONSUME_VARIANTS: unknown variant %q (want %s)", x, strings.Join(allConsumeVariants, ","))
			}
		}
		if slices.Contains(s.Variants, "redelivery") && !slices.Contains(s.Variants, variantBatch) {
			return s, errors.New("BENCH_CONSUME_VARIANTS: redelivery is the second pass of batch: list batch too")
		}
	}
	switch s.Effect = os.Getenv("BENCH_CONSUME_EFFECT"); s.Effect {
	case "":
		s.Effect = effectInsert
	case effectInsert, effectExec:
	default:
		return s, fmt.Errorf("BENCH_CONSUME_EFFECT: want %s or %s, got %q", effectInsert, effectExec, s.Effect)
	}
	if s.RSSN == 0 {
		s.Variants = slices.DeleteFunc(slices.Clone(s.Variants), func(v string) bool { return v == "rss" })
	}
	return s, nil
}

// consume runs the consume scenario.
func (h *harness) consume(ctx context.Context) *consumeResult {
	res := &consumeResult{Runs: map[string]*cRun{}, Targets: map[string]target{}}
	cs, err := consumeSettingsFromEnv(h.cfg)
	if err != nil {
		res.SkippedReason = err.Error()
		return res
	}
	self, err := os.Executable()
	if err != nil {
		res.SkippedReason = err.Error()
		return res
	}
	res.Settings = map[string]any{"events": cs.N, "rss_backlog_events": cs.RSSN, "postgres_connections": cs.Conns, "repeat": cs.Repeat,
		"variants": cs.Variants, "keys": h.cfg.Keys, "event_bytes": h.cfg.EventBytes, "partitions": h.cfg.Partitions,
		"relaybox_consumer": "defaults: MaxBatch 500, MaxPollRecords 1000, MaxBufferedPerPartition 2000, read_committed",
		"limit_copy_rows":   limitBatch, "relaybox_effect": cs.Effect}
	schema := "bench_consume_" + h.runID
	if err := h.consumeSchema(ctx, schema); err != nil {
		res.SkippedReason = err.Error()
		return res
	}
	defer h.exec(context.WithoutCancel(ctx), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
	h.logf("consume: the relay publishes %d events", cs.N)
	topic, err := h.publishForConsume(ctx, "cons", cs.N)
	if topic != "" {
		defer h.deleteTopic(context.WithoutCancel(ctx), topic)
	}
	if err != nil {
		res.SkippedReason = err.Error()
		return res
	}
	all := map[string][]*cRun{}
	run := func(variant, group string, reset bool) *cRun {
		if reset {
			if err := h.truncateConsume(ctx, schema, variant == "redelivery"); err != nil {
				res.Errors = append(res.Errors, variant+": "+err.Error())
				return nil
			}
		}
		childVariant := variant
		if variant == "redelivery" {
			childVariant = variantBatch
		}
		r := h.consumeRun(ctx, self, childSettings{Variant: childVariant, Topic: topic, Group: group, Schema: schema,
			N: int64(cs.N), Conns: cs.Conns, Effect: cs.Effect}, schema)
		r.Variant = variant
		all[variant] = append(all[variant], r)
		if r.Error != "" {
			res.Errors = append(res.Errors, variant+": "+r.Error)
		}
		h.logf("consume %s: %.0f events/s from the first record (%.0f from the start), %.1f µs CPU/event in the consumer (%.1f in its Postgres backends), applied %d, duplicates %d, effect rows %d, RSS peak %.0f MB%s",
			variant, r.EPS, r.EPSFromStart, r.CPUUSPerEvent, r.PGCPUUSPerEvent, r.Applied, r.Duplicates, r.EffectRows, r.RSSPeakMB, errSuffix(r.Error))
		return r
	}
	for rep := 1; rep <= cs.Repeat && ctx.Err() == nil; rep++ {
		if cs.Repeat > 1 {
			h.logf("consume: pass %d of %d over the variants", rep, cs.Repeat)
		}
		for _, v := range cs.Variants {
			if ctx.Err() != nil {
				break
			}
			group := "bench-consume-" + h.runID + "-" + strconv.Itoa(rep) + "-" + v
			switch v {
			case "redelivery":
				group = "bench-consume-" + h.runID + "-" + strconv.Itoa(rep) + "-" + variantBatch
				if err := h.resetGroup(ctx, group, topic); err != nil {
					res.Errors = append(res.Errors, "redelivery: resetting the group: "+err.Error())
					continue
				}
				run(v, group, true)
			case "rss":
				if rep == cs.Repeat {
					var atN float64 // the last batch run's peak over N events
					if b := all[variantBatch]; len(b) > 0 {
						atN = b[len(b)-1].RSSPeakMB
					}
					res.RSS = h.consumeRSSRun(ctx, self, schema, cs, atN)
				}
			default:
				run(v, group, true)
			}
		}
	}
	res.pickMedians(all, cs.Repeat)
	res.summarize(cs)
	return res
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return ", ERROR " + e
}

// consumeSchema creates relaybox's tables (processed_events) in schema, the effects
// table and the hand-written consumer's dedup table.
func (h *harness) consumeSchema(ctx context.Context, schema string) error {
	if _, err := migrations.Migrate(ctx, h.pool, &migrations.Options{Schema: schema}); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	_, err := h.pool.Exec(ctx, `CREATE TABLE `+effectsTable(schema)+` (event_id text NOT NULL, k text NOT NULL, seq bigint NOT NULL);
		CREATE TABLE `+hwTable(schema)+` (consumer_group text NOT NULL, event_id text NOT NULL, PRIMARY KEY (consumer_group, event_id))`)
	return err
}

// truncateConsume empties the effects and both dedup tables before a run, and
// checkpoints so that no run pays for the previous one's writes; the redelivery
// pass keeps processed_events (its duplicates are the point) and the effects (which
// it must leave as they are).
func (h *harness) truncateConsume(ctx context.Context, schema string, redelivery bool) error {
	if !redelivery {
		q := `TRUNCATE ` + effectsTable(schema) + `, ` + hwTable(schema) + `, ` + pgx.Identifier{schema, "processed_events"}.Sanitize()
		if _, err := h.pool.Exec(ctx, q); err != nil {
			return err
		}
	}
	if _, err := h.pool.Exec(ctx, `CHECKPOINT`); err != nil {
		h.logf("consume: CHECKPOINT: %v (not a superuser? the runs then share checkpoints)", err)
	}
	return nil
}

// publishForConsume has the relay publish n events to a new topic, exactly as it
// publishes them in the drain: outbox.Writer in the harness, the relaybox binary with
// its defaults (Confluent wire format, the schema registered in the registry, the
// envelope headers). The outbox schema is dropped once the topic has all n.
func (h *harness) publishForConsume(ctx context.Context, tag string, n int) (string, error) {
	sys := &relayboxSystem{}
	inst, err := sys.setup(ctx, h, tag+h.runID)
	if err != nil {
		return "", err
	}
	ri := inst.(*relayboxInstance)
	defer h.exec(context.WithoutCancel(ctx), `DROP SCHEMA IF EXISTS `+pgx.Identifier{ri.schema}.Sanitize()+` CASCADE`)
	t := newTracker(h.es, int64(n))
	start := time.Now()
	if err := h.fill(ctx, inst, t, int64(n)); err != nil {
		return inst.topic(), fmt.Errorf("fill: %w", err)
	}
	h.logf("consume: %d events written in %.1f s; relaying", n, time.Since(start).Seconds())
	p, err := inst.start(ctx)
	if err != nil {
		return inst.topic(), err
	}
	defer func() { _ = p.stop(30 * time.Second) }()
	deadline := time.Now().Add(h.cfg.DrainTimeout)
	for {
		got, err := h.topicRecords(ctx, inst.topic())
		switch {
		case err == nil && got >= int64(n):
			return inst.topic(), nil
		case !p.running():
			return inst.topic(), fmt.Errorf("the relay exited before publishing all %d events (%d on the topic): %s", n, got, p.stderr.lastLines(5))
		case time.Now().After(deadline) || ctx.Err() != nil:
			return inst.topic(), fmt.Errorf("the relay published %d of %d events in %s", got, n, h.cfg.DrainTimeout)
		}
		time.Sleep(200 * time.Millisecond) // polling the topic's end offsets, not synchronisation
	}
}

// topicRecords is the sum of topic's end offsets (the relay's topics are never
// compacted nor transactional in this mode: one offset per record).
func (h *harness) topicRecords(ctx context.Context, topic string) (int64, error) {
	ends, err := h.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, err
	}
	var n int64
	var ferr error
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			ferr = o.Err
		}
		n += o.Offset
	})
	return n, ferr
}

// resetGroup sets group's committed offsets of topic back to the start.
func (h *harness) resetGroup(ctx context.Context, group, topic string) error {
	starts, err := h.adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return err
	}
	if err := starts.Error(); err != nil {
		return err
	}
	resp, err := h.adm.CommitOffsets(ctx, group, starts.Offsets())
	if err != nil {
		return err
	}
	return resp.Error()
}

// consumeRun runs one variant as a child process until it reports DONE, sampling
// its RSS, then checks the effects table.
func (h *harness) consumeRun(ctx context.Context, self string, s childSettings, schema string) *cRun {
	r := &cRun{Variant: s.Variant, Group: s.Group, Events: s.N}
	var mu sync.Mutex
	var last childLine
	var firstLine childLine
	done := make(chan struct{})
	var doneOnce sync.Once
	onLine := func(line string) {
		ev, ok := parseChildLine(line)
		if !ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch ev.kind {
		case "FIRST":
			firstLine = ev
		case "DONE":
			last = ev
			doneOnce.Do(func() { close(done) })
		default:
			last = ev
		}
	}
	s.App = "bench-" + r.Variant + "-" + h.runID + "-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 36)
	backends := map[int]float64{} // pid: CPU seconds, cumulative
	sampleBackends := func() {
		rows, err := h.pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, s.App)
		if err != nil {
			return
		}
		pids, _ := pgx.CollectRows(rows, pgx.RowTo[int32])
		for _, pid := range pids {
			if cpu := float64(statField(int(pid), 14)+statField(int(pid), 15)) / 100; cpu > 0 {
				backends[int(pid)] = cpu
			}
		}
	}
	env := append(os.Environ(), s.env()...)
	p, err := startProc("consume-"+s.Variant, []string{self, consumeChildArg}, env, "", h.logPath("consume-"+s.Variant+"-"+s.Group), onLine)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer func() { _ = p.stop(30 * time.Second) }()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(h.cfg.DrainTimeout)
	var peak int64
wait:
	for {
		select {
		case <-done:
			_, cpu := p.stats()
			r.CPUUSPerEvent = r1(cpu * 1e6 / float64(s.N))
			sampleBackends()
			var pg float64
			for _, c := range backends {
				pg += c
			}
			r.PGCPUUSPerEvent = r1(pg * 1e6 / float64(s.N))
			break wait
		case <-p.exited:
			select {
			case <-done: // DONE was the last line before exiting
				break wait
			default:
			}
			r.Error = fmt.Sprintf("the consumer exited before all events were done: %v: %s", p.waitErr, p.stderr.lastLines(5))
			break wait
		case <-timeout:
			r.Error = fmt.Sprintf("not done after %s", h.cfg.DrainTimeout)
			break wait
		case <-ctx.Done():
			r.Error = ctx.Err().Error()
			break wait
		case now := <-tick.C:
			sampleBackends()
			rss, _ := p.stats()
			peak = max(peak, rss)
			mu.Lock()
			r.RSS = append(r.RSS, rssSample{AtS: r1(now.Sub(p.start).Seconds()), Done: last.applied + last.duplicates, MB: mb(rss)})
			mu.Unlock()
		}
	}
	mu.Lock()
	r.Applied, r.Duplicates = last.applied, last.duplicates
	first, lastNS := last.first, last.last
	if first == 0 {
		first = firstLine.first
	}
	mu.Unlock()
	r.RSSPeakMB = mb(max(peak, p.peakRSS()))
	if r.Error == "" && first > 0 && lastNS > first {
		r.ElapsedS = float64(lastNS-first) / 1e9
		r.EPS = r1(float64(s.N) / r.ElapsedS)
		r.EPSFromStart = r1(float64(s.N) / (float64(lastNS-p.start.UnixNano()) / 1e9))
		r.FirstAfterS = r3(float64(first-p.start.UnixNano()) / 1e9)
		r.ElapsedS = r3(r.ElapsedS)
	}
	select { // the child leaves its group and exits by itself
	case <-p.exited:
	case <-time.After(30 * time.Second):
	}
	if err := h.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT event_id) FROM `+effectsTable(schema)).Scan(&r.EffectRows, &r.DistinctEffects); err != nil {
		r.Error = strings.TrimSpace(r.Error + " counting effects: " + err.Error())
	}
	return r
}

// consumeRSSRun is the RSS check: a topic of cs.RSSN events (the main one when it
// has as many), consumed in batch mode by a child whose RSS is sampled.
func (h *harness) consumeRSSRun(ctx context.Context, self, schema string, cs consumeSettings, atNMB float64) *consumeRSS {
	out := &consumeRSS{PeakAtNMB: atNMB}
	h.logf("consume rss: the relay publishes %d events", cs.RSSN)
	topic, err := h.publishForConsume(ctx, "consrss", cs.RSSN)
	if topic != "" {
		defer h.deleteTopic(context.WithoutCancel(ctx), topic)
	}
	if err != nil {
		out.Run = &cRun{Variant: "rss", Error: err.Error()}
		return out
	}
	if err := h.truncateConsume(ctx, schema, false); err != nil {
		out.Run = &cRun{Variant: "rss", Error: err.Error()}
		return out
	}
	r := h.consumeRun(ctx, self, childSettings{Variant: variantBatch, Topic: topic, Group: "bench-consume-" + h.runID + "-rss",
		Schema: schema, N: int64(cs.RSSN), Conns: cs.Conns, Effect: cs.Effect}, schema)
	r.Variant = "rss"
	out.Run = r
	out.BacklogMB = mb(int64(cs.RSSN) * int64(h.cfg.EventBytes))
	out.FirstHalfPeakMB, out.SecondHalfPeakMB, out.Flat, out.Why = rssFlat(r.RSS, int64(cs.RSSN), out.BacklogMB, atNMB)
	h.logf("consume rss: %d events at %.0f events/s; RSS peak %.0f MB (first half %.0f, second half %.0f; backlog %.0f MB): flat %v",
		cs.RSSN, r.EPS, r.RSSPeakMB, out.FirstHalfPeakMB, out.SecondHalfPeakMB, out.BacklogMB, out.Flat)
	r.RSS = thin(r.RSS, 40)
	return out
}

// rssFlat judges the RSS samples of a run over n events: flat when the peak over
// the second half of the events is at most the first half's plus 20 % (memory does
// not grow with the events consumed), and the peak is below half the backlog's bytes
// or below 1.5 × atNMB, the batch run's peak over the scenario's smaller N (the
// consumer does not hold the backlog: a backlog not much larger than the consumer's
// fixed footprint is judged by the second).
func rssFlat(samples []rssSample, n int64, backlogMB, atNMB float64) (first, second float64, flat bool, why string) {
	var seenSecond bool
	for _, s := range samples {
		if s.Done*2 < n {
			first = max(first, s.MB)
		} else {
			second = max(second, s.MB)
			seenSecond = true
		}
	}
	switch {
	case first == 0 || !seenSecond:
		return first, second, false, "too few samples over the run"
	case second > first*1.2:
		return first, second, false, fmt.Sprintf("the second half's peak (%.0f MB) is more than 1.2 × the first's (%.0f MB)", second, first)
	case max(first, second) > backlogMB/2 && max(first, second) > 1.5*atNMB:
		return first, second, false, fmt.Sprintf("the peak (%.0f MB) exceeds half the backlog (%.0f MB) and 1.5 × the peak over fewer events (%.0f MB)",
			max(first, second), backlogMB, atNMB)
	}
	return first, second, true, fmt.Sprintf("second half's peak ≤ 1.2 × the first's; the peak ≤ half the backlog's %.0f MB or ≤ 1.5 × the %.0f MB over fewer events",
		backlogMB, atNMB)
}

// thin keeps at most k evenly spaced samples (the last always).
func thin(s []rssSample, k int) []rssSample {
	if len(s) <= k {
		return s
	}
	out := make([]rssSample, 0, k)
	for i := range k - 1 {
		out = append(out, s[i*len(s)/(k-1)])
	}
	return append(out, s[len(s)-1])
}

// pickMedians sets each variant's run: the median of its runs by events/s, an
// incomplete run counting as 0 (as the drain's repeats).
func (res *consumeResult) pickMedians(all map[string][]*cRun, repeat int) {
	score := func(v string, r *cRun) float64 {
		if r.Error != "" || !r.complete(v) {
			return 0
		}
		return r.EPS
	}
	for v, runs := range all {
		sorted := slices.Clone(runs)
		slices.SortStableFunc(sorted, func(a, b *cRun) int { return cmp.Compare(score(v, a), score(v, b)) })
		res.Runs[v] = sorted[len(sorted)/2]
		if repeat > 1 {
			if res.EPSRuns == nil {
				res.EPSRuns = map[string][]float64{}
			}
			for _, r := range runs {
				res.EPSRuns[v] = append(res.EPSRuns[v], score(v, r))
			}
		}
	}
}

// summarize sets the headline figures and the targets from the runs.
func (res *consumeResult) summarize(cs consumeSettings) {
	eps := func(v string) *float64 {
		r := res.Runs[v]
		if r == nil || r.Error != "" || r.EPS == 0 || !r.complete(v) {
			return nil
		}
		return ptr(r.EPS)
	}
	res.BatchEPS, res.SingleEPS, res.HandwrittenEPS = eps(variantBatch), eps(variantSingle), eps(variantHandwritten)
	res.LimitEPS, res.BatchNoDedup, res.RedeliveryEPS = eps(variantLimit), eps(variantBatchNoDup), eps("redelivery")
	ratio := func(a, b *float64) *float64 {
		if a == nil || b == nil || *b == 0 {
			return nil
		}
		return ptr(r3(*a / *b))
	}
	res.DedupOverhead = ratio(res.BatchNoDedup, res.BatchEPS)
	add := func(name, want string, v *float64, met func(float64) bool) {
		if v != nil {
			res.Targets[name] = target{Want: want, Value: *v, Met: met(*v)}
		}
	}
	add("batch_vs_limit", "≥ 0.5", ratio(res.BatchEPS, res.LimitEPS), func(v float64) bool { return v >= 0.5 })
	add("single_vs_handwritten", "> 1", ratio(res.SingleEPS, res.HandwrittenEPS), func(v float64) bool { return v > 1 })
	add("dedup_overhead", "≤ 1.2", res.DedupOverhead, func(v float64) bool { return v <= 1.2 })
	add("redelivery_vs_batch", "≥ 2", ratio(res.RedeliveryEPS, res.BatchEPS), func(v float64) bool { return v >= 2 })
	if res.RSS != nil && res.RSS.Run != nil && res.RSS.Run.Error == "" {
		res.RSSPeakMB = ptr(res.RSS.Run.RSSPeakMB)
		res.RSSFlat = &res.RSS.Flat
		res.RSSBacklog = int64(cs.RSSN)
		flat := 0.0
		if res.RSS.Flat {
			flat = 1
		}
		res.Targets["rss_flat"] = target{Want: "flat (1)", Value: flat, Met: res.RSS.Flat}
	}
}

// complete: every event done and the effects table as it must be: one row per event,
// and for the redelivery pass no new application at all.
func (r *cRun) complete(variant string) bool {
	if r.Applied+r.Duplicates != r.Events || r.EffectRows != r.Events || r.DistinctEffects != r.Events {
		return false
	}
	if variant == "redelivery" {
		return r.Applied == 0
	}
	return r.Duplicates == 0
}

// printConsume prints the consume scenario's summary under the table.
func printConsume(w io.Writer, res *consumeResult) {
	if res == nil {
		return
	}
	if res.SkippedReason != "" {
		fmt.Fprintf(w, "\nconsume: skipped: %s\n", res.SkippedReason)
		return
	}
	fmt.Fprintf(w, "\nconsume (%v events, events/s from the first record fetched to the last effect committed):\n", res.Settings["events"])
	for _, v := range allConsumeVariants {
		r := res.Runs[v]
		if r == nil {
			continue
		}
		fmt.Fprintf(w, "  %-14s %8.0f ev/s (%8.0f from the start), CPU µs/event %5.1f + Postgres %5.1f, applied %d, duplicates %d, effect rows %d, RSS peak %.0f MB%s\n",
			v, r.EPS, r.EPSFromStart, r.CPUUSPerEvent, r.PGCPUUSPerEvent, r.Applied, r.Duplicates, r.EffectRows, r.RSSPeakMB, errSuffix(r.Error))
	}
	if res.RSS != nil && res.RSS.Run != nil {
		fmt.Fprintf(w, "  rss (%d-event backlog, %.0f MB): %.0f ev/s, peak %.0f MB (halves %.0f / %.0f MB; batch over %v events: %.0f MB), flat %v%s\n",
			res.RSSBacklog, res.RSS.BacklogMB, res.RSS.Run.EPS, res.RSS.Run.RSSPeakMB, res.RSS.FirstHalfPeakMB, res.RSS.SecondHalfPeakMB,
			res.Settings["events"], res.RSS.PeakAtNMB, res.RSS.Flat, errSuffix(res.RSS.Run.Error))
	}
	for _, name := range slices.Sorted(maps.Keys(res.Targets)) {
		t := res.Targets[name]
		fmt.Fprintf(w, "  target %-22s %.3f (want %s): %s\n", name, t.Value, t.Want, map[bool]string{true: "met", false: "MISSED"}[t.Met])
	}
	for _, v := range slices.Sorted(maps.Keys(res.EPSRuns)) {
		fmt.Fprintf(w, "  %s runs: %v ev/s (median above)\n", v, res.EPSRuns[v])
	}
	for _, e := range res.Errors {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
}
