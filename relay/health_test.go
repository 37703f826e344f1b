package relay_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// refusing answers "unavailable" for one subject and passes the others through.
type refusing struct {
	relay.Registry
	subject string
	refuse  atomic.Bool
}

func (r *refusing) ID(ctx context.Context, subject, schema string, register bool) (int, error) {
	if subject == r.subject && r.refuse.Load() {
		return 0, fmt.Errorf("%w: test refuses %s", registry.ErrUnavailable, subject)
	}
	return r.Registry.ID(ctx, subject, schema, register)
}

// Readiness follows whether events flow, not whether the last call of some kind
// succeeded: one topic's events stuck behind a failing registry subject make the relay
// unready even while another topic's events (cached schemas) keep flowing, and it is
// ready again once they move.
func TestRelay_UnreadyWhileSomeEventsCannotMoveThoughOthersFlow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	flowing, stuck := testEnvTopic(t, 3), testEnvTopic(t, 3)
	reg := &refusing{Registry: registry.New(e.registry, registry.Options{}), subject: stuck + "-value"}
	reg.refuse.Store(true)
	r, _, _ := e.relay(t, func(c *relay.Config) { c.Registry, c.RegistryURL, c.UnreadyAfter = reg, "", 3*time.Second })
	waitUntil(t, 30*time.Second, "ready", func() bool { return r.Ready() == nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seq atomic.Int64
	go func() { // the flowing topic keeps publishing with a cached schema
		for ctx.Err() == nil {
			ev := outbox.Event{Topic: flowing, Key: "a", Type: "Seq", Value: Seq{Key: "a", Seq: seq.Add(1)}}
			if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return e.w.Write(ctx, tx, ev) }); err != nil && ctx.Err() == nil {
				t.Error(err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	waitUntil(t, 30*time.Second, "the flowing topic publishing", func() bool { return published(t, flowing) > 3 })
	e.writeOne(t, stuck, "b", 1, 0, "")
	waitUntil(t, 60*time.Second, "unready while the stuck event cannot move", func() bool { return r.Ready() != nil })
	if err := r.Ready(); !strings.Contains(err.Error(), "published none") {
		t.Fatalf("Ready() = %v, want it to say a shard has rows it cannot publish", err)
	}
	before := published(t, flowing)
	waitUntil(t, 30*time.Second, "the other topic still flowing", func() bool { return published(t, flowing) > before+3 })
	if r.Ready() == nil {
		t.Fatal("ready again while the stuck event still waits")
	}
	reg.refuse.Store(false)
	waitUntil(t, 60*time.Second, "ready again once the event moved", func() bool { return r.Ready() == nil && published(t, stuck) == 1 })
}
