package main

import (
	"testing"
	"time"
)

func TestTrackerAccounting(t *testing.T) {
	es := eventSpace{keys: 3}
	tr := newTracker(es, 12)
	for i := range int64(9) { // events 0..8 committed: keys 0,1,2 with seq 0,1,2
		tr.markCommitted(i, 1000)
	}
	now := int64(5000)
	// key-0: seq 0, 1, 2 in order, then 1 again (a duplicate, not a violation).
	// key-1: seq 1 before seq 0 (one violation: 0 arrives after 1), seq 2 never (missing).
	// key-2: seq 0, 2 (1 missing), 2 again (duplicate).
	// one foreign key, one sequence past the capacity.
	for _, o := range []struct {
		key string
		seq int64
	}{
		{"key-0", 0}, {"key-1", 1}, {"key-2", 0}, {"key-0", 1}, {"key-1", 0}, {"key-2", 2},
		{"key-0", 2}, {"key-0", 1}, {"key-2", 2}, {"other", 0}, {"key-0", 99},
	} {
		tr.observe(o.key, o.seq, now)
		now += 1000
	}
	if got := tr.distinct.Load(); got != 7 {
		t.Errorf("distinct = %d, want 7", got)
	}
	if got := tr.dups.Load(); got != 2 {
		t.Errorf("duplicates = %d, want 2", got)
	}
	if got := tr.orderViol.Load(); got != 1 {
		t.Errorf("order violations = %d, want 1", got)
	}
	if got := tr.unknown.Load(); got != 2 {
		t.Errorf("unknown = %d, want 2", got)
	}
	if got := tr.missing(0, 9); got != 2 { // key-1 seq 2 (event 7), key-2 seq 1 (event 5)
		t.Errorf("missing = %d, want 2", got)
	}
	// The two events not received by the cutoff count with their age at the cutoff
	// (1 s): a relay that falls behind cannot leave its slowest events out.
	h, undelivered := tr.latency(0, 9, 1000+int64(time.Second))
	if h.TotalCount() != 9 || undelivered != 2 {
		t.Errorf("latency samples = %d, undelivered %d; want 9 and 2", h.TotalCount(), undelivered)
	}
	if h.Min() != 4 { // first receipt at 5000 ns, commit 1000 ns: 4 µs
		t.Errorf("min latency = %d µs, want 4", h.Min())
	}
	if h.ValueAtQuantile(99) < 999000 {
		t.Errorf("max latency = %d µs, p99 %d µs; want the undelivered events' 1 s", h.Max(), h.ValueAtQuantile(99))
	}
}

func TestTrackerGapThenLate(t *testing.T) {
	// A key whose seq 3 overtakes 1 and 2: both late arrivals are violations.
	tr := newTracker(eventSpace{keys: 1}, 4)
	for _, s := range []int64{0, 3, 1, 2} {
		tr.observe("key-0", s, 1)
	}
	if got := tr.orderViol.Load(); got != 2 {
		t.Fatalf("order violations = %d, want 2", got)
	}
}

func TestDecodeKeySeqReadsWhatTheFullDecoderReads(t *testing.T) {
	es := newEventSpace(10000, 1024)
	for _, i := range []int64{0, 9999, 123457, 1 << 40} {
		ev := es.event(i, [16]byte{1}, timeUnix(42))
		bare, err := encodeEvent(&ev)
		if err != nil {
			t.Fatal(err)
		}
		for name, v := range map[string][]byte{"bare": bare, "framed": append([]byte{0, 0, 0, 0, 7}, bare...)} {
			key, seq, err := decodeKeySeq(v)
			if err != nil {
				t.Fatalf("%d %s: %v", i, name, err)
			}
			if string(key) != ev.Key || seq != ev.Seq || es.indexBytes(key, seq) != i || es.index(ev.Key, ev.Seq) != i {
				t.Errorf("%d %s: key %q seq %d index %d", i, name, key, seq, es.indexBytes(key, seq))
			}
		}
		for cut := range 45 { // truncated values fail, never panic
			if _, _, err := decodeKeySeq(bare[:cut]); err == nil && cut < 40 {
				t.Errorf("%d: value cut at %d bytes decoded", i, cut)
			}
		}
	}
	if es.indexBytes([]byte("key-x1"), 1) != -1 || es.indexBytes([]byte("nope-1"), 1) != -1 || es.indexBytes([]byte("key-10000"), 0) != -1 {
		t.Error("indexBytes accepted a key that is not one of ours")
	}
}

func TestDecodeValueFramedAndBare(t *testing.T) {
	es := newEventSpace(10000, 1024)
	ev := es.event(123457, [16]byte{1}, timeUnix(42))
	bare, err := encodeEvent(&ev)
	if err != nil {
		t.Fatal(err)
	}
	if len(bare) < 1000 || len(bare) > 1050 {
		t.Errorf("encoded size %d, want about 1 KiB", len(bare))
	}
	framed := append([]byte{0, 0, 0, 0, 7}, bare...)
	for name, v := range map[string][]byte{"bare": bare, "framed": framed} {
		var got BenchEvent
		if err := decodeValue(v, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Key != "key-3457" || got.Seq != 12 || es.index(got.Key, got.Seq) != 123457 {
			t.Errorf("%s: key %q seq %d", name, got.Key, got.Seq)
		}
	}
}

func TestLagFlat(t *testing.T) {
	flatLag := make([]int64, 60)
	growing := make([]int64, 60)
	for i := range flatLag {
		flatLag[i] = 50 + int64(i%3)*10
		growing[i] = int64(i) * 200
	}
	if ok, _ := lagFlat(flatLag, 5000); !ok {
		t.Error("flat lag judged growing")
	}
	if ok, slope := lagFlat(growing, 5000); ok || slope < 150 {
		t.Errorf("growing lag judged flat (slope %.0f)", slope)
	}
}
