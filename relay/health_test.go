package relay_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
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
	reg := &refusing{Registry: registry.New(e.registry, registry.Options{Timeout: time.Minute}), subject: stuck + "-value"}
	reg.refuse.Store(true)
	r, _, _ := e.relay(t, func(c *relay.Config) { c.Registry, c.RegistryURL, c.UnreadyAfter = reg, "", 3*time.Second })
	waitFor(t, 30*time.Second, "ready", func() bool { return r.Ready() == nil })
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
	waitFor(t, 30*time.Second, "the flowing topic publishing", func() bool { return published(t, flowing) > 3 })
	e.writeOne(t, stuck, "b", 1, 0, "")
	waitFor(t, 60*time.Second, "unready while the stuck event cannot move", func() bool { return r.Ready() != nil })
	if err := r.Ready(); !strings.Contains(err.Error(), "published none") {
		t.Fatalf("Ready() = %v, want it to say a shard has rows it cannot publish", err)
	}
	before := published(t, flowing)
	waitFor(t, 30*time.Second, "the other topic still flowing", func() bool { return published(t, flowing) > before+3 })
	if r.Ready() == nil {
		t.Fatal("ready again while the stuck event still waits")
	}
	reg.refuse.Store(false)
	waitFor(t, 60*time.Second, "ready again once the event moved", func() bool { return r.Ready() == nil && published(t, stuck) == 1 })
}

// notFoundFirst answers "not found" for its first n calls (a registry that does not yet
// see a schema registered a moment ago), then passes calls through.
type notFoundFirst struct {
	relay.Registry
	n atomic.Int64
}

func (r *notFoundFirst) ID(ctx context.Context, subject, schema string, register bool) (int, error) {
	if r.n.Add(-1) >= 0 {
		return 0, &registry.Error{Op: "lookup", Subject: subject, Code: 40403, Message: "Schema not found"}
	}
	return r.Registry.ID(ctx, subject, schema, register)
}

// With DisableAutoRegister, a 404 for a schema that is registered is retried within
// SchemaNotFoundGrace instead of parking the event at once; past the grace it parks.
func TestRelay_SchemaNotFoundIsRetriedWithinTheGraceThenParks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testEnvTopic(t, 1)
	real := registry.New(e.registry, registry.Options{Timeout: time.Minute})
	reg := &notFoundFirst{Registry: real}
	reg.n.Store(3)
	var parked atomic.Int64
	e.relay(t, func(c *relay.Config) {
		c.Registry, c.RegistryURL, c.DisableAutoRegister, c.MaxBackoff = reg, "", true, 200*time.Millisecond
		c.Hooks.OnParked = func(relay.ParkEvent) { parked.Add(1) }
	})
	// Register the event's schema first, as a deploy pipeline would.
	e.writeOne(t, topic, "k", 1, 0, "")
	var schema string
	if err := e.pool.QueryRow(context.Background(), `SELECT schema FROM `+pgx.Identifier{e.schema, "schemas"}.Sanitize()+` LIMIT 1`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if _, err := real.ID(context.Background(), topic+"-value", schema, true); err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, topic, 1, 60*time.Second); got.distinct != 1 {
		t.Fatal("the event was not published after the registry saw its schema")
	}
	if parked.Load() != 0 {
		t.Fatalf("%d events parked while the 404s lasted less than the grace", parked.Load())
	}
	// A schema that stays unknown parks once the grace is over.
	reg.n.Store(1 << 40)
	e.writeOne(t, topic, "k2", 1, 0, "")
	waitFor(t, 60*time.Second, "the event parked after the grace", func() bool { return parked.Load() == 1 })
}

// sentinel answers every lookup with err.
type sentinel struct{ err error }

func (s sentinel) ID(context.Context, string, string, bool) (int, error) { return 0, s.err }

// A custom Registry classifies its failures with the exported sentinels: an
// incompatible schema parks its event (it is not retried for ever as "unavailable").
func TestRelay_CustomRegistryCanSayIncompatible(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testEnvTopic(t, 1)
	var reasons sync.Map
	e.relay(t, func(c *relay.Config) {
		c.Registry, c.RegistryURL = sentinel{fmt.Errorf("my registry: %w", relay.ErrSchemaIncompatible)}, ""
		c.Hooks.OnParked = func(p relay.ParkEvent) { reasons.Store(p.Reason, true) }
	})
	e.writeOne(t, topic, "k", 1, 0, "")
	waitFor(t, 60*time.Second, "the event parked as incompatible", func() bool {
		_, ok := reasons.Load(relay.ParkIncompatible)
		return ok
	})
}
