package relay

import (
	"context"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/relaybox/relaybox/outbox"
)

// wake wakes the drains of the shards a NOTIFY payload lists ("3,17,40", what the
// writer sends), or all of them when the payload is empty or not such a list.
func (r *Relay) wake(payload string) {
	if payload == "" {
		r.wakeAll()
		return
	}
	var shards []int
	for f := range strings.SplitSeq(payload, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 || n >= outbox.Shards {
			r.wakeAll()
			return
		}
		shards = append(shards, n)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cfg.ExactlyOnce { // the group's leader drains the group
		for _, n := range shards {
			if s := r.shards[n-n%ExactlyOnceGroupShards]; s != nil {
				s.poke()
			}
		}
		return
	}
	// Shards that keep up get the news and one idle one of them (the leader) is
	// woken: it drains them all in one batch (see steal). The others are woken.
	var leader *shardRun
	for _, n := range shards {
		s := r.shards[n]
		switch {
		case s == nil:
		case s.sparse.Load():
			s.news.Store(true)
			if leader == nil && !s.draining.Load() && !s.failing.Load() {
				leader = s
			}
		default:
			// Its news too: if its batch running now turns out small, it becomes a
			// shard that keeps up, and such a shard ignores a wake without news.
			s.nudge()
		}
	}
	if leader != nil {
		leader.poke()
		return
	}
	// None idle: a batch that drains a shard looks for news when it ends (see
	// drainLoop), so only the idle ones that back off after a failure are woken (their
	// backoff holds them).
	for _, n := range shards {
		if s := r.shards[n]; s != nil && s.news.Load() && !s.draining.Load() {
			s.poke()
		}
	}
}

func (r *Relay) wakeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.shards {
		s.nudge()
	}
}

// listen wakes the drains on every NOTIFY (those of the shards it names), reconnecting
// as needed.
func (r *Relay) listen(ctx context.Context) {
	backoff := 0
	for ctx.Err() == nil {
		err := func() error {
			conn, err := pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{r.cfg.Channel}.Sanitize()); err != nil {
				return err
			}
			backoff = 0
			r.wakeAll() // whatever committed while we were not listening
			for {
				n, err := conn.WaitForNotification(ctx)
				if err != nil {
					return err
				}
				r.wake(n.Payload)
			}
		}()
		if ctx.Err() != nil {
			return
		}
		backoff++
		r.log.Warn("LISTEN connection lost; polling until it is back", "err", err)
		sleep(ctx, r.backoff(backoff))
	}
}
