package relay

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// checkDependencies pings Kafka. A ping that answers says only that metadata is
// served: it clears a failing ping, never a produce failure (a partition without a
// leader, or under min.insync.replicas, answers pings and refuses records).
func (r *Relay) checkDependencies(ctx context.Context) {
	if err := r.kc.Ping(ctx); err != nil {
		r.fail(componentKafkaPing, fmt.Errorf("kafka ping: %w", err))
	} else {
		r.kafkaSeen.Store(true)
		r.ok(componentKafkaPing)
	}
}

// componentKafkaPing is the health component of the heartbeat's ping (its failures
// are reported to OnError as ErrorKafka).
// It is a health component, never an OnError kind.
const componentKafkaPing ErrorKind = "kafka ping"

func (r *Relay) hookErr(kind ErrorKind, err error) {
	if r.cfg.Hooks.OnError != nil {
		r.cfg.Hooks.OnError(ErrorEvent{Kind: kind, Err: err})
	}
}

func (r *Relay) fail(component ErrorKind, err error) {
	kind := component
	if component == componentKafkaPing {
		kind = ErrorKafka
	}
	r.hookErr(kind, err)
	r.healthMu.Lock()
	if _, ok := r.failing[component]; !ok {
		r.failing[component] = time.Now()
		r.log.Warn("failing", "component", component, "err", err)
	}
	r.lastErr[component] = err
	r.healthMu.Unlock()
}

func (r *Relay) ok(component ErrorKind) {
	r.healthMu.Lock()
	if since, ok := r.failing[component]; ok {
		r.log.Info("recovered", "component", component, "after", time.Since(since).Round(time.Millisecond))
		delete(r.failing, component)
		delete(r.lastErr, component)
	}
	r.healthMu.Unlock()
}

// ErrNotReady is wrapped by Ready's errors.
var ErrNotReady = errors.New("relay not ready")

// Ready returns nil while events flow. It reports an error when the relay is not
// running or Kafka has not answered since it started, when a replica of the other mode blocks its claims, when a dependency
// (postgres, the Kafka ping) has failed for longer than UnreadyAfter, when one of its
// shards has had rows to publish and published none for UnreadyAfter, or when a batch
// has waited longer than UnreadyAfter (a partition without a leader holds its records
// while pings succeed). A large backlog that drains is progress, not a failure.
func (r *Relay) Ready() error {
	r.healthMu.Lock()
	running, mixed := r.running, r.mixed
	var failing error
	for c, since := range r.failing {
		if d := time.Since(since); d > r.cfg.UnreadyAfter && c != ErrorKafka && c != ErrorRegistry {
			failing = fmt.Errorf("%w: %s failing for %s: %v", ErrNotReady, c, d.Round(time.Second), r.lastErr[c])
		}
	}
	lastErr := func() error { // the most telling error, for the message
		for _, c := range []ErrorKind{ErrorKafka, ErrorRegistry, componentKafkaPing, ErrorPostgres} {
			if e := r.lastErr[c]; e != nil {
				return e
			}
		}
		return nil
	}()
	r.healthMu.Unlock()
	if !running {
		return fmt.Errorf("%w: not running", ErrNotReady)
	}
	if !r.kafkaSeen.Load() {
		if lastErr != nil {
			return fmt.Errorf("%w: Kafka has not answered since the relay started: %v", ErrNotReady, lastErr)
		}
		return fmt.Errorf("%w: Kafka has not answered since the relay started", ErrNotReady)
	}
	if mixed != "" {
		return fmt.Errorf("%w: replica %s runs in the other mode (at-least-once vs exactly-once); this replica claims no shard until it is gone", ErrNotReady, mixed)
	}
	if failing != nil {
		return failing
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.shards {
		why := ""
		if t := s.stuckSince.Load(); t != 0 && now.Sub(time.Unix(0, t)) > r.cfg.UnreadyAfter {
			why = fmt.Sprintf("shard %d has had rows to publish and published none for %s", s.shard, now.Sub(time.Unix(0, t)).Round(time.Second))
		} else if t := s.batchSince.Load(); t != 0 && now.Sub(time.Unix(0, t)) > r.cfg.UnreadyAfter {
			why = fmt.Sprintf("a batch of shard %d has been waiting for %s", s.shard, now.Sub(time.Unix(0, t)).Round(time.Second))
		}
		if why != "" {
			if lastErr != nil {
				return fmt.Errorf("%w: %s (last error: %v)", ErrNotReady, why, lastErr)
			}
			return fmt.Errorf("%w: %s", ErrNotReady, why)
		}
	}
	return nil
}

// setMixed records a live replica of the other mode ("" when there is none).
func (r *Relay) setMixed(other string) {
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	if other != r.mixed && other != "" {
		r.log.Error("a replica of the other mode is live: claiming no shard until it is gone (every replica must run in the same mode)",
			"other", other, "mode", r.mode())
	}
	r.mixed = other
}

func (r *Relay) hookLease(shard int, gen int64, acquired bool) {
	if r.cfg.Hooks.OnLease != nil {
		r.cfg.Hooks.OnLease(LeaseEvent{Shard: shard, Generation: gen, Acquired: acquired})
	}
}
