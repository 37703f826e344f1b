package relayboxtest

import (
	"context"
	"errors"
	"testing"
)

// runner runs a Run(ctx) of the harness (the relay's, a consumer's) in the
// background until the test ends.
type runner struct {
	done chan struct{}
	err  error // written before done is closed
}

// startRunner starts run; the test's cleanup cancels it, waits for it, and fails the
// test if it returned an error other than the cancellation.
func startRunner(t testing.TB, what string, run func(context.Context) error) *runner {
	r := &runner{done: make(chan struct{})}
	ctx, stop := context.WithCancel(context.Background())
	go func() {
		defer close(r.done)
		r.err = run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		<-r.done
		if r.err != nil && !errors.Is(r.err, context.Canceled) {
			t.Errorf("relayboxtest: %s stopped with: %v", what, r.err)
		}
	})
	return r
}

// stopped reports whether run has returned, and what it returned. A nil runner has
// not started.
func (r *runner) stopped() (bool, error) {
	if r == nil {
		return false, nil
	}
	select {
	case <-r.done:
		return true, r.err
	default:
		return false, nil
	}
}
