package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/relaysql"
)

// ---- results ----

type systemResult struct {
	SkippedReason string          `json:"skipped_reason,omitempty"`
	Settings      json.RawMessage `json:"settings,omitempty"`
	// DrainEPS: the headline, the median drain's events/s from its first record.
	DrainEPS *float64     `json:"drain_eps"`
	Drain    *drainResult `json:"drain,omitempty"`
	// DrainRuns: every drain's events/s from its first record when BENCH_REPEAT > 1;
	// drain_eps and drain are the median run.
	DrainRuns []float64 `json:"drain_eps_runs,omitempty"`
	// DrainVsLesserLimit: drain_eps / min(kafka_produce_eps, pg_drain_eps).
	DrainVsLesserLimit *float64       `json:"drain_vs_lesser_limit,omitempty"`
	Steady             []steadyResult `json:"steady"`
	Duplicates         int64          `json:"duplicates"`
	Missing            int64          `json:"missing"`
	OrderViolations    int64          `json:"order_violations"`
	// UndeliveredAtCutoff sums the steady runs' undelivered_at_cutoff.
	UndeliveredAtCutoff int64    `json:"undelivered_at_cutoff,omitempty"`
	Errors              []string `json:"errors,omitempty"`
}

type drainResult struct {
	N        int64 `json:"n"`
	Complete bool  `json:"complete"`
	// EPSFromFirstRecord is the headline (drain_eps): events over the time from the
	// first record received to the last; the start-up before it is FirstRecordS.
	EPSFromFirstRecord float64 `json:"eps_from_first_record"`
	EPS                float64 `json:"eps_from_relay_start"`
	Seconds            float64 `json:"seconds_from_relay_start"`
	// FirstRecordS: the system's start-up, from its process start to the first record.
	FirstRecordS float64 `json:"first_record_after_s"`
	// CPUUSPerEvent: the whole machine's CPU time (/proc/stat: every process, Postgres,
	// Kafka, the measuring consumer) from the first record to the last, per event;
	// RelayCPUUSPerEvent the relay process tree's share of it.
	CPUUSPerEvent      float64 `json:"cpu_us_per_event"`
	RelayCPUUSPerEvent float64 `json:"relay_cpu_us_per_event"`
	MachineCPUS        float64 `json:"machine_cpu_s"`
	// ConsumerIsolation: how the measuring consumer read the topic.
	ConsumerIsolation string `json:"consumer_isolation"`
	// Observed: what the harness saw the system use (compression_on_topic: records
	// by batch compression; relaybox: pg_connections_max).
	Observed        map[string]any `json:"observed,omitempty"`
	ReadyS          *float64       `json:"ready_after_s,omitempty"`
	FillEPS         float64        `json:"fill_eps"`
	Received        int64          `json:"received_distinct"`
	Duplicates      int64          `json:"duplicates"`
	Missing         int64          `json:"missing"`
	OrderViolations int64          `json:"order_violations"`
	Undecodable     int64          `json:"undecodable,omitempty"`
	Unknown         int64          `json:"unknown,omitempty"`
	// RelayCPUS: the relay process tree's CPU from its start to the end (start-up included).
	RelayCPUS      float64 `json:"relay_cpu_s"`
	RelayPeakRSSMB float64 `json:"relay_peak_rss_mb"`
}

type steadyResult struct {
	Rate            int     `json:"rate"`
	AchievedRate    float64 `json:"achieved_rate"`
	GeneratorBehind bool    `json:"generator_behind"`
	Events          int64   `json:"events_measured"`
	P50             float64 `json:"p50_ms"`
	P90             float64 `json:"p90_ms"`
	P99             float64 `json:"p99_ms"`
	P999            float64 `json:"p999_ms"`
	Max             float64 `json:"max_ms"`
	Flat            bool    `json:"flat"`
	LagSlope        float64 `json:"lag_slope_events_per_s"`
	LagStart        float64 `json:"lag_first10s_mean"`
	LagEnd          float64 `json:"lag_last10s_mean"`
	Lag             []int64 `json:"lag_samples"`
	Duplicates      int64   `json:"duplicates"`
	Missing         int64   `json:"missing"`
	// UndeliveredAtCutoff: events not yet received when the 60 s tail wait ended
	// while the relay was still delivering (it fell behind); not counted as missing.
	UndeliveredAtCutoff int64 `json:"undelivered_at_cutoff,omitempty"`
	// UndeliveredInWindow: events of the measured window not received by the cutoff
	// (fell behind, or missing). The percentiles count each at its age at the cutoff, a
	// lower bound of its latency: a system that falls behind does not look fast.
	UndeliveredInWindow int64 `json:"undelivered_in_window"`
	// CPUUSPerEvent: the whole machine's CPU time (/proc/stat) over the measured window
	// per event committed in it (the generator's inserts included, the same work for
	// every system); RelayCPUUSPerEvent: the relay process tree's share.
	CPUUSPerEvent      float64 `json:"cpu_us_per_event"`
	RelayCPUUSPerEvent float64 `json:"relay_cpu_us_per_event"`
	OrderViolations    int64   `json:"order_violations"`
	Undecodable        int64   `json:"undecodable,omitempty"`
	RelayCPUS          float64 `json:"relay_cpu_s"`
	RelayCPUPct        float64 `json:"relay_cpu_pct"`
	RelayPeakRSSMB     float64 `json:"relay_peak_rss_mb"`
	// RelayMetrics: the relay's own counters over the measured window (relaybox only).
	RelayMetrics map[string]float64 `json:"relay_metrics,omitempty"`
	Error        string             `json:"error,omitempty"`
}

type metricser interface{ relayMetrics() map[string]float64 }

// observer is an instance that reports what the harness saw it use.
type observer interface{ observed() map[string]any }

// readsCommitted tells whether inst's topic is read read_committed (exactly-once).
func readsCommitted(inst instance) bool {
	rc, ok := inst.(interface{ readCommitted() bool })
	return ok && rc.readCommitted()
}

func isolationName(readCommitted bool) string {
	if readCommitted {
		return "read_committed"
	}
	return "read_uncommitted"
}

// metricsDelta returns b − a per key, with derived rates over secs.
func metricsDelta(a, b map[string]float64, secs float64) map[string]float64 {
	if a == nil || b == nil {
		return nil
	}
	d := map[string]float64{}
	for k, v := range b {
		d[k] = r3(v - a[k])
	}
	if secs > 0 {
		d["claims_per_s"] = r1(d["claims"] / secs)
		d["empty_claims_per_s"] = r1((d["claims"] - d["batches_with_rows"]) / secs)
	}
	if d["claims"] > 0 {
		d["claim_mean_ms"] = r3(1000 * d["claims_seconds"] / d["claims"])
	}
	if d["batches_with_rows"] > 0 {
		d["rows_per_batch"] = r1(d["rows"] / d["batches_with_rows"])
	}
	if d["published"] > 0 {
		d["relay_publish_latency_mean_ms"] = r3(1000 * d["publish_latency_seconds_sum"] / d["published"])
	}
	return d
}

type limitsResult struct {
	KafkaProduceEPS *float64 `json:"kafka_produce_eps"`
	PGDrainEPS      *float64 `json:"pg_drain_eps"`
	// Every run's figure when BENCH_REPEAT > 1 (the fields above are their medians).
	KafkaProduceRuns []float64 `json:"kafka_produce_eps_runs,omitempty"`
	PGDrainRuns      []float64 `json:"pg_drain_eps_runs,omitempty"`
	// PGByConnections: each run's figure per connection count (the run's figure is the best).
	PGByConnections []map[string]float64 `json:"pg_drain_eps_by_connections,omitempty"`
	// Settings: what the limits ran with, as their clients report it ("kafka", "pg").
	Settings map[string]any `json:"settings"`
	// Broken: a limit below a drain measured in the same run is not an upper bound but
	// a broken measurement; each entry says which. Empty when every limit held.
	Broken []string `json:"broken,omitempty"`
	Errors []string `json:"errors,omitempty"`
}

type backlogResult struct {
	ClaimMS10k *float64 `json:"claim_ms_10k"`
	ClaimMS5M  *float64 `json:"claim_ms_5m"`
	Ratio      *float64 `json:"ratio_big_to_small,omitempty"`
	// The batch read statement with LIMIT 100 (the same rows returned at both sizes).
	ClaimMS10kLimit100 *float64         `json:"claim_ms_10k_limit100,omitempty"`
	ClaimMS5MLimit100  *float64         `json:"claim_ms_5m_limit100,omitempty"`
	RatioLimit100      *float64         `json:"ratio_big_to_small_limit100,omitempty"`
	Sizes              []backlogMeasure `json:"sizes"`
	Note               string           `json:"note"`
	SkippedReason      string           `json:"skipped_reason,omitempty"`
	Errors             []string         `json:"errors,omitempty"`
}

type backlogMeasure struct {
	Rows         int64   `json:"rows"`
	FillSeconds  float64 `json:"fill_s"`
	TableMB      float64 `json:"table_mb"`
	Claims       int     `json:"relay_claims_measured"`
	RowsPerClaim float64 `json:"relay_rows_per_claim_mean"`
	// The batch read query alone, timed by the harness on one connection before the relay
	// starts: the relay's read statement for each of the 64 shards, 3 passes after a
	// warm-up pass.
	QueryP50MS    float64 `json:"query_p50_ms"`
	QueryP99MS    float64 `json:"query_p99_ms"`
	QueryRows     float64 `json:"query_rows_mean"`
	QueryUSPerRow float64 `json:"query_us_per_row_p50"`
	// The same with LIMIT 100: the same number of rows at every backlog size.
	Query100P50MS float64 `json:"query_limit100_p50_ms"`
	// As the running relay sees it (relay.Hooks.OnRead: includes the wait for one of
	// its 16 connections while 64 shard drains read at once, and CPU contention).
	ClaimP50MS    float64 `json:"relay_claim_p50_ms"`
	ClaimP99MS    float64 `json:"relay_claim_p99_ms"`
	ClaimMeanMS   float64 `json:"relay_claim_mean_ms"`
	ClaimUSPerRow float64 `json:"relay_claim_us_per_row_p50"`
	RSSReadyMB    float64 `json:"relay_rss_ready_mb"`
	RSSPeakMB     float64 `json:"relay_rss_peak_mb"`
	Error         string  `json:"error,omitempty"`
}

func ptr(v float64) *float64 { return &v }
func mb(b int64) float64     { return math.Round(float64(b)/(1<<20)*10) / 10 }
func r1(v float64) float64   { return math.Round(v*10) / 10 }
func r3(v float64) float64   { return math.Round(v*1000) / 1000 }

// ---- drain ----

// drain runs one drain; run numbers the repeats, each with its own schema, topic and
// (for the CDC peers) slot and offsets: a repeat must not resume its predecessor.
func (h *harness) drain(ctx context.Context, sys system, run int) (*drainResult, json.RawMessage, error) {
	n := int64(h.cfg.N)
	name := h.runID + "_d"
	if run > 1 {
		name += strconv.Itoa(run)
	}
	inst, err := sys.setup(ctx, h, name)
	if err != nil {
		return nil, nil, fmt.Errorf("setup: %w", err)
	}
	defer inst.teardown(ctx)
	t := newTracker(h.es, n)
	fillStart := time.Now()
	if err := h.fill(ctx, inst, t, n); err != nil {
		return nil, nil, fmt.Errorf("fill: %w", err)
	}
	res := &drainResult{N: n, FillEPS: r1(float64(n) / time.Since(fillStart).Seconds())}
	h.logf("%s drain: %d events written (%.0f/s), starting the relay", sys.name(), n, res.FillEPS)
	rc := readsCommitted(inst)
	res.ConsumerIsolation = isolationName(rc)
	cons, err := startConsumer(ctx, h.brokers, inst.topic(), t, rc)
	if err != nil {
		return nil, nil, err
	}
	defer cons.close()
	mcpu := startMachineCPU(10 * time.Millisecond)
	defer mcpu.stop()
	p, err := inst.start(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("start relay: %w", err)
	}
	defer p.stop(15 * time.Second)
	wctx, cancel := context.WithTimeout(ctx, h.cfg.DrainTimeout)
	done := make(chan bool, 1)
	go func() { done <- waitDistinct(wctx, t, n, 0) }()
	if rb, ok := inst.(*relayboxInstance); ok && os.Getenv("BENCH_RELAY_PPROF") != "" && os.Getenv("BENCH_RELAY_PPROF_RATE") == "" {
		// BENCH_RELAY_PPROF=file: a CPU profile of the relay over BENCH_RELAY_PPROF_S
		// seconds (default 5) from the first record received.
		go func() {
			for t.firstRecv.Load() == 0 && wctx.Err() == nil {
				time.Sleep(5 * time.Millisecond)
			}
			secs, _ := strconv.Atoi(os.Getenv("BENCH_RELAY_PPROF_S"))
			if err := rb.profile(wctx, time.Duration(cmp.Or(secs, 5))*time.Second); err != nil {
				h.logf("relay profile: %v", err)
			}
		}()
	}
	var complete bool
	select {
	case complete = <-done:
	case <-p.exited:
		complete = false
		cancel()
		<-done
	}
	cancel()
	last, first := t.lastNew.Load(), t.firstRecv.Load()
	time.Sleep(time.Second) // late duplicates (and CPU samples past the last record)
	_, cpu := p.stats()
	res.RelayCPUS = r1(cpu)
	res.RelayPeakRSSMB = mb(p.peakRSS())
	settings := p.settingsJSON()
	exited := !p.running()
	_ = p.stop(15 * time.Second)
	cons.close()
	res.Complete = complete
	res.Received = t.distinct.Load()
	if d, ok := p.readyAfter(); ok {
		res.ReadyS = ptr(r3(d.Seconds()))
	}
	if last > 0 {
		el := time.Duration(last - p.start.UnixNano())
		res.Seconds = r3(el.Seconds())
		res.EPS = r1(float64(res.Received) / el.Seconds())
		res.FirstRecordS = r3(time.Duration(first - p.start.UnixNano()).Seconds())
		if last > first {
			res.EPSFromFirstRecord = r1(float64(res.Received-1) / time.Duration(last-first).Seconds())
			if m, ok := mcpu.between(first, last); ok {
				res.MachineCPUS = r3(m)
				res.CPUUSPerEvent = usPerEvent(m, res.Received-1)
			}
			if c, ok := p.cpu.between(first, last); ok {
				res.RelayCPUUSPerEvent = usPerEvent(c, res.Received-1)
			}
		}
	}
	res.Observed = map[string]any{"compression_on_topic": t.compression()}
	if o, ok := inst.(observer); ok {
		maps.Copy(res.Observed, o.observed())
	}
	res.Duplicates, res.OrderViolations = t.dups.Load(), t.orderViol.Load()
	res.Missing = t.missing(0, n)
	res.Undecodable, res.Unknown = t.bad.Load(), t.unknown.Load()
	if !complete {
		why := "timed out"
		if exited {
			why = fmt.Sprintf("relay exited (%v): %s", p.waitErr, p.stderr.lastLines(10))
		}
		return res, settings, fmt.Errorf("drain incomplete: %d of %d events received; %s", res.Received, n, why)
	}
	return res, settings, nil
}

// ---- steady ----

func (h *harness) steady(ctx context.Context, sys system, rate int) (steadyResult, json.RawMessage) {
	res := steadyResult{Rate: rate}
	inst, err := sys.setup(ctx, h, h.runID+"_s"+strconv.Itoa(rate))
	if err != nil {
		res.Error = "setup: " + err.Error()
		return res, nil
	}
	defer inst.teardown(ctx)
	total := h.cfg.Warmup + h.cfg.Duration
	capacity := int64(float64(rate)*total.Seconds()*1.1) + int64(h.cfg.Keys)
	t := newTracker(h.es, capacity)
	cons, err := startConsumer(ctx, h.brokers, inst.topic(), t, readsCommitted(inst))
	if err != nil {
		res.Error = err.Error()
		return res, nil
	}
	defer cons.close()
	mcpu := startMachineCPU(10 * time.Millisecond)
	defer mcpu.stop()
	p, err := inst.start(ctx)
	if err != nil {
		res.Error = "start relay: " + err.Error()
		return res, nil
	}
	defer p.stop(15 * time.Second)
	select {
	case <-p.ready:
	case <-p.exited:
		res.Error = fmt.Sprintf("relay exited (%v): %s", p.waitErr, p.stderr.lastLines(10))
		return res, p.settingsJSON()
	case <-time.After(90 * time.Second):
		h.logf("%s: no ready signal after 90 s; generating anyway", sys.name())
	}

	// The open-loop generator: every 5 ms, the events due by now at the rate, in
	// transactions of at most TxEvents aligned on multiples of TxEvents; block b goes
	// to writer connection b mod WriterConns (FIFO), so a key's transactions (blocks
	// Keys/TxEvents apart) commit in sequence order.
	gctx, gcancel := context.WithCancel(ctx)
	defer gcancel()
	w := h.cfg.WriterConns
	queues := make([]chan [2]int64, w)
	var wg sync.WaitGroup
	var genErr atomic.Value
	for k := range w {
		queues[k] = make(chan [2]int64, 1<<16)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range queues[k] {
				if gctx.Err() != nil {
					continue
				}
				if err := h.writeRange(gctx, inst, t, r[0], r[1]); err != nil {
					genErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	te := int64(h.cfg.TxEvents)
	var next, windowFrom int64 = 0, -1
	var lag []int64
	var behind bool
	start := time.Now()
	windowStart := start.Add(h.cfg.Warmup)
	end := windowStart.Add(h.cfg.Duration)
	tick := time.NewTicker(5 * time.Millisecond)
	nextSample := windowStart.Add(time.Second)
	var cpuStart float64
	var mStart map[string]float64
	for now := range tick.C {
		if now.After(end) {
			break
		}
		if windowFrom < 0 && !now.Before(windowStart) {
			windowFrom = next
			_, cpuStart = p.stats()
			if ms, ok := inst.(metricser); ok {
				mStart = ms.relayMetrics()
			}
			if rb, ok := inst.(*relayboxInstance); ok && os.Getenv("BENCH_RELAY_PPROF") != "" && os.Getenv("BENCH_RELAY_PPROF_RATE") == strconv.Itoa(rate) {
				// BENCH_RELAY_PPROF_RATE=rate: the profile is of the steady run at that
				// rate, from the start of its measured window.
				go func() {
					secs, _ := strconv.Atoi(os.Getenv("BENCH_RELAY_PPROF_S"))
					if err := rb.profile(gctx, time.Duration(cmp.Or(secs, 5))*time.Second); err != nil {
						h.logf("relay profile: %v", err)
					}
				}()
			}
			p.resetMaxRSS()
		}
		due := min(int64(float64(rate)*now.Sub(start).Seconds()), capacity)
		for next < due {
			to := min((next/te+1)*te, due)
			select {
			case queues[(next/te)%int64(w)] <- [2]int64{next, to}:
			default:
				behind = true
				queues[(next/te)%int64(w)] <- [2]int64{next, to}
			}
			next = to
		}
		if windowFrom >= 0 && !now.Before(nextSample) {
			lag = append(lag, t.committed.Load()-t.distinct.Load())
			nextSample = nextSample.Add(time.Second)
		}
		if !p.running() {
			break
		}
	}
	tick.Stop()
	windowTo := next
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	genEnd := time.Now()
	_, cpuEnd := p.stats()
	if ms, ok := inst.(metricser); ok {
		res.RelayMetrics = metricsDelta(mStart, ms.relayMetrics(), genEnd.Sub(windowStart).Seconds())
	}
	// Let the relay deliver what was committed: until all arrived, or nothing new
	// for 20 s (then what is left is missing), or 60 s passed while events still flow
	// (a relay that fell behind: what is left is reported as undelivered, not missing).
	tctx, tcancel := context.WithTimeout(ctx, 60*time.Second)
	all := waitDistinct(tctx, t, t.committed.Load(), 20*time.Second)
	stillFlowing := !all && tctx.Err() != nil && time.Since(time.Unix(0, t.lastNew.Load())) < 5*time.Second
	cutoff := time.Now().UnixNano()
	tcancel()
	time.Sleep(500 * time.Millisecond)
	res.RelayPeakRSSMB = mb(p.peakRSS())
	settings := p.settingsJSON()
	if !p.running() {
		res.Error = fmt.Sprintf("relay exited (%v): %s", p.waitErr, p.stderr.lastLines(10))
	}
	_ = p.stop(15 * time.Second)
	cons.close()
	if e := genErr.Load(); e != nil && res.Error == "" {
		res.Error = "generator: " + e.(string)
	}
	if windowFrom < 0 {
		windowFrom = windowTo
	}
	var committedInWindow int64
	for i := windowFrom; i < windowTo; i++ {
		if t.commit[i].Load() != 0 {
			committedInWindow++
		}
	}
	win := h.cfg.Duration.Seconds()
	res.AchievedRate = r1(float64(committedInWindow) / win)
	res.GeneratorBehind = behind || res.AchievedRate < 0.97*float64(rate)
	res.Events = committedInWindow
	hist, undelivered := t.latency(windowFrom, windowTo, cutoff)
	res.UndeliveredInWindow = undelivered
	ms := func(us int64) float64 { return r3(float64(us) / 1000) }
	res.P50, res.P90, res.P99, res.P999 = ms(hist.ValueAtQuantile(50)), ms(hist.ValueAtQuantile(90)), ms(hist.ValueAtQuantile(99)), ms(hist.ValueAtQuantile(99.9))
	res.Max = ms(hist.Max())
	res.Flat, res.LagSlope = lagFlat(lag, float64(rate))
	res.LagSlope = r1(res.LagSlope)
	if n := len(lag); n > 0 {
		k := min(10, max(n/2, 1))
		var a, b float64
		for i := range k {
			a += float64(lag[i])
			b += float64(lag[n-k+i])
		}
		res.LagStart, res.LagEnd = r1(a/float64(k)), r1(b/float64(k))
	}
	res.Lag = lag
	res.Duplicates, res.OrderViolations, res.Undecodable = t.dups.Load(), t.orderViol.Load(), t.bad.Load()
	if stillFlowing {
		res.UndeliveredAtCutoff = t.missing(0, windowTo)
	} else {
		res.Missing = t.missing(0, windowTo)
	}
	res.RelayCPUS = r1(cpuEnd - cpuStart)
	if m, ok := mcpu.between(windowStart.UnixNano(), genEnd.UnixNano()); ok {
		res.CPUUSPerEvent = usPerEvent(m, committedInWindow)
	}
	res.RelayCPUUSPerEvent = usPerEvent(cpuEnd-cpuStart, committedInWindow)
	res.RelayCPUPct = r1(100 * (cpuEnd - cpuStart) / genEnd.Sub(windowStart).Seconds())
	return res, settings
}

// ---- backlog (relaybox) ----

// backlog times relaybox's batch read query with BacklogSmall and then BacklogBig rows
// waiting, with relay-probe (the relay with an OnRead hook) as a subprocess.
func (h *harness) backlog(ctx context.Context, probeBin string) backlogResult {
	res := backlogResult{Note: fmt.Sprintf("claim_ms_* = p50 of the relay's batch read statement (internal/relaysql.ReadShard, LIMIT 1000; the keys keep their recorded names) run by the harness on one connection, "+
		"3 passes over the 64 shards after a warm-up pass, backlog in place and no relay running; relay_claim_* = the same statement as the running relay "+
		"timed it (relay.Hooks.OnRead in relay-probe: includes waiting for a pool connection), first %d non-empty claims after start (fewer if the "+
		"backlog drains first); rows filled by INSERT ... SELECT generate_series with the writer's column layout and one constant valid %d-byte Avro "+
		"payload, then VACUUM ANALYZE", h.cfg.BacklogBatches, h.cfg.BacklogPad)}
	sizes := []int{h.cfg.BacklogSmall, h.cfg.BacklogBig}
	if h.cfg.BacklogMid > 0 { // a middle point shows whether relay memory has levelled off
		sizes = []int{h.cfg.BacklogSmall, h.cfg.BacklogMid, h.cfg.BacklogBig}
	}
	for _, size := range sizes {
		m := h.backlogOne(ctx, probeBin, int64(size))
		if m.Error != "" {
			res.Errors = append(res.Errors, fmt.Sprintf("%d rows: %s", size, m.Error))
		}
		res.Sizes = append(res.Sizes, m)
	}
	if len(res.Sizes) == len(sizes) && res.Sizes[0].QueryP50MS > 0 {
		res.ClaimMS10k = ptr(res.Sizes[0].QueryP50MS)
	}
	if len(res.Sizes) == len(sizes) && res.Sizes[len(sizes)-1].QueryP50MS > 0 {
		res.ClaimMS5M = ptr(res.Sizes[len(sizes)-1].QueryP50MS)
	}
	if res.ClaimMS10k != nil && res.ClaimMS5M != nil && *res.ClaimMS10k > 0 {
		res.Ratio = ptr(r3(*res.ClaimMS5M / *res.ClaimMS10k))
	}
	if len(res.Sizes) == len(sizes) && res.Sizes[0].Query100P50MS > 0 && res.Sizes[len(sizes)-1].Query100P50MS > 0 {
		res.ClaimMS10kLimit100, res.ClaimMS5MLimit100 = ptr(res.Sizes[0].Query100P50MS), ptr(res.Sizes[len(sizes)-1].Query100P50MS)
		res.RatioLimit100 = ptr(r3(res.Sizes[len(sizes)-1].Query100P50MS / res.Sizes[0].Query100P50MS))
	}
	return res
}

func (h *harness) backlogOne(ctx context.Context, probeBin string, rows int64) backlogMeasure {
	m := backlogMeasure{Rows: rows}
	sys := &relayboxSystem{}
	inst, err := sys.setup(ctx, h, h.runID+"_b"+strconv.FormatInt(rows, 10))
	if err != nil {
		m.Error = err.Error()
		return m
	}
	defer inst.teardown(ctx)
	ri := inst.(*relayboxInstance)
	o := pgx.Identifier{ri.schema, "outbox"}.Sanitize()
	es := newEventSpace(h.cfg.Keys, h.cfg.BacklogPad)
	id := uuid.Must(uuid.NewV7())
	ev := es.event(0, id, time.Now())
	payload, _ := encodeEvent(&ev)
	fp := sha256sum(benchSchemaText)
	if _, err := h.pool.Exec(ctx, `INSERT INTO `+pgx.Identifier{ri.schema, "schemas"}.Sanitize()+` (fingerprint, schema) VALUES ($1, $2)`, fp, benchSchemaText); err != nil {
		m.Error = err.Error()
		return m
	}
	fillStart := time.Now()
	const chunk = 250000
	var wg sync.WaitGroup
	var fillErr atomic.Value
	sem := make(chan struct{}, 2)
	for from := int64(0); from < rows; from += chunk {
		to := min(from+chunk, rows)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := h.pool.Exec(ctx, `INSERT INTO `+o+` (event_id, topic, key, event_type, aggregate_type, subject, schema_fingerprint, payload)
				SELECT gen_random_uuid(), $1, 'key-' || (g % $2), 'BenchEvent', 'bench', $1 || '-value', $3, $4
				FROM generate_series($5::bigint, $6::bigint - 1) g`, ri.t, h.cfg.Keys, fp, payload, from, to)
			if err != nil {
				fillErr.CompareAndSwap(nil, err.Error())
			}
		}()
	}
	wg.Wait()
	if e := fillErr.Load(); e != nil {
		m.Error = "fill: " + e.(string)
		return m
	}
	h.exec(ctx, `VACUUM ANALYZE `+o)
	m.FillSeconds = r1(time.Since(fillStart).Seconds())
	var size int64
	_ = h.pool.QueryRow(ctx, `SELECT pg_total_relation_size($1::regclass)`, ri.schema+".outbox").Scan(&size)
	m.TableMB = mb(size)
	if err := h.readQuery(ctx, ri.schema, &m); err != nil {
		m.Error = "read query: " + err.Error()
		return m
	}
	h.logf("backlog: %d rows filled in %.1fs (%.0f MB); batch read p50 %.2f ms (%.0f rows); starting the relay", rows, m.FillSeconds, m.TableMB, m.QueryP50MS, m.QueryRows)

	type claim struct {
		rows int
		d    time.Duration
	}
	claims := make(chan claim, 1<<16)
	env := append(os.Environ(), "DATABASE_URL="+h.databaseURL, "KAFKA_BROKERS="+strings.Join(h.brokers, ","),
		"SCHEMA_REGISTRY_URL="+h.registryURL, "RELAYBOX_SCHEMA="+ri.schema)
	p, err := startProc("relay-probe", []string{probeBin}, env, "", h.logPath("relay-probe-"+ri.schema), func(line string) {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == "READ" {
			r, _ := strconv.Atoi(f[2])
			ns, _ := strconv.ParseInt(f[3], 10, 64)
			if r > 0 {
				select {
				case claims <- claim{r, time.Duration(ns)}:
				default:
				}
			}
		}
	})
	if err != nil {
		m.Error = err.Error()
		return m
	}
	defer p.stop(15 * time.Second)
	select {
	case <-p.ready:
		m.RSSReadyMB = mb(vmRSS(p.cmd.Process.Pid))
	case <-p.exited:
		m.Error = "relay-probe exited: " + p.stderr.lastLines(10)
		return m
	case <-time.After(60 * time.Second):
	}
	var got []claim
	timeout := time.After(3 * time.Minute)
	idle := time.NewTimer(5 * time.Second)
collect:
	for len(got) < h.cfg.BacklogBatches {
		select {
		case c := <-claims:
			got = append(got, c)
			idle.Reset(5 * time.Second)
		case <-idle.C: // the backlog drained
			break collect
		case <-timeout:
			break collect
		case <-p.exited:
			m.Error = "relay-probe exited: " + p.stderr.lastLines(10)
			break collect
		}
	}
	m.RSSPeakMB = mb(p.peakRSS())
	_ = p.stop(15 * time.Second)
	if len(got) == 0 {
		if m.Error == "" {
			m.Error = "no claim observed"
		}
		return m
	}
	ds := make([]float64, len(got))
	var sum, rowsSum float64
	for i, c := range got {
		ds[i] = float64(c.d) / 1e6
		sum += ds[i]
		rowsSum += float64(c.rows)
	}
	slices.Sort(ds)
	q := func(p float64) float64 { return ds[min(int(p*float64(len(ds))), len(ds)-1)] }
	m.Claims = len(got)
	m.RowsPerClaim = r1(rowsSum / float64(len(got)))
	m.ClaimP50MS, m.ClaimP99MS, m.ClaimMeanMS = r3(q(0.5)), r3(q(0.99)), r3(sum/float64(len(got)))
	m.ClaimUSPerRow = r3(q(0.5) * 1000 / m.RowsPerClaim)
	return m
}

func (h *harness) readQuery(ctx context.Context, schema string, m *backlogMeasure) error {
	p50, p99, rows, err := h.timeReads(ctx, schema, h.cfg.PGBatch)
	if err != nil {
		return err
	}
	m.QueryP50MS, m.QueryP99MS, m.QueryRows = p50, p99, rows
	if m.QueryRows > 0 {
		m.QueryUSPerRow = r3(m.QueryP50MS * 1000 / m.QueryRows)
	}
	m.Query100P50MS, _, _, err = h.timeReads(ctx, schema, 100)
	return err
}

func (h *harness) timeReads(ctx context.Context, schema string, limit int) (p50, p99, rowsMean float64, err error) {
	conn, err := h.pool.Acquire(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	defer conn.Release()
	q := relaysql.ReadShard(schema)
	var ds []float64
	var rowsSum float64
	for pass := range 4 {
		for shard := range 64 {
			start := time.Now()
			rows, err := conn.Query(ctx, q, shard, limit)
			if err != nil {
				return 0, 0, 0, err
			}
			n := 0
			for rows.Next() {
				_ = rows.RawValues()
				n++
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return 0, 0, 0, err
			}
			if pass > 0 {
				ds = append(ds, float64(time.Since(start))/1e6)
				rowsSum += float64(n)
			}
		}
	}
	slices.Sort(ds)
	qt := func(p float64) float64 { return ds[min(int(p*float64(len(ds))), len(ds)-1)] }
	return r3(qt(0.5)), r3(qt(0.99)), r1(rowsSum / float64(len(ds))), nil
}
