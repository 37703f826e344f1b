package relayboxtest_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
	"github.com/relaybox/relaybox/relayboxtest"
)

type Paid struct {
	InvoiceID string `avro:"invoice_id"`
	Cents     int64  `avro:"cents"`
}

func (Paid) AvroNamespace() string { return "billing.v1" }

// runPipeline writes three events, drains them through the relay and waits for a
// consumer to apply them, on the services s chooses; it checks the handler's effects.
func runPipeline(t *testing.T, s relayboxtest.Services) {
	pool := testenv.Pool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool, Services: s})
	topic := h.Topic("invoices")
	w := h.Writer(nil)
	ctx := context.Background()

	c := h.Consumer(&consumer.Config{Group: "billing", Topics: []string{topic}})
	var mu sync.Mutex
	var applied []string
	consumer.Handle(c.Consumer, "Paid", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[Paid]) error {
		mu.Lock()
		defer mu.Unlock()
		applied = append(applied, ev.Value.InvoiceID) // one key: one partition, in order
		return nil
	})
	c.Start()

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, id := range []string{"inv-1", "inv-2", "inv-3"} {
			if err := w.Write(ctx, tx, outbox.Event{Topic: topic, Key: "acct-1", Type: "Paid", Value: Paid{InvoiceID: id, Cents: 100}}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	evs := relayboxtest.RequireEvents[Paid](t, pool, &relayboxtest.Filter{Schema: h.Schema(), Type: "Paid"})
	if err := h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	// After Drain, every event is published (the harness's relay keeps the rows).
	for _, e := range relayboxtest.RequireEvents[Paid](t, pool, &relayboxtest.Filter{Schema: h.Schema()}) {
		if !e.Published {
			t.Errorf("event %s not published after Drain", e.ID)
		}
	}
	if err := c.AwaitApplied(ctx, evs[0].ID, evs[1].ID, evs[2].ID); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(applied, ",") != "inv-1,inv-2,inv-3" {
		t.Errorf("applied %v, want inv-1..3 in order", applied)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{h.Schema(), "processed_events"}.Sanitize()+` WHERE consumer_group = $1`, c.Group()).Scan(&n); err != nil || n != 3 {
		t.Errorf("processed_events rows of %s: %d (%v), want 3", c.Group(), n, err)
	}
}

func TestHarness_InProcess_DrainsAndAwaitsApplied(t *testing.T) {
	runPipeline(t, relayboxtest.InProcess)
}

func TestHarness_RealServices_DrainsAndAwaitsApplied(t *testing.T) {
	testenv.Brokers(t) // fails under RELAYBOX_REQUIRE_SERVICES=1 when unset
	testenv.RegistryURL(t)
	runPipeline(t, relayboxtest.FromEnv)
}

// Drain does not wait for ever on an event the relay parked: it says which and why.
func TestHarness_DrainReportsParkedEvents(t *testing.T) {
	pool := testenv.Pool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool, Services: relayboxtest.InProcess,
		Relay: &relay.Config{MaxRecordBytes: 600}})
	w := h.Writer(nil)
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx,
			outbox.Event{Topic: "invoices", Key: "acct-1", Type: "Paid", Value: Paid{InvoiceID: "small", Cents: 1}},
			outbox.Event{Topic: "invoices", Key: "acct-2", Type: "Paid", Value: Paid{InvoiceID: strings.Repeat("x", 1000), Cents: 2}})
	})
	if err != nil {
		t.Fatal(err)
	}
	err = h.Drain(ctx)
	if err == nil || !strings.Contains(err.Error(), "1 event(s) parked") || !strings.Contains(err.Error(), `key="acct-2"`) {
		t.Fatalf("Drain: %v, want the parked acct-2 event", err)
	}
}

// AwaitApplied returns at once, with the handler's error, for an event the consumer
// dead-lettered; and names what is missing when its context ends.
func TestHarness_AwaitAppliedReportsDeadLettersAndTimeouts(t *testing.T) {
	pool := testenv.Pool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool, Services: relayboxtest.InProcess})
	w := h.Writer(nil)
	ctx := context.Background()
	c := h.Consumer(&consumer.Config{Topics: []string{"invoices"}})
	consumer.Handle(c.Consumer, "Paid", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[Paid]) error {
		if ev.Value.Cents < 0 {
			return consumer.Permanent(errors.New("negative amount"))
		}
		return nil
	})
	c.Start()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx, outbox.Event{Topic: "invoices", Key: "acct-1", Type: "Paid", Value: Paid{InvoiceID: "bad", Cents: -5}})
	})
	if err != nil {
		t.Fatal(err)
	}
	bad := relayboxtest.RequireEvent[Paid](t, pool, &relayboxtest.Filter{Schema: h.Schema(), Key: "acct-1"})
	err = c.AwaitApplied(ctx, bad.ID)
	if err == nil || !strings.Contains(err.Error(), "dead-lettered") || !strings.Contains(err.Error(), "negative amount") {
		t.Fatalf("AwaitApplied: %v, want the dead letter and its reason", err)
	}
	// An id nobody wrote: the deadline ends the wait, and the error says where it is.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = c.AwaitApplied(short, "01900000-0000-7000-8000-000000000000")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not in the outbox") {
		t.Fatalf("AwaitApplied of an unknown id: %v", err)
	}
}

// gatedRegistry holds every schema lookup until open is closed: the relay cannot
// publish meanwhile.
type gatedRegistry struct {
	called chan struct{}
	open   chan struct{}
	once   sync.Once
}

func (g *gatedRegistry) ID(ctx context.Context, subject, schema string, register bool) (int, error) {
	g.once.Do(func() { close(g.called) })
	select {
	case <-g.open:
		return 1, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Drain waits while the relay holds events it has read but not published, and
// returns once they are.
func TestHarness_DrainWaitsForEventsInFlight(t *testing.T) {
	pool := testenv.Pool(t)
	reg := &gatedRegistry{called: make(chan struct{}), open: make(chan struct{})}
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool, Services: relayboxtest.InProcess, Relay: &relay.Config{Registry: reg}})
	w := h.Writer(nil)
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx, outbox.Event{Topic: "invoices", Key: "acct-1", Type: "Paid", Value: Paid{InvoiceID: "i-1"}})
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-reg.called: // the relay has read the event and is building its record
	case <-time.After(30 * time.Second):
		t.Fatal("the relay never looked the schema up")
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err = h.Drain(short)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 event(s) not yet published") {
		t.Fatalf("Drain with the event held: %v, want a deadline naming the waiting event", err)
	}
	close(reg.open)
	if err := h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := relayboxtest.RequireEvent[Paid](t, pool, &relayboxtest.Filter{Schema: h.Schema()}); !ev.Published {
		t.Errorf("Drain returned with the event unpublished")
	}
}
