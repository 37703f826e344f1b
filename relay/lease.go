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
	mu       sync.Mutex
	deadline time.Time // local lease deadline (monotonic)
	stop     chan struct{}
	done     chan struct{}
	wake     chan struct{}
	stopOnce sync.Once
	busy     sync.Mutex  // held while a batch drains this shard (its own or a group's)
	sparse   atomic.Bool // its last batch was small: it may join another shard's batch
	news     atomic.Bool // a NOTIFY named it and it has not drained since
	draining atomic.Bool // a batch is draining it
	failing  atomic.Bool // its drain is backing off after a failure (a wake waits)
}

// poke wakes the shard's drain (a no-op if a wake is already pending).
func (s *shardRun) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
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

// heartbeat runs one round of the lease protocol (see the package doc).
func (r *Relay) heartbeat(ctx context.Context) {
	ttl := r.cfg.LeaseTTL
	margin := ttl / 10
	t0 := time.Now()
	hctx, cancel := context.WithTimeout(ctx, r.cfg.HeartbeatInterval)
	defer cancel()
	host, _ := os.Hostname()
	if _, err := r.pool.Exec(hctx, r.sql.upsertReplica, r.cfg.ReplicaID, host, interval(ttl)); err != nil {
		r.fail("postgres", fmt.Errorf("heartbeat: %w", err))
		return
	}
	rows, err := r.pool.Query(hctx, r.sql.renew, r.cfg.ReplicaID, interval(ttl))
	var owned []int
	if err == nil {
		owned, err = pgx.CollectRows(rows, pgx.RowTo[int])
	}
	if err != nil {
		r.fail("postgres", fmt.Errorf("renewing leases: %w", err))
		return
	}
	r.ok("postgres")
	r.apply(owned, t0.Add(ttl-margin))

	rows, err = r.pool.Query(hctx, r.sql.live)
	var live []string
	if err == nil {
		live, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		r.fail("postgres", fmt.Errorf("reading replicas: %w", err))
		return
	}
	target := fairShare(live, r.cfg.ReplicaID)
	r.mu.Lock()
	held := 0
	for s := range r.shards {
		if !r.releasing[s] {
			held++
		}
	}
	r.mu.Unlock()
	switch {
	case held < target:
		t1 := time.Now()
		rows, err := r.pool.Query(hctx, r.sql.claim, r.cfg.ReplicaID, target-held, interval(ttl))
		var claimed []int
		if err == nil {
			claimed, err = pgx.CollectRows(rows, pgx.RowTo[int])
		}
		if err != nil {
			r.fail("postgres", fmt.Errorf("claiming shards: %w", err))
			return
		}
		if len(claimed) > 0 {
			r.log.Info("claimed shards", "shards", claimed, "target", target, "replicas", len(live))
			r.apply(append(owned, claimed...), t1.Add(ttl-margin))
		}
	case held > target:
		r.releaseExcess(held - target)
	}
	r.checkDependencies(hctx)
	if rand.IntN(20) == 0 {
		_, _ = r.pool.Exec(hctx, r.sql.purgeReplicas)
	}
}

// fairShare is how many of the 64 shards replica me should hold among live.
func fairShare(live []string, me string) int {
	i := slices.Index(live, me)
	if i < 0 {
		live = append(live, me)
		slices.Sort(live)
		i = slices.Index(live, me)
	}
	n := len(live)
	t := outbox.Shards / n
	if i < outbox.Shards%n {
		t++
	}
	return t
}

// apply makes the running drains match owned: extends deadlines, starts drains for
// newly held shards, stops drains for shards no longer held.
func (r *Relay) apply(owned []int, deadline time.Time) {
	set := map[int]bool{}
	for _, s := range owned {
		set[s] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := false
	for s, run := range r.shards {
		if !set[s] {
			if !r.releasing[s] {
				r.log.Warn("lease lost; stopping shard", "shard", s)
				r.hookErr("lease", fmt.Errorf("lease on shard %d lost", s))
			}
			run.halt()
			delete(r.shards, s)
			changed = true
		}
	}
	for s := range set {
		if r.releasing[s] {
			continue
		}
		run := r.shards[s]
		if run != nil && run.exited() {
			delete(r.shards, s)
			run = nil
		}
		if run == nil {
			run = &shardRun{shard: s, deadline: deadline, stop: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}, 1)}
			r.shards[s] = run
			changed = true
			go r.drainLoop(run)
			continue
		}
		run.extend(deadline)
	}
	if changed && r.cfg.Hooks.OnShards != nil {
		r.cfg.Hooks.OnShards(r.ownedLocked())
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
	runs := make([]*shardRun, 0, len(cand))
	for _, s := range cand {
		r.releasing[s] = true
		runs = append(runs, r.shards[s])
		r.shards[s].halt()
	}
	r.mu.Unlock()
	r.log.Info("releasing shards for rebalance", "shards", cand)
	go func() {
		for _, run := range runs {
			<-run.done // the batch in flight finishes first
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := r.pool.Exec(ctx, r.sql.release, run.shard, r.cfg.ReplicaID)
			cancel()
			r.mu.Lock()
			if r.shards[run.shard] == run {
				delete(r.shards, run.shard)
			}
			delete(r.releasing, run.shard)
			if r.cfg.Hooks.OnShards != nil {
				r.cfg.Hooks.OnShards(r.ownedLocked())
			}
			r.mu.Unlock()
			if err != nil {
				r.log.Warn("releasing shard failed; it expires after the lease TTL", "shard", run.shard, "err", err)
			}
		}
	}()
}
