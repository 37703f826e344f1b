package main

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseChildLine_ReadsTheThreeReportsAndNothingElse(t *testing.T) {
	for _, c := range []struct {
		line string
		want childLine
		ok   bool
	}{
		{"FIRST 1700000000000000000", childLine{kind: "FIRST", first: 1700000000000000000}, true},
		{"PROGRESS 120 3", childLine{kind: "PROGRESS", applied: 120, duplicates: 3}, true},
		{"DONE 200000 0 10 20", childLine{kind: "DONE", applied: 200000, first: 10, last: 20}, true},
		{"DONE 1 2 3", childLine{}, false},           // a field short
		{"PROGRESS 1 x", childLine{}, false},         // not a number
		{"level=WARN msg=hello", childLine{}, false}, // a log line
		{"", childLine{}, false},
	} {
		got, ok := parseChildLine(c.line)
		if ok != c.ok || got != c.want {
			t.Errorf("parseChildLine(%q) = %+v, %v; want %+v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
}

func TestRSSFlat_JudgesGrowthAndTheBacklogHeld(t *testing.T) {
	series := func(mbs ...float64) []rssSample {
		out := make([]rssSample, len(mbs))
		for i, v := range mbs {
			out[i] = rssSample{Done: int64(i) * 1000 / int64(len(mbs)), MB: v}
		}
		return out
	}
	for _, c := range []struct {
		name    string
		samples []rssSample
		backlog float64
		atN     float64 // the peak over fewer events
		flat    bool
		why     string
	}{
		{"level", series(80, 100, 110, 105, 108, 112, 109, 111), 1000, 0, true, ""},
		{"growing", series(80, 90, 100, 110, 140, 170, 200, 230), 1000, 0, false, "more than 1.2"},
		{"holds the backlog", series(600, 620, 610, 615), 1000, 100, false, "half the backlog"},
		{"small backlog, as over fewer events", series(100, 110, 105, 108), 100, 90, true, ""},
		{"small backlog, above fewer events'", series(150, 160, 155, 158), 100, 90, false, "1.5 ×"},
		{"one half only", series(100, 100)[:1], 1000, 0, false, "too few samples"},
	} {
		_, _, flat, why := rssFlat(c.samples, 1000, c.backlog, c.atN)
		if flat != c.flat || (c.why != "" && !strings.Contains(why, c.why)) {
			t.Errorf("%s: flat %v (%s), want %v (%q)", c.name, flat, why, c.flat, c.why)
		}
	}
}

func TestSummarize_RatiosOnlyFromCompleteRuns(t *testing.T) {
	run := func(v string, eps float64, applied, dups, rows int64) *cRun {
		return &cRun{Variant: v, Events: 1000, Applied: applied, Duplicates: dups, EffectRows: rows, DistinctEffects: rows, EPS: eps}
	}
	res := &consumeResult{Targets: map[string]target{}, Runs: map[string]*cRun{
		variantLimit:       run(variantLimit, 40000, 1000, 0, 1000),
		variantBatch:       run(variantBatch, 25000, 1000, 0, 1000),
		variantBatchNoDup:  run(variantBatchNoDup, 27500, 1000, 0, 1000),
		"redelivery":       run("redelivery", 60000, 0, 1000, 1000),
		variantSingle:      run(variantSingle, 3000, 1000, 0, 1000),
		variantHandwritten: run(variantHandwritten, 2000, 999, 0, 999), // lost an event: no figure
	}}
	res.summarize(consumeSettings{N: 1000})
	if res.HandwrittenEPS != nil {
		t.Errorf("handwritten_eps %v from a run that applied 999 of 1000 events", *res.HandwrittenEPS)
	}
	if _, ok := res.Targets["single_vs_handwritten"]; ok {
		t.Error("single_vs_handwritten judged against an incomplete run")
	}
	want := map[string]target{
		"batch_vs_limit":      {Want: "≥ 0.5", Value: 0.625, Met: true},
		"dedup_overhead":      {Want: "≤ 1.2", Value: 1.1, Met: true},
		"redelivery_vs_batch": {Want: "≥ 2", Value: 2.4, Met: true},
	}
	for k, w := range want {
		if got := res.Targets[k]; got != w {
			t.Errorf("target %s = %+v, want %+v", k, got, w)
		}
	}

	// A redelivery pass that applied anything again is not a redelivery figure.
	res.Runs["redelivery"] = run("redelivery", 60000, 5, 995, 1000)
	res.Targets = map[string]target{}
	res.summarize(consumeSettings{N: 1000})
	if res.RedeliveryEPS != nil {
		t.Errorf("redelivery_eps %v from a pass that applied 5 events again", *res.RedeliveryEPS)
	}
	// A first pass that met duplicates (a dirty table) is not a figure either.
	res.Runs[variantBatch] = run(variantBatch, 25000, 990, 10, 1000)
	res.summarize(consumeSettings{N: 1000})
	if res.BatchEPS != nil {
		t.Errorf("batch_eps %v from a pass with duplicates", *res.BatchEPS)
	}
}

func TestPickMedians_TheMiddleRunIncompleteCountingZero(t *testing.T) {
	run := func(eps float64, rows int64) *cRun {
		return &cRun{Events: 10, Applied: rows, EffectRows: rows, DistinctEffects: rows, EPS: eps}
	}
	res := &consumeResult{Runs: map[string]*cRun{}}
	// The fastest run lost an event: it counts as 0, so the median is 200, not 300.
	res.pickMedians(map[string][]*cRun{variantBatch: {run(900, 9), run(200, 10), run(300, 10)}}, 3)
	if got := res.Runs[variantBatch].EPS; got != 200 {
		t.Errorf("median run %v ev/s, want 200", got)
	}
	if got := fmt.Sprint(res.EPSRuns[variantBatch]); got != "[0 200 300]" {
		t.Errorf("eps_runs %s, want [0 200 300]", got)
	}
}

func TestConsumeSettingsFromEnv(t *testing.T) {
	cfg := config{N: 5000}
	s, err := consumeSettingsFromEnv(cfg)
	if err != nil || s.N != 5000 || s.RSSN != 1000000 || s.Conns != 12 || len(s.Variants) != len(allConsumeVariants) {
		t.Fatalf("defaults: %+v, %v", s, err)
	}
	t.Setenv("BENCH_CONSUME_RSS_N", "0")
	t.Setenv("BENCH_CONSUME_VARIANTS", "batch,redelivery,rss")
	if s, err = consumeSettingsFromEnv(cfg); err != nil || strings.Join(s.Variants, ",") != "batch,redelivery" {
		t.Errorf("RSS_N=0 must drop the rss run: %+v, %v", s, err)
	}
	for env, val := range map[string]string{"BENCH_CONSUME_VARIANTS": "redelivery", "BENCH_CONSUME_N": "many", "BENCH_CONSUME_CONNS": "0", "BENCH_CONSUME_REPEAT": "0"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, val)
			if _, err := consumeSettingsFromEnv(cfg); err == nil {
				t.Errorf("%s=%s accepted", env, val)
			}
		})
	}
	t.Setenv("BENCH_CONSUME_VARIANTS", "batch,bogus")
	if _, err := consumeSettingsFromEnv(cfg); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown variant: %v", err)
	}
}

func TestThin_KeepsTheEnds(t *testing.T) {
	s := make([]rssSample, 100)
	for i := range s {
		s[i].Done = int64(i)
	}
	got := thin(s, 10)
	if len(got) != 10 || got[0].Done != 0 || got[9].Done != 99 {
		t.Errorf("thin: %d samples, first %d, last %d", len(got), got[0].Done, got[len(got)-1].Done)
	}
	if len(thin(s[:5], 10)) != 5 {
		t.Error("thin must keep a short series as it is")
	}
}
