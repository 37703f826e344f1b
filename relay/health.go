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
	for c, since := range r.failing {
		if d := time.Since(since); d > r.cfg.UnreadyAfter {
			return fmt.Errorf("%w: %s failing for %s: %v", ErrNotReady, c, d.Round(time.Second), r.lastErr[c])
		}
	}
	return nil
}
