package relay

import (
	"context"
	"errors"
	"fmt"
	"time"
)

func (r *Relay) checkDependencies(ctx context.Context) {
	if err := r.kc.Ping(ctx); err != nil {
		r.fail("kafka", fmt.Errorf("kafka ping: %w", err))
	} else {
		r.ok("kafka")
	}
}

func (r *Relay) hookErr(kind string, err error) {
	if r.cfg.Hooks.OnError != nil {
		r.cfg.Hooks.OnError(kind, err)
	}
}

func (r *Relay) fail(component string, err error) {
	r.hookErr(component, err)
	r.healthMu.Lock()
	if _, ok := r.failing[component]; !ok {
		r.failing[component] = time.Now()
		r.log.Warn("failing", "component", component, "err", err)
	}
	r.lastErr[component] = err
	r.healthMu.Unlock()
}

func (r *Relay) ok(component string) {
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

// Ready returns nil while the relay runs and no dependency (postgres, kafka,
// registry) has been failing for longer than UnreadyAfter.
func (r *Relay) Ready() error {
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	if !r.running {
		return fmt.Errorf("%w: not running", ErrNotReady)
	}
	if r.mixed != "" {
		return fmt.Errorf("%w: replica %s runs in the other mode (at-least-once vs exactly-once); this replica claims no shard until it is gone", ErrNotReady, r.mixed)
	}
	for c, since := range r.failing {
		if d := time.Since(since); d > r.cfg.UnreadyAfter {
			return fmt.Errorf("%w: %s failing for %s: %v", ErrNotReady, c, d.Round(time.Second), r.lastErr[c])
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
