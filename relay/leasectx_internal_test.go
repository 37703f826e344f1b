package relay

import (
	"context"
	"testing"
	"time"
)

// TestLeaseContext_FollowsRenewalsAndEndsWithTheLease: an exactly-once batch's context
// lives while heartbeats extend its leases and ends once the earliest lapses.
func TestLeaseContext_FollowsRenewalsAndEndsWithTheLease(t *testing.T) {
	a, b := &shardRun{}, &shardRun{}
	start := time.Now()
	a.extend(start.Add(150 * time.Millisecond))
	b.extend(start.Add(300 * time.Millisecond))
	ctx, cancel := leaseContext([]*shardRun{a, b})
	defer cancel()
	// Renewed before the first deadline, twice: the context outlives it.
	time.Sleep(100 * time.Millisecond)
	a.extend(time.Now().Add(150 * time.Millisecond))
	time.Sleep(100 * time.Millisecond)
	a.extend(time.Now().Add(400 * time.Millisecond))
	select {
	case <-ctx.Done():
		t.Fatalf("context ended after %v although every lease was renewed in time", time.Since(start))
	default:
	}
	// b is not renewed: the context ends at its deadline, not a's.
	select {
	case <-ctx.Done():
		if took := time.Since(start); took < 300*time.Millisecond || took > 550*time.Millisecond {
			t.Fatalf("context ended after %v; want at b's deadline (300 ms)", took)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("context did not end when a lease lapsed")
	}
	if ctx.Err() != context.Canceled {
		t.Fatalf("ctx.Err() = %v", ctx.Err())
	}
}

func TestLeaseContext_PastDeadlineEndsAtOnce(t *testing.T) {
	s := &shardRun{}
	s.extend(time.Now().Add(-time.Millisecond))
	ctx, cancel := leaseContext([]*shardRun{s})
	defer cancel()
	if ctx.Err() == nil {
		t.Fatal("a context whose lease has lapsed is not done")
	}
}
