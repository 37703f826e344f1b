package relay

import (
	"context"
	"errors"
	"sync"
	"time"
)

type batchResult struct {
	read, published, parked, retry int
	stages                         BatchStages
}

// drainLoop drains one shard while this replica holds it: a batch, then another at
// once if the last one was full, else a wait for a NOTIFY or PollInterval.
func (r *Relay) drainLoop(s *shardRun) {
	defer close(s.done)
	if s.prev != nil { // the lease was lost and won back: the old drain finishes first
		select {
		case <-s.prev.done:
		case <-s.stop:
			return
		}
		s.prev = nil
	}
	if r.cfg.ExactlyOnce {
		if !isLeader(s.shard) { // the group's leader drains it
			<-s.stop
			return
		}
		defer r.closeTxn(s)
		if !r.startTxn(s) {
			return
		}
	}
	poll := time.NewTimer(0)
	defer poll.Stop()
	failures := 0
	lastRead := r.cfg.BatchSize
	why := readFirst
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		// A shard with a backlog (its last batch had at least a quarter of BatchSize
		// rows; at start every shard counts as one) takes one of MaxInFlightBatches
		// slots first: that bounds the relay's memory however large the backlog. A shard
		// that keeps up takes one of keepUpBatches slots of its own (behind the
		// backlog's slots, small batches once waited: latency at steady rates).
		slot := lastRead >= max(1, r.cfg.BatchSize/4)
		keepsUp := !slot && !r.cfg.ExactlyOnce && s.sparse.Load()
		waitStart := time.Now()
		var slots chan struct{}
		switch {
		case slot:
			slots = r.inflight
		case keepsUp:
			slots = r.keepUp
		}
		if slots != nil {
			select {
			case slots <- struct{}{}:
			case <-s.stop:
				return
			}
		}
		release := func() {
			if slots != nil {
				<-slots
				slots = nil
			}
		}
		s.busy.Lock()
		s.draining.Store(true)
		ownNews := s.news.Swap(false)
		deadline := s.leaseDeadline()
		if !time.Now().Before(deadline) {
			s.draining.Store(false)
			s.busy.Unlock()
			release()
			r.log.Warn("lease not renewed in time; shard drain stops until it is", "shard", s.shard)
			return
		}
		group := []*shardRun{s}
		switch {
		case r.cfg.ExactlyOnce: // the whole group, always: it has one producer
			if group = r.group(s); group == nil {
				s.draining.Store(false)
				s.busy.Unlock()
				release()
				r.log.Warn("exactly-once: the shard's group is not held whole; its drain stops", "shard", s.shard)
				return
			}
			for _, g := range group[1:] {
				g.busy.Lock()
				g.draining.Store(true)
			}
		case keepsUp:
			group = r.steal(s, group)
			if len(group) == 1 && !ownNews && (why == readWoken || why == readNews) {
				// Woken for news that a batch which took this shard along has
				// drained meanwhile (whoever clears a shard's news reads it after),
				// and no other shard has any: nothing to read. At 5,000 events/s
				// such reads were 40 % of all, 94 % of them empty.
				s.draining.Store(false)
				s.busy.Unlock()
				release()
				// Polled PollInterval after its last wake at the latest (after a batch
				// that took news along, nothing set the timer since that batch ran).
				poll.Reset(r.cfg.PollInterval)
				var ok bool
				if why, ok = r.await(s, poll, false); !ok {
					return
				}
				continue
			}
		}
		if !poll.Stop() { // a batch runs: the next wait sets its own
			select {
			case <-poll.C:
			default:
			}
		}
		shards := make([]int, len(group))
		gens := make([]int64, len(group))
		for i, g := range group {
			shards[i], gens[i] = g.shard, g.gen
		}
		deadline = minTime(deadline, groupDeadline(group))
		// The batch is bounded by its lease: past the deadline it produces nothing and
		// waits for Kafka no longer (its outcome writes are fenced in any case). An
		// exactly-once batch follows its leases as heartbeats renew them: a producer's
		// start (its id, the commit log, the hanging-transaction check) and a transaction
		// take several round trips, which on a slow network outlast the deadline known
		// when the batch began (Kafka fences a replica that lost its group in any case).
		var ctx context.Context
		var cancel context.CancelFunc
		if r.cfg.ExactlyOnce {
			ctx, cancel = leaseContext(group)
		} else {
			ctx, cancel = context.WithDeadline(context.Background(), deadline)
		}
		start := time.Now()
		for _, g := range group {
			g.setBatch(cancel) // a lost lease cancels the batch (shardRun.lose)
			g.batchSince.Store(start.UnixNano())
		}
		var res batchResult
		var err error
		verifying := false
		if r.cfg.ExactlyOnce {
			res, err = r.drainTxn(ctx, s, shards, gens)
			if errors.Is(err, errCommitToVerify) { // the next batch starts at once, with a new producer
				verifying, err = true, nil
			}
		} else {
			res, err = r.drainOnce(ctx, shards, gens)
		}
		res.stages.SlotWait = start.Sub(waitStart)
		for _, g := range group {
			g.setBatch(nil)
			g.batchSince.Store(0)
			g.draining.Store(false)
		}
		cancel()
		// Readiness: rows read and none moved (published or parked) is no progress.
		if res.read > 0 && res.published+res.parked == 0 && !verifying {
			s.stuckSince.CompareAndSwap(0, start.UnixNano())
		} else if err == nil || res.published+res.parked > 0 {
			s.stuckSince.Store(0)
		}
		for _, g := range group[1:] {
			if res.read >= r.cfg.BatchSize && !r.cfg.ExactlyOnce {
				// The LIMIT cut the batch: the shards ordered last may have rows left. They
				// drain alone next (steal skips them) rather than be taken along again and
				// cut again behind the others' new rows.
				g.sparse.Store(false)
			}
			g.busy.Unlock()
			if err != nil || res.read >= r.cfg.BatchSize || res.retry > 0 {
				g.nudge() // rows may be left (the LIMIT cut it, or a failure): its own drain looks
			}
		}
		s.busy.Unlock()
		stole := !slot // a batch that could take other shards along looks for their news
		release()
		if errors.Is(err, errFenced) {
			r.haltLost(shards, gens)
		}
		lastRead = res.read
		s.sparse.Store(lastRead < max(1, r.cfg.BatchSize/4))
		if r.cfg.Hooks.OnBatch != nil && res.read > 0 {
			r.cfg.Hooks.OnBatch(BatchEvent{Shard: s.shard, Read: res.read, Published: res.published, Duration: time.Since(start), Stages: res.stages})
		}
		s.failing.Store(err != nil || res.retry > 0)
		var wait time.Duration
		switch {
		case verifying:
			failures = 0
			why = readMore
			continue
		case err != nil && r.cfg.ExactlyOnce:
			failures++
			wait = r.txnBackoff(failures)
		case err != nil:
			failures++
			wait = r.backoff(failures)
			r.log.Debug("batch failed; backing off", "shard", s.shard, "err", err, "backoff", wait)
		case res.read >= r.cfg.BatchSize && res.retry == 0:
			failures = 0
			why = readMore
			continue // more waiting
		case res.retry > 0:
			failures++
			wait = r.backoff(failures)
		case stole && !r.cfg.ExactlyOnce && r.newsWaiting():
			// NOTIFYs named shards while this batch ran: the next batch takes them
			// along now (their own drains were not woken for it, see wake).
			failures = 0
			why = readNews
			continue
		default:
			failures = 0
			wait = r.cfg.PollInterval
		}
		poll.Reset(wait)
		var ok bool
		if why, ok = r.await(s, poll, err != nil || res.retry > 0); !ok {
			return
		}
	}
}

// keepUpBatches bounds the batches of shards that keep up running at once. A drain
// that finds them all running waits for one to end, and meanwhile the ending ones
// take its news along (steal, newsWaiting): at high rates the batches grow instead
// of multiplying. Without the bound, 20,000 events/s ran ~1,500 reads a second of
// ~13 rows each, machine-wide CPU saturated.
const keepUpBatches = 4

// Why a shard's drain reads (drainLoop).
const (
	readFirst = iota // its first batch
	readMore         // its last batch was cut by the LIMIT, or a commit to verify
	readWoken        // a NOTIFY named it, or another batch left it work
	readNews         // its batch took other shards along and more news came meanwhile
	readPoll         // PollInterval passed, or a failure's backoff
)

// await waits for s's next batch: a wake, or poll (set by the caller, stopped when
// a batch runs). After a failure (backingOff) a wake does not cut the backoff
// short. It returns why the batch is to run, and false if s stopped.
func (r *Relay) await(s *shardRun, poll *time.Timer, backingOff bool) (int, bool) {
	for {
		select {
		case <-s.stop:
			return 0, false
		case <-s.wake:
			if backingOff {
				select {
				case <-s.stop:
					return 0, false
				case <-poll.C:
					return readPoll, true
				}
			}
			if !r.cfg.ExactlyOnce && s.sparse.Load() && !s.news.Load() {
				// Woken for news another shard's batch has drained since: nothing to do
				// (reading anyway made a tiny batch per wake at steady rates).
				continue
			}
			return readWoken, true
		case <-poll.C:
			return readPoll, true
		}
	}
}

// steal adds to group, for one batch, the other shards that keep up (their last
// batch was small), have news (a NOTIFY named them since they last drained) and are
// idle (their busy lock is free). Their own drains wait on that lock
// meanwhile, so a shard is never in two batches at once; a commit that touched many
// shards then costs one read, one produce round and one delete, not one per shard.
func (r *Relay) steal(s *shardRun, group []*shardRun) []*shardRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, o := range r.shards {
		if o == s || !o.sparse.Load() {
			continue
		}
		select {
		case <-o.stop:
			continue
		default:
		}
		if !o.news.Load() {
			continue
		}
		if !o.busy.TryLock() {
			// A batch drains it: that batch looks for news when it ends, and its own
			// drain is woken too (at high rates the two drain in parallel; the one that
			// comes second finds no news and does nothing).
			o.poke()
			continue
		}
		if !o.news.Swap(false) {
			o.busy.Unlock()
			continue
		}
		if !now.Before(o.leaseDeadline()) {
			o.busy.Unlock()
			o.nudge()
			continue
		}
		o.draining.Store(true)
		group = append(group, o)
	}
	return group
}

// newsWaiting reports whether a shard that keeps up and no batch drains has news.
func (r *Relay) newsWaiting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, o := range r.shards {
		// (A lapsed lease's shard is left to its own drain, which stops: steal does
		// not take it, and counting it would run batches without it in a loop.)
		if o.sparse.Load() && o.news.Load() && !o.draining.Load() && now.Before(o.leaseDeadline()) {
			return true
		}
	}
	return false
}

// leaseContext returns a context that ends when the first of group's leases ends:
// at the earliest of their local deadlines, followed as heartbeats extend them.
func leaseContext(group []*shardRun) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var timer *time.Timer
	var check func()
	check = func() {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if wait := time.Until(groupDeadline(group)); wait > 0 {
			timer = time.AfterFunc(wait, check)
			return
		}
		cancel()
	}
	check()
	return ctx, func() {
		cancel()
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
	}
}

// groupDeadline is the earliest local lease deadline of group's shards.
func groupDeadline(group []*shardRun) time.Time {
	d := group[0].leaseDeadline()
	for _, g := range group[1:] {
		d = minTime(d, g.leaseDeadline())
	}
	return d
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
