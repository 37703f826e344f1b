package relay_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

func benchN() int {
	if n, err := strconv.Atoi(os.Getenv("RELAYBOX_BENCH_N")); err == nil && n > 0 {
		return n
	}
	return 200000
}

// BenchmarkDrain measures, in one run, the relay draining N pre-filled 1 KiB events
// (10k keys) and raw franz-go producing the same records from memory with the same
// producer settings (idempotent, acks=all): the broker's limit here. Compare the
// events/s of the two sub-benchmarks; target relay ≥ 50% of raw.
//
//	go test ./relay -run '^$' -bench Drain -benchtime 1x
func BenchmarkDrain(b *testing.B) {
	n := benchN()
	pool := testenv.PoolWith(b, func(c *pgxpool.Config) { c.MaxConns = 24 })
	schema := testenv.Schema(b, pool)
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema, DisableNotify: true})
	ctx := context.Background()
	pad := strings.Repeat("x", 1000)
	makeEvents := func(topic string, from, to int) []outbox.Event {
		evs := make([]outbox.Event, 0, to-from)
		for i := from; i < to; i++ {
			key := "key-" + strconv.Itoa(i%10000)
			evs = append(evs, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: int64(i / 10000), Pad: pad}})
		}
		return evs
	}
	fill := func(topic string) {
		var wg sync.WaitGroup
		chunks := make(chan int, 64)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for from := range chunks {
					evs := makeEvents(topic, from, min(from+1000, n))
					if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return w.Write(ctx, tx, evs...) }); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		for from := 0; from < n; from += 1000 {
			chunks <- from
		}
		close(chunks)
		wg.Wait()
	}

	b.Run("relay", func(b *testing.B) {
		for b.Loop() {
			topic := testenv.Topic(b, 12)
			b.StopTimer()
			fill(topic)
			var published atomic.Int64
			done := make(chan struct{})
			var once sync.Once
			r, err := relay.New(pool, &relay.Config{Schema: schema, Brokers: testenv.Brokers(b), RegistryURL: testenv.RegistryURL(b),
				BatchSize: 2000, Logger: testenv.Logger(b),
				Hooks: relay.Hooks{OnBatch: func(e relay.BatchEvent) {
					p := e.Published
					if published.Add(int64(p)) >= int64(n) {
						once.Do(func() { close(done) })
					}
				}}})
			if err != nil {
				b.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			b.StartTimer()
			start := time.Now()
			go r.Run(rctx)
			select {
			case <-done:
			case <-time.After(10 * time.Minute):
				b.Fatalf("drained %d of %d in 10 min", published.Load(), n)
			}
			el := time.Since(start)
			b.StopTimer()
			cancel()
			b.ReportMetric(float64(n)/el.Seconds(), "events/s")
			b.StartTimer()
		}
	})

	b.Run("raw-franz-go", func(b *testing.B) {
		// One value per key, shared read-only by the records: the GC does not scan N
		// records inside the timed window (the relay holds at most its buffered ones).
		keys, vals := make([][]byte, 10000), make([][]byte, 10000)
		for k := range keys {
			keys[k], vals[k] = []byte("key-"+strconv.Itoa(k)), make([]byte, 5+1020)
		}
		hdrs := []kgo.RecordHeader{{Key: "relaybox.event_id", Value: []byte("01900000-0000-7000-8000-000000000000")}, {Key: "relaybox.event_type", Value: []byte("Seq")}}
		for b.Loop() {
			b.StopTimer()
			topic := testenv.Topic(b, 12)
			cl := testenv.Client(b, kgo.DefaultProduceTopic(topic), kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(2*time.Millisecond),
				kgo.MaxBufferedRecords(10000))
			// Warm every partition before the clock: leaders known, connections and the
			// producer id ready: inside the clock there is nothing but producing.
			warmed := map[int32]bool{}
			for i := 0; len(warmed) < 12; i++ {
				r := &kgo.Record{Key: []byte("warm-" + strconv.Itoa(i)), Value: vals[0]}
				if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
					b.Fatal(err)
				}
				warmed[r.Partition] = true
			}
			b.StartTimer()
			start := time.Now()
			var wg sync.WaitGroup
			var failed atomic.Int64
			for i := range n {
				wg.Add(1)
				cl.Produce(ctx, &kgo.Record{Key: keys[i%10000], Value: vals[i%10000], Headers: hdrs}, func(_ *kgo.Record, err error) {
					if err != nil {
						failed.Add(1)
					}
					wg.Done()
				})
			}
			wg.Wait()
			el := time.Since(start)
			if failed.Load() > 0 {
				b.Fatalf("%d records failed", failed.Load())
			}
			b.ReportMetric(float64(n)/el.Seconds(), "events/s")
		}
	})
}
