package consumer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// partition is the goroutine that processes one assigned partition, in offset
// order, and the queue the poll loop fills for it.
type partition struct {
	c     *Consumer
	kc    *kgo.Client
	topic string
	n     int32

	spanName string // of its records' spans: "process <topic>"

	// expectNew: the partition's last batch held no event processed_events already
	// had, so the next one records its events with a plain INSERT (batchFast). Only
	// its goroutine touches it; false on assignment, when redeliveries are likely.
	expectNew bool

	mu     sync.Mutex
	queue  []*kgo.Record
	paused bool
	wake   chan struct{} // cap 1: records were pushed

	stop     chan struct{} // closed by halt: finish the record in flight, then exit
	stopOnce sync.Once
	stopCtx  context.Context // cancelled by halt: aborts backoffs and dead-letter produces
	cancel   context.CancelFunc
	done     chan struct{}

	hwm atomic.Int64 // high watermark from the last fetch

	markMu    sync.Mutex
	mark      kgo.EpochOffset // next offset to consume: one past the last record done
	hasMark   bool
	committed kgo.EpochOffset
}

func newPartition(c *Consumer, kc *kgo.Client, topic string, n int32) *partition {
	ctx, cancel := context.WithCancel(context.Background())
	return &partition{
		c: c, kc: kc, topic: topic, n: n, spanName: "process " + topic,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		stopCtx: ctx, cancel: cancel,
		committed: kgo.EpochOffset{Epoch: -1, Offset: -1},
	}
}

// push appends fetched records; past max waiting, fetching the partition pauses.
func (p *partition) push(recs []*kgo.Record, max int) {
	p.mu.Lock()
	p.queue = append(p.queue, recs...)
	if len(p.queue) >= max && !p.paused {
		p.paused = true
		p.kc.PauseFetchPartitions(map[string][]int32{p.topic: {p.n}})
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take removes up to n records from the head of the queue, resuming fetching once
// the queue is below half its bound.
func (p *partition) take(n int) []*kgo.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := min(n, len(p.queue))
	out := make([]*kgo.Record, k)
	copy(out, p.queue)
	clear(p.queue[:k])
	p.queue = p.queue[k:]
	if len(p.queue) == 0 {
		p.queue = nil
	}
	if p.paused && len(p.queue) < p.c.cfg.MaxBufferedPerPartition/2 {
		p.paused = false
		p.kc.ResumeFetchPartitions(map[string][]int32{p.topic: {p.n}})
	}
	return out
}

func (p *partition) halt() {
	p.stopOnce.Do(func() {
		close(p.stop)
		p.cancel()
	})
}

func (p *partition) stopped() bool {
	select {
	case <-p.stop:
		return true
	default:
		return false
	}
}

// sleep waits d unless the partition is stopped first; it reports whether it slept.
func (p *partition) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.stop:
		return false
	case <-t.C:
		return true
	}
}

// markDone marks rec processed (applied, duplicate, skipped or dead-lettered): the
// committed offset may move past it.
func (p *partition) markDone(rec *kgo.Record) {
	p.markMu.Lock()
	p.mark = kgo.EpochOffset{Epoch: rec.LeaderEpoch, Offset: rec.Offset + 1}
	p.hasMark = true
	p.markMu.Unlock()
	if h := p.c.cfg.Hooks.OnLag; h != nil {
		h(LagEvent{Topic: p.topic, Partition: p.n, Lag: max(0, p.hwm.Load()-(rec.Offset+1))})
	}
}

func (p *partition) uncommitted() (kgo.EpochOffset, bool) {
	p.markMu.Lock()
	defer p.markMu.Unlock()
	return p.mark, p.hasMark && p.mark != p.committed
}

func (p *partition) setCommitted(eo kgo.EpochOffset) {
	p.markMu.Lock()
	p.committed = eo
	p.markMu.Unlock()
}

func (p *partition) run() {
	defer close(p.done)
	defer p.cancel()
	for {
		var recs []*kgo.Record
		for len(recs) == 0 {
			if p.stopped() {
				return
			}
			if recs = p.take(p.c.cfg.MaxBatch); len(recs) > 0 {
				break
			}
			select {
			case <-p.stop:
				return
			case <-p.wake:
			}
		}
		if p.c.cfg.BatchMode {
			if h := p.c.cfg.Hooks.OnBatch; h != nil {
				h(BatchEvent{Topic: p.topic, Partition: p.n, Records: len(recs)})
			}
			if !p.runBatch(recs) {
				return
			}
			continue
		}
		for _, rec := range recs {
			if p.stopped() {
				return
			}
			it, ok := p.prepare(rec)
			if !ok || !p.processOne(it) {
				return
			}
			p.markDone(rec)
		}
	}
}
