package relayboxtest

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

// fakeT records what an assertion did to its test; FailNow stops the assertion as
// testing.T's does (by unwinding), and run catches that.
type fakeT struct {
	failed bool
	log    strings.Builder
}

type failNow struct{}

func (f *fakeT) Errorf(format string, args ...any) {
	f.failed = true
	fmt.Fprintf(&f.log, format+"\n", args...)
}
func (f *fakeT) FailNow()                        { f.failed = true; panic(failNow{}) }
func (f *fakeT) Helper()                         {}
func (f *fakeT) Logf(format string, args ...any) { fmt.Fprintf(&f.log, format+"\n", args...) }

func run(fn func(t testingT)) *fakeT {
	ft := &fakeT{}
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(failNow); !ok {
					panic(r)
				}
			}
		}()
		fn(ft)
	}()
	return ft
}

// wantFailure checks that the assertion failed with a message holding every part.
func wantFailure(t *testing.T, ft *fakeT, parts ...string) {
	t.Helper()
	if !ft.failed {
		t.Fatalf("the assertion passed, want a failure")
	}
	msg := ft.log.String()
	if !strings.Contains(msg, "relaybox assertion failure") {
		t.Errorf("failure message lacks the header:\n%s", msg)
	}
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("failure message lacks %q:\n%s", p, msg)
		}
	}
}

func wantPass(t *testing.T, ft *fakeT) {
	t.Helper()
	if ft.failed {
		t.Fatalf("the assertion failed, want a pass:\n%s", ft.log.String())
	}
}

type Booked struct {
	ShipmentID string `avro:"shipment_id"`
	Parcels    int32  `avro:"parcels"`
	Carrier    string `avro:"carrier"`
}

func (Booked) AvroNamespace() string { return "shipping.v1" }

// BookedView reads Booked without the carrier (a consumer's narrower type, which
// declares the writer's record name: Avro resolution matches records by name).
type BookedView struct {
	ShipmentID string `avro:"shipment_id"`
	Parcels    int32  `avro:"parcels"`
}

func (BookedView) AvroSchema() string {
	return `{"type":"record","name":"Booked","namespace":"shipping.v1","fields":[
		{"name":"shipment_id","type":"string"},{"name":"parcels","type":"int"}]}`
}

// BookedBroken cannot read Booked: parcels is a string.
type BookedBroken struct {
	Parcels string `avro:"parcels"`
}

func (BookedBroken) AvroNamespace() string { return "shipping.v1" }

type Cancelled struct {
	ShipmentID string `avro:"shipment_id"`
}

func (Cancelled) AvroNamespace() string { return "shipping.v1" }

// fixture migrates a schema and commits two events for shp-1 and one for shp-2.
func fixture(t *testing.T) (*pgxpool.Pool, *Filter, *outbox.Writer) {
	t.Helper()
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	w, err := outbox.New(pool, &outbox.Config{Schema: schema, Source: "shipping"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx,
			outbox.Event{Topic: "shipments", Key: "shp-1", Type: "Booked", AggregateType: "Shipment", CorrelationID: "c-1",
				Headers: map[string]string{"tenant": "acme"}, Value: Booked{ShipmentID: "shp-1", Parcels: 2, Carrier: "dhl"}},
			outbox.Event{Topic: "shipments", Key: "shp-2", Type: "Booked", Value: Booked{ShipmentID: "shp-2", Parcels: 1, Carrier: "ups"}},
			outbox.Event{Topic: "shipments", Key: "shp-1", Type: "Cancelled", Value: Cancelled{ShipmentID: "shp-1"}})
	})
	if err != nil {
		t.Fatal(err)
	}
	return pool, &Filter{Schema: schema}, w
}

func with(f *Filter, edit func(*Filter)) *Filter {
	c := *f
	edit(&c)
	return &c
}

func TestRequireEvent_DecodesTheOneMatchIntoTheUsersType(t *testing.T) {
	pool, f, _ := fixture(t)
	var ev Event[Booked]
	wantPass(t, run(func(ft testingT) {
		ev = requireEvent[Booked](ft, pool, with(f, func(f *Filter) { f.Key = "shp-1"; f.Type = "Booked" }))
	}))
	if ev.Value != (Booked{ShipmentID: "shp-1", Parcels: 2, Carrier: "dhl"}) || ev.AggregateType != "Shipment" ||
		ev.CorrelationID != "c-1" || ev.Source != "shipping" || ev.Headers["tenant"] != "acme" || ev.ID == "" || ev.Published {
		t.Errorf("event %+v", ev)
	}
	// A narrower reader type, as a consumer declares it: schema resolution drops carrier.
	var view Event[BookedView]
	wantPass(t, run(func(ft testingT) {
		view = requireEvent[BookedView](ft, pool, with(f, func(f *Filter) { f.Header = map[string]string{"tenant": "acme"} }))
	}))
	if view.Value != (BookedView{ShipmentID: "shp-1", Parcels: 2}) {
		t.Errorf("narrow view %+v", view.Value)
	}
	// T = any: the value as its writer schema reads it.
	var raw Event[any]
	wantPass(t, run(func(ft testingT) {
		raw = requireEvent[any](ft, pool, with(f, func(f *Filter) { f.Type = "Cancelled" }))
	}))
	if m, ok := raw.Value.(map[string]any); !ok || m["shipment_id"] != "shp-1" {
		t.Errorf("T=any: %#v", raw.Value)
	}
}

func TestRequireEvent_FailsListingTheOutbox(t *testing.T) {
	pool, f, _ := fixture(t)
	wantFailure(t, run(func(ft testingT) {
		requireEvent[Booked](ft, pool, with(f, func(f *Filter) { f.Type = "Delivered" }))
	}), `no event matches {type="Delivered"}`, "holds 3 event(s)", `1. Booked topic="shipments" key="shp-1"`, `3. Cancelled topic="shipments" key="shp-1"`)
	wantFailure(t, run(func(ft testingT) {
		requireEvent[Booked](ft, pool, with(f, func(f *Filter) { f.Type = "Booked" }))
	}), `2 events match {type="Booked"}, want exactly one`)
	wantFailure(t, run(func(ft testingT) {
		requireEvent[BookedBroken](ft, pool, with(f, func(f *Filter) { f.Key = "shp-2" }))
	}), "does not decode into relayboxtest.BookedBroken")
	wantFailure(t, run(func(ft testingT) {
		requireEvent[Booked](ft, pool, &Filter{Schema: "no_such_schema_here"})
	}), `reading the outbox in schema "no_such_schema_here"`)
	wantFailure(t, run(func(ft testingT) { requireEvent[Booked](ft, nil, f) }), "nil DB")
}

func TestRequireEvents_ReturnsEveryMatchInWriteOrder(t *testing.T) {
	pool, f, _ := fixture(t)
	var evs []Event[BookedView]
	wantPass(t, run(func(ft testingT) {
		evs = requireEvents[BookedView](ft, pool, with(f, func(f *Filter) { f.Type = "Booked" }))
	}))
	if len(evs) != 2 || evs[0].Value.ShipmentID != "shp-1" || evs[1].Value.ShipmentID != "shp-2" {
		t.Errorf("events %+v", evs)
	}
	wantFailure(t, run(func(ft testingT) {
		requireEvents[Booked](ft, pool, with(f, func(f *Filter) { f.Topic = "invoices" }))
	}), `no event matches {topic="invoices"}`, "holds 3 event(s)")
	// Every match must decode: Cancelled does not decode into Booked (no parcels).
	wantFailure(t, run(func(ft testingT) { requireEvents[Booked](ft, pool, with(f, func(f *Filter) { f.Key = "shp-1" })) }),
		"Cancelled", "does not decode into relayboxtest.Booked")
}

func TestRequireNoEvents_FailsNamingTheMatches(t *testing.T) {
	pool, f, _ := fixture(t)
	wantPass(t, run(func(ft testingT) { requireNoEvents(ft, pool, with(f, func(f *Filter) { f.Type = "Delivered" })) }))
	wantFailure(t, run(func(ft testingT) { requireNoEvents(ft, pool, with(f, func(f *Filter) { f.Key = "shp-2" })) }),
		`1 event(s) match {key="shp-2"}, want none`, `1. Booked topic="shipments" key="shp-2"`)
}

func TestRequireManyEvents_ChecksOrderAndCount(t *testing.T) {
	pool, f, _ := fixture(t)
	shp1 := with(f, func(f *Filter) { f.Key = "shp-1" })
	var booked BookedView
	var cancelled Cancelled
	var envs []Envelope
	wantPass(t, run(func(ft testingT) {
		envs = requireManyEvents(ft, pool, shp1, []Want{{Type: "Booked", Into: &booked}, {Type: "Cancelled", Into: &cancelled}})
	}))
	if len(envs) != 2 || booked.Parcels != 2 || cancelled.ShipmentID != "shp-1" {
		t.Errorf("envelopes %+v, booked %+v, cancelled %+v", envs, booked, cancelled)
	}
	wantFailure(t, run(func(ft testingT) { requireManyEvents(ft, pool, shp1, []Want{{Type: "Cancelled"}, {Type: "Booked"}}) }),
		`event #1 of those matching {key="shp-1"}: type is "Booked", want "Cancelled"`, "found:")
	wantFailure(t, run(func(ft testingT) {
		requireManyEvents(ft, pool, shp1, []Want{{Type: "Booked"}, {Type: "Cancelled"}, {Type: "Booked"}})
	}), `2 event(s) match {key="shp-1"}, want 3: missing #3 {type="Booked"}`)
	wantFailure(t, run(func(ft testingT) { requireManyEvents(ft, pool, shp1, []Want{{Type: "Booked"}}) }),
		`want 1: unexpected #2 Cancelled`)
	wantFailure(t, run(func(ft testingT) {
		requireManyEvents(ft, pool, shp1, []Want{{Type: "Booked", Into: &BookedBroken{}}, {Type: "Cancelled"}})
	}), "does not decode into relayboxtest.BookedBroken")
}

// Through the unit of work's transaction the assertions see its events before it
// commits; after a rollback there is nothing.
func TestRequireEvents_SeesTheUncommittedEventsOfATx(t *testing.T) {
	pool, f, w := fixture(t)
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) // before the schema is dropped, if the test stops early
	if err := w.Write(ctx, tx, outbox.Event{Topic: "shipments", Key: "shp-3", Type: "Booked", Value: Booked{ShipmentID: "shp-3"}}); err != nil {
		t.Fatal(err)
	}
	shp3 := with(f, func(f *Filter) { f.Key = "shp-3" })
	wantPass(t, run(func(ft testingT) { requireEvent[Booked](ft, tx, shp3) }))
	wantFailure(t, run(func(ft testingT) { requireEvent[Booked](ft, pool, shp3) }), `no event matches {key="shp-3"}`)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wantPass(t, run(func(ft testingT) { requireNoEvents(ft, pool, shp3) }))
}
