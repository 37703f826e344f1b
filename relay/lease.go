package relay

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/relaybox/relaybox/outbox"
)

type shardRun struct {
	shard    int
	gen      int64     // the lease generation this run drains under (its fence)
	prev     *shardRun // an earlier run of the same shard, halted and maybe still finishing its batch
	mu       sync.Mutex
	deadline time.Time // local lease deadline (monotonic)
	stop     chan struct{}
	done     chan struct{}
	wake     chan struct{}
	stopOnce sync.Once
	busy     sync.Mutex         // held while a batch drains this shard (its own or a group's)
	sparse   atomic.Bool        // its last batch was small: it may join another shard's batch
	news     atomic.Bool        // a NOTIFY named it and it has not drained since
	draining atomic.Bool        // a batch is draining it
	failing  atomic.Bool        // its drain is backing off after a failure (a wake waits)
	txn      *shardTxn          // exactly-once mode: the shard's transactional producer
	cancel   context.CancelFunc // cancels the batch draining it (set while one runs)

	stuckSince atomic.Int64 // unix nanos since its batches read rows and moved none (0: moving)
	batchSince atomic.Int64 // unix nanos the running batch started (0: none)
}

// setBatch records the cancel func of the batch that drains s (nil when done).
func (s *shardRun) setBatch(cancel context.CancelFunc) {
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
}

// lose stops s because its lease is gone: its drain stops and the batch draining it
// is cancelled (it produces nothing more and waits for Kafka no longer).
func (s *shardRun) lose() {
	s.halt()
	s.mu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Unlock()
}

// lease is one shard as the database says this replica holds it.
type lease struct {
	gen      int64
	deadline time.Time // local: the renew or claim's start + LeaseTTL - LeaseTTL/10
}

// poke wakes the shard's drain (a no-op if a wake is already pending).
func (s *shardRun) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// nudge wakes s to drain whatever it may have: a wake without news is ignored by a
// shard that keeps up (another batch took its news, see drainLoop).
func (s *shardRun) nudge() {
	s.news.Store(true)
	s.poke()
}

func (s *shardRun) leaseDeadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadline
}

func (s *shardRun) extend(d time.Time) {
	s.mu.Lock()
	if d.After(s.deadline) {
		s.deadline = d
	}
	s.mu.Unlock()
}

func (s *shardRun) halt() { s.stopOnce.Do(func() { close(s.stop) }) }

func (s *shardRun) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func interval(d time.Duration) string { return fmt.Sprintf("%d microseconds", d.Microseconds()) }

// heartbeat runs one round of the lease protocol (see lease_doc.go). With claim
// false (shutdown) it only renews what it holds and starts no drain.
func (r *Relay) heartbeat(ctx context.Context, claim bool) {
	ttl := r.cfg.LeaseTTL
	margin := ttl / 10
	t0 := time.Now()
	hctx, cancel := context.WithTimeout(ctx, r.cfg.HeartbeatInterval)
	defer cancel()
	host, _ := os.Hostname()
	if _, err := r.pool.Exec(hctx, r.sql.upsertReplica, r.cfg.ReplicaID, host, interval(ttl), r.storedMode(),
		r.txnOpenSince(), r.fenced.Load(), r.aborted.Load()); err != nil {
		r.fail(ErrorPostgres, fmt.Errorf("heartbeat: %w", err))
		return
	}
	held := map[int]lease{}
	// Each lease gets the deadline of the statement that renewed or claimed it: a claim
	// later in the round must not lengthen the leases renewed before it.
	collect := func(rows pgx.Rows, err error, at time.Time) error {
		if err != nil {
			return err
		}
		var shard int
		var gen int64
		_, err = pgx.ForEachRow(rows, []any{&shard, &gen}, func() error {
			held[shard] = lease{gen: gen, deadline: at.Add(ttl - margin)}
			return nil
		})
		return err
	}
	var err error
	if r.cfg.ExactlyOnce {
		// Under the claim lock: a renew that brings back an expired lease (a Postgres
		// restart longer than the lease) and a claim of the same group never interleave,
		// so a group stays whole (all renewed, or all claimed by the other replica).
		err = r.lockedLeases(hctx, func(tx pgx.Tx) error {
			rows, err := tx.Query(hctx, r.sql.renew, r.cfg.ReplicaID, interval(ttl))
			return collect(rows, err, t0)
		})
	} else {
		rows, qerr := r.pool.Query(hctx, r.sql.renew, r.cfg.ReplicaID, interval(ttl))
		err = collect(rows, qerr, t0)
	}
	if err != nil {
		r.fail(ErrorPostgres, fmt.Errorf("renewing leases: %w", err))
		return
	}
	r.ok(ErrorPostgres)
	r.testPoint("renewed")
	if !claim {
		r.apply(held, false)
		return
	}
	partial := r.dropPartialGroups(held)

	rows, err := r.pool.Query(hctx, r.sql.live)
	var live []string
	other := ""
	if err == nil {
		var id, mode string
		_, err = pgx.ForEachRow(rows, []any{&id, &mode}, func() error {
			live = append(live, id)
			if mode != r.storedMode() && id != r.cfg.ReplicaID {
				other = id
			}
			return nil
		})
	}
	if err != nil {
		r.fail(ErrorPostgres, fmt.Errorf("reading replicas: %w", err))
		r.apply(held, true)
		return
	}
	r.setMixed(other)
	target := fairShare(live, r.cfg.ReplicaID, outbox.Shards)
	if r.cfg.ExactlyOnce {
		target = fairShare(live, r.cfg.ReplicaID, outbox.Shards/ExactlyOnceGroupShards) * ExactlyOnceGroupShards
	}
	r.mu.Lock()
	n := 0 // held now: renewed, not being released
	for s := range held {
		if !r.releasing[s] {
			n++
		}
	}
	r.mu.Unlock()
	switch {
	case other != "":
		// A replica of the other mode is live: claim nothing (see Config.ExactlyOnce).
	case n < target:
		t1 := time.Now()
		before := len(held)
		var err error
		if r.cfg.ExactlyOnce {
			err = r.claimGroups(hctx, (target-n)/ExactlyOnceGroupShards, func(rows pgx.Rows, err error) error { return collect(rows, err, t1) })
			partial = append(partial, r.dropPartialGroups(held)...)
		} else {
			rows, qerr := r.pool.Query(hctx, r.sql.claim, r.cfg.ReplicaID, target-n, interval(ttl))
			err = collect(rows, qerr, t1)
		}
		if err != nil {
			r.fail(ErrorPostgres, fmt.Errorf("claiming shards: %w", err))
		} else if len(held) > before {
			r.log.Info("claimed shards", "shards", len(held)-before, "target", target, "replicas", len(live))
		}
	case n > target:
		r.releaseExcess(n - target)
	}
	r.apply(held, true)
	r.releasePartial(hctx, partial)
	r.checkDependencies(hctx)
	if rand.IntN(20) == 0 {
		_, _ = r.pool.Exec(hctx, r.sql.purgeReplicas)
	}
}

// fairShare is how many of units (64 shards, or 8 groups in exactly-once mode)
// replica me should hold among live.
func fairShare(live []string, me string, units int) int {
	i := slices.Index(live, me)
	if i < 0 {
		live = append(live, me)
		slices.Sort(live)
		i = slices.Index(live, me)
	}
	n := len(live)
	t := units / n
	if i < units%n {
		t++
	}
	return t
}

// apply makes the running drains match held: extends deadlines, stops the drains of
// shards no longer held (or held under another generation), and, when start is true,
// starts drains for newly held shards. A new drain of a shard whose previous drain is
// still finishing its batch waits for it: a shard is never drained twice at once.
func (r *Relay) apply(held map[int]lease, start bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := false
	for s, run := range r.shards {
		if l, ok := held[s]; ok && l.gen == run.gen {
			continue
		}
		if !r.releasing[s] {
			r.log.Warn("lease lost; stopping shard", "shard", s, "generation", run.gen)
			r.hookErr(ErrorLease, fmt.Errorf("lease on shard %d (generation %d) lost", s, run.gen))
			r.hookLease(s, run.gen, false)
		}
		run.lose()
		delete(r.shards, s)
		if !run.exited() {
			r.retired[s] = run
		}
		changed = true
	}
	for s, l := range held {
		if r.releasing[s] {
			continue
		}
		run := r.shards[s]
		if run != nil && run.exited() {
			delete(r.shards, s)
			run = nil
		}
		if run != nil {
			run.extend(l.deadline)
			continue
		}
		if !start {
			continue
		}
		run = &shardRun{shard: s, gen: l.gen, deadline: l.deadline, stop: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}, 1)}
		if prev := r.retired[s]; prev != nil {
			delete(r.retired, s)
			if !prev.exited() {
				run.prev = prev
			}
		}
		r.shards[s] = run
		changed = true
		r.hookLease(s, l.gen, true)
		r.drains.Add(1)
		go func() {
			defer r.drains.Done()
			r.drainLoop(run)
		}()
	}
	if changed && r.cfg.Hooks.OnShards != nil {
		r.cfg.Hooks.OnShards(ShardsEvent{Owned: r.ownedLocked()})
	}
}

func (r *Relay) ownedLocked() []int {
	out := make([]int, 0, len(r.shards))
	for s := range r.shards {
		if !r.releasing[s] {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// Owned returns the shards this replica currently drains.
func (r *Relay) Owned() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ownedLocked()
}

func (r *Relay) releaseExcess(n int) {
	r.mu.Lock()
	var cand []int
	for s := range r.shards {
		if !r.releasing[s] {
			cand = append(cand, s)
		}
	}
	slices.Sort(cand)
	slices.Reverse(cand)
	cand = cand[:min(n, len(cand))]
	if r.cfg.ExactlyOnce {
		// Whole groups: the highest held ones, every shard of each.
		var groups []int
		for _, s := range cand {
			if g := groupOf(s); !slices.Contains(groups, g) {
				groups = append(groups, g)
			}
		}
		groups = groups[:min(len(groups), max(1, n/ExactlyOnceGroupShards))]
		cand = cand[:0]
		for s := range r.shards {
			if !r.releasing[s] && slices.Contains(groups, groupOf(s)) {
				cand = append(cand, s)
			}
		}
	}
	runs := make([]*shardRun, 0, len(cand))
	for _, s := range cand {
		r.releasing[s] = true
		runs = append(runs, r.shards[s])
		r.shards[s].halt()
	}
	r.mu.Unlock()
	r.log.Info("releasing shards for rebalance", "shards", cand)
	r.drains.Add(1)
	go func() {
		defer r.drains.Done()
		for _, run := range runs {
			<-run.done // the batches in flight finish first (a group's leader's too)
		}
		for _, run := range runs {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := r.pool.Exec(ctx, r.sql.release, run.shard, r.cfg.ReplicaID, run.gen)
			cancel()
			r.mu.Lock()
			if r.shards[run.shard] == run {
				delete(r.shards, run.shard)
			}
			delete(r.releasing, run.shard)
			if r.cfg.Hooks.OnShards != nil {
				r.cfg.Hooks.OnShards(ShardsEvent{Owned: r.ownedLocked()})
			}
			r.mu.Unlock()
			if err != nil {
				r.log.Warn("releasing shard failed; it expires after the lease TTL", "shard", run.shard, "err", err)
			}
		}
	}()
}
