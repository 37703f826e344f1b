package main

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// tracker is the measuring consumer's accounting. Observe is called from one
// goroutine (the consumer's); committed times are stored by the generators, any
// goroutine; the counters are read at any time through atomics.
type tracker struct {
	es        eventSpace
	commit    []atomic.Int64 // unix nanos after COMMIT returned, per event; 0: not (yet) committed
	recv      []int64        // unix nanos of the first receipt, per event; 0: not seen
	maxSeq    []int64        // highest sequence seen first per key; -1: none
	distinct  atomic.Int64
	dups      atomic.Int64
	orderViol atomic.Int64
	unknown   atomic.Int64 // records that are not one of the expected events
	bad       atomic.Int64 // records that do not decode
	firstRecv atomic.Int64
	lastNew   atomic.Int64 // unix nanos of the last first-receipt
	committed atomic.Int64 // events whose commit time is recorded
	// codecs counts the records received by the compression of their batch (Kafka's
	// attribute: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd): what the relay really used.
	codecs [5]atomic.Int64
}

var codecNames = [5]string{"none", "gzip", "snappy", "lz4", "zstd"}

// compression returns the records received per compression codec.
func (t *tracker) compression() map[string]int64 {
	m := map[string]int64{}
	for i := range t.codecs {
		if n := t.codecs[i].Load(); n > 0 {
			m[codecNames[i]] = n
		}
	}
	return m
}

func newTracker(es eventSpace, capacity int64) *tracker {
	t := &tracker{es: es, commit: make([]atomic.Int64, capacity), recv: make([]int64, capacity), maxSeq: make([]int64, es.keys)}
	for i := range t.maxSeq {
		t.maxSeq[i] = -1
	}
	return t
}

// markCommitted records event i's commit time.
func (t *tracker) markCommitted(i int64, at int64) {
	t.commit[i].Store(at)
	t.committed.Add(1)
}

// observe accounts for one received event. A first receipt of (key, seq) below the
// highest sequence already seen for key is an order violation; a second receipt of an
// event is a duplicate (not a violation: redelivery after a crash repeats older events).
func (t *tracker) observe(key string, seq int64, now int64) {
	t.observeIndex(t.es.index(key, seq), seq, now)
}

// observeIndex is observe for event number i (-1: not one of ours).
func (t *tracker) observeIndex(i, seq int64, now int64) {
	if i < 0 || i >= int64(len(t.recv)) {
		t.unknown.Add(1)
		return
	}
	if t.recv[i] != 0 {
		t.dups.Add(1)
		return
	}
	t.recv[i] = now
	k := int(i % int64(t.es.keys))
	if seq < t.maxSeq[k] {
		t.orderViol.Add(1)
	} else {
		t.maxSeq[k] = seq
	}
	t.firstRecv.CompareAndSwap(0, now)
	t.lastNew.Store(now)
	t.distinct.Add(1)
}

// missing counts committed events in [from, to) never received.
func (t *tracker) missing(from, to int64) int64 {
	var n int64
	for i := from; i < to; i++ {
		if t.commit[i].Load() != 0 && t.recv[i] == 0 {
			n++
		}
	}
	return n
}

// latency returns the end-to-end latency histogram (receive − commit, microseconds) of
// the events in [from, to) that were committed. An event not received by cutoff (unix
// nanos) counts with its age at the cutoff, a lower bound of its latency, so a relay
// that falls behind cannot look fast by leaving its slowest events out; undelivered
// says how many. Negative differences (a relay faster than the COMMIT reply) count as 0.
func (t *tracker) latency(from, to, cutoff int64) (h *hdrhistogram.Histogram, undelivered int64) {
	h = hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3)
	for i := from; i < to; i++ {
		c := t.commit[i].Load()
		if c == 0 {
			continue
		}
		r := t.recv[i]
		if r == 0 {
			undelivered++
			r = cutoff
		}
		_ = h.RecordValue(min(max((r-c)/1000, 0), h.HighestTrackableValue()))
	}
	return h, undelivered
}

// consumer reads one topic from its start with franz-go (no group) and feeds a tracker.
type consumer struct {
	cl   *kgo.Client
	t    *tracker
	done chan struct{}
	once sync.Once
}

// With readCommitted it reads as a reader of an exactly-once topic must
// (read_committed: aborted records are not part of the topic).
func startConsumer(ctx context.Context, brokers []string, topic string, t *tracker, readCommitted bool) (*consumer, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(50 * time.Millisecond),
		kgo.FetchMaxBytes(64 << 20), kgo.FetchMaxPartitionBytes(8 << 20)}
	if readCommitted {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	c := &consumer{cl: cl, t: t, done: make(chan struct{})}
	go c.run(ctx)
	return c, nil
}

func (c *consumer) run(ctx context.Context) {
	defer close(c.done)
	for {
		fs := c.cl.PollFetches(ctx)
		if ctx.Err() != nil || fs.IsClientClosed() {
			return
		}
		now := time.Now().UnixNano()
		fs.EachRecord(func(r *kgo.Record) {
			if ct := r.Attrs.CompressionType(); int(ct) < len(c.t.codecs) {
				c.t.codecs[ct].Add(1)
			}
			key, seq, err := decodeKeySeq(r.Value)
			if err != nil {
				c.t.bad.Add(1)
				return
			}
			c.t.observeIndex(c.t.es.indexBytes(key, seq), seq, now)
		})
	}
}

func (c *consumer) close() {
	c.once.Do(func() { c.cl.Close() })
	<-c.done
}

// waitDistinct waits until the tracker saw n distinct events, ctx ends, or no new
// event arrived for idle (after at least one). It reports whether all arrived.
func waitDistinct(ctx context.Context, t *tracker, n int64, idle time.Duration) bool {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	lastCount, lastChange := int64(-1), time.Now()
	for {
		d := t.distinct.Load()
		if d >= n {
			return true
		}
		if d != lastCount {
			lastCount, lastChange = d, time.Now()
		} else if idle > 0 && time.Since(lastChange) > idle {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// lagFlat decides whether the lag (committed − received) stayed flat over a window
// sampled once a second: the mean of the last 10 samples must not exceed the mean of
// the first 10 by more than 100 ms worth of events at the offered rate (and 100
// events). It also returns the least-squares slope in events per second.
func lagFlat(samples []int64, rate float64) (flat bool, slope float64) {
	n := len(samples)
	if n < 2 {
		return true, 0
	}
	w := min(10, n/2)
	var first, last float64
	for i := range w {
		first += float64(samples[i])
		last += float64(samples[n-w+i])
	}
	first, last = first/float64(w), last/float64(w)
	var sx, sy, sxx, sxy float64
	for i, v := range samples {
		x, y := float64(i), float64(v)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	fn := float64(n)
	if d := fn*sxx - sx*sx; d != 0 {
		slope = (fn*sxy - sx*sy) / d
	}
	bound := math.Max(100, 0.1*rate)
	return last <= first+bound, slope
}
