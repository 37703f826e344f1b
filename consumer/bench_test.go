package consumer_test

import (
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaybox/relaybox/consumer"
)

// BenchmarkConsumer measures consumer throughput on the real services: N events
// (RELAYBOX_BENCH_EVENTS, default 20000) over 200 keys on a 6-partition topic are
// produced once; each iteration consumes all of them with a fresh group, the handler
// inserting one row per event. events/s counts from the first event applied to the
// last (group join excluded).
//
//	go test -run '^$' -bench BenchmarkConsumer -benchtime 1x ./consumer/
func BenchmarkConsumer(b *testing.B) {
	events := 20000
	if s := os.Getenv("RELAYBOX_BENCH_EVENTS"); s != "" {
		events, _ = strconv.Atoi(s)
	}
	e := newEnv(b)
	topic := e.topic(b, 6)
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	recs := seqRecords(b, e, topic, keys, events/len(keys))
	for i := 0; i < len(recs); i += 5000 {
		produce(b, recs[i:min(i+5000, len(recs))]...)
	}
	total := int64(len(recs))

	for _, mode := range []struct {
		name         string
		batch, nodup bool
	}{{"batch", true, false}, {"batch-no-dedup", true, true}, {"per-record", false, false}, {"no-dedup", false, true}} {
		b.Run(mode.name, func(b *testing.B) {
			var busy time.Duration
			for b.Loop() {
				var done atomic.Int64
				var first, last atomic.Int64
				cfg := e.config(b, topic)
				cfg.BatchMode, cfg.DisableDedup = mode.batch, mode.nodup
				cfg.Hooks.OnProcessed = func(consumer.RecordEvent) {
					now := time.Now().UnixNano()
					first.CompareAndSwap(0, now)
					if done.Add(1) == total {
						last.Store(now)
					}
				}
				c := e.newConsumer(b, cfg)
				consumer.Handle(c, "Seq", e.applySeq("bench", nil))
				stop := run(b, c)
				waitFor(b, 120*time.Second, "all events applied", func() bool { return done.Load() >= total })
				stop()
				busy += time.Duration(last.Load() - first.Load())
			}
			b.ReportMetric(float64(total)*float64(b.N)/busy.Seconds(), "events/s")
		})
	}
}
