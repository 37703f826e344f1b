package relayboxtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/internal/avrotype"
	"github.com/relaybox/relaybox/migrations"
)

// testingT is the part of *testing.T the assertions use. *testing.T, *testing.B and
// *testing.F implement it; the package's own tests pass a fake to check the failure
// paths (River's rivertest does the same).
type testingT interface {
	Errorf(format string, args ...any)
	FailNow()
	Helper()
	Logf(format string, args ...any)
}

// DB is what the assertions read the outbox through: a *pgxpool.Pool, a *pgx.Conn
// and a pgx.Tx all implement it. Pass the transaction of the unit of work to see its
// events before it commits (and roll it back after: nothing is published); pass the
// pool to see what committed. One function serves both, so there are no Tx variants.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Filter selects events of the outbox. Every field set must match (AND); a zero
// field matches anything. A nil *Filter matches every event of the default schema.
type Filter struct {
	// Schema is the Postgres schema of relaybox's tables. Defaults to "relaybox"
	// (migrations.DefaultSchema); a [Harness] test passes [Harness.Schema].
	Schema string

	// Topic, Key, Type (the event type), AggregateType, CorrelationID, CausationID
	// and Source match the envelope field of the same name exactly.
	Topic, Key, Type, AggregateType, CorrelationID, CausationID string
	Source                                                      string
	// Header: every name given must be a header of the event with that value.
	Header map[string]string
}

// Envelope is what an outbox row holds besides its value.
type Envelope struct {
	// ID is the event id (a UUIDv7 in its text form): what the consumer records in
	// processed_events and what [Consumer.AwaitApplied] waits for.
	ID string
	// Topic, Key, Type and AggregateType are the envelope's.
	Topic, Key, Type, AggregateType string
	// Subject is the registry subject the relay resolves the schema under.
	Subject string
	// CorrelationID, CausationID, Source and Traceparent are the envelope's (empty
	// when not set).
	CorrelationID, CausationID, Source, Traceparent string
	// OccurredAt is the event's time, as the writer set it.
	OccurredAt time.Time
	// Headers are the extra headers given to the writer.
	Headers map[string]string
	// Published says the relay published the row (retention mode keeps published
	// rows, as a [Harness] relay does; in delete mode they are gone).
	Published bool
	// Parked says the relay parked the row; ParkReason says why.
	Parked     bool
	ParkReason string
	// Schema is the Avro schema text the value was written with.
	Schema string
}

// Event is one event read from the outbox, its value decoded into T.
type Event[T any] struct {
	Envelope
	// Value is the payload, decoded with Avro schema resolution from the schema it
	// was written with to T's (T's AvroSchema() method or the one derived from its
	// fields), as the consumer decodes it. With T = any, it is the value as the
	// writer schema reads it (a map[string]any for a record).
	Value T
}

// Want is one event [RequireManyEvents] expects: the fields set must match, like
// [Filter]'s (Schema is taken from the call's Filter).
type Want struct {
	// Type, Key, Topic, AggregateType, CorrelationID and CausationID must match
	// when set.
	Type, Key, Topic, AggregateType, CorrelationID, CausationID string
	// Into, when set, is a non-nil pointer the event's value is decoded into (with
	// Avro schema resolution to its element type), for further assertions.
	Into any
}

// maxListed bounds the events a failure message lists.
const maxListed = 30

// queryTimeout bounds an assertion's reads.
const queryTimeout = 30 * time.Second

type row struct {
	Envelope
	payload []byte
}

// RequireEvent fails t unless exactly one event of the outbox matches f, and returns
// it with its value decoded into T:
//
//	created := relayboxtest.RequireEvent[OrderCreated](t, tx, &relayboxtest.Filter{Type: "OrderCreated"})
//
// It also fails when the value does not decode into T. The failure message lists the
// events the outbox holds.
func RequireEvent[T any](t testing.TB, db DB, f *Filter) Event[T] {
	t.Helper()
	return requireEvent[T](t, db, f)
}

func requireEvent[T any](t testingT, db DB, f *Filter) Event[T] {
	t.Helper()
	all, ok := readRows(t, db, f)
	if !ok {
		return Event[T]{}
	}
	found := matching(all, f)
	switch len(found) {
	case 0:
		failf(t, "no event matches %s\n%s", describe(f), listing(all, schemaOf(f)))
		return Event[T]{}
	case 1:
	default:
		failf(t, "%d events match %s, want exactly one (RequireEvents returns them all)\n%s", len(found), describe(f), listing(all, schemaOf(f)))
		return Event[T]{}
	}
	ev, err := decodeEvent[T](found[0])
	if err != nil {
		failf(t, "%v", err)
		return Event[T]{}
	}
	return ev
}

// RequireEvents fails t unless at least one event of the outbox matches f, and
// returns every match, in the order they were written, with values decoded into T:
//
//	evs := relayboxtest.RequireEvents[OrderModified](t, pool, &relayboxtest.Filter{Key: orderID, Type: "OrderModified"})
//
// It also fails when a value does not decode into T. The failure message lists the
// events the outbox holds.
func RequireEvents[T any](t testing.TB, db DB, f *Filter) []Event[T] {
	t.Helper()
	return requireEvents[T](t, db, f)
}

func requireEvents[T any](t testingT, db DB, f *Filter) []Event[T] {
	t.Helper()
	all, ok := readRows(t, db, f)
	if !ok {
		return nil
	}
	found := matching(all, f)
	if len(found) == 0 {
		failf(t, "no event matches %s\n%s", describe(f), listing(all, schemaOf(f)))
		return nil
	}
	out := make([]Event[T], 0, len(found))
	for _, r := range found {
		ev, err := decodeEvent[T](r)
		if err != nil {
			failf(t, "%v", err)
			return nil
		}
		out = append(out, ev)
	}
	return out
}

// RequireNoEvents fails t if an event of the outbox matches f: for a unit of work
// that must write nothing (a rejected request, a no-op update). The failure message
// lists the matches.
func RequireNoEvents(t testing.TB, db DB, f *Filter) {
	t.Helper()
	requireNoEvents(t, db, f)
}

func requireNoEvents(t testingT, db DB, f *Filter) {
	t.Helper()
	all, ok := readRows(t, db, f)
	if !ok {
		return
	}
	if found := matching(all, f); len(found) > 0 {
		failf(t, "%d event(s) match %s, want none\n%s", len(found), describe(f), listing(found, ""))
	}
}

// RequireManyEvents fails t unless the events of the outbox that match f are exactly
// want, in the order they were written (as River's RequireManyInserted: an event
// written twice is expected twice). Each Want's Into, if set, receives the value:
//
//	var created OrderCreated
//	relayboxtest.RequireManyEvents(t, tx, &relayboxtest.Filter{Key: id},
//		relayboxtest.Want{Type: "OrderCreated", Into: &created},
//		relayboxtest.Want{Type: "OrderDeleted"})
//
// It returns the envelopes of the matches. The failure message names the first
// difference and lists the events found.
func RequireManyEvents(t testing.TB, db DB, f *Filter, want ...Want) []Envelope {
	t.Helper()
	return requireManyEvents(t, db, f, want)
}

func requireManyEvents(t testingT, db DB, f *Filter, want []Want) []Envelope {
	t.Helper()
	all, ok := readRows(t, db, f)
	if !ok {
		return nil
	}
	found := matching(all, f)
	for i := 0; i < len(want) || i < len(found); i++ {
		switch {
		case i >= len(found):
			failf(t, "%d event(s) match %s, want %d: missing #%d %s\n%s", len(found), describe(f), len(want), i+1, describeWant(want[i]), listing(all, schemaOf(f)))
			return nil
		case i >= len(want):
			failf(t, "%d event(s) match %s, want %d: unexpected #%d %s\n%s", len(found), describe(f), len(want), i+1, oneLine(found[i].Envelope), listing(found, ""))
			return nil
		}
		if diff := wantDiff(want[i], found[i].Envelope); diff != "" {
			failf(t, "event #%d of those matching %s: %s\n%s", i+1, describe(f), diff, listing(found, ""))
			return nil
		}
	}
	out := make([]Envelope, len(found))
	for i, r := range found {
		out[i] = r.Envelope
		if want[i].Into != nil {
			if err := decodeInto(r, want[i].Into); err != nil {
				failf(t, "%v", err)
				return nil
			}
		}
	}
	return out
}

func readRows(t testingT, db DB, f *Filter) ([]row, bool) {
	t.Helper()
	if db == nil {
		failf(t, "nil DB: pass the pool or the transaction of the unit of work")
		return nil, false
	}
	schema := schemaOf(f)
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	all, err := query(ctx, db, schema)
	if err != nil {
		failf(t, "reading the outbox in schema %q: %v", schema, err)
		return nil, false
	}
	return all, true
}

// query reads every event of the outbox, oldest first, with its schema text.
func query(ctx context.Context, db DB, schema string) ([]row, error) {
	outboxT := pgx.Identifier{schema, "outbox"}.Sanitize()
	schemasT := pgx.Identifier{schema, "schemas"}.Sanitize()
	rows, err := db.Query(ctx, `SELECT o.event_id::text, o.topic, o.key, o.event_type, o.aggregate_type, o.subject,
		o.correlation_id, o.causation_id, o.source, o.traceparent, o.occurred_at, o.headers::text,
		o.published_at IS NOT NULL, o.parked_at IS NOT NULL, coalesce(o.last_error, ''), coalesce(s.schema, ''), o.payload
		FROM `+outboxT+` o LEFT JOIN `+schemasT+` s ON s.fingerprint = o.schema_fingerprint ORDER BY o.id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []row
	for rows.Next() {
		var r row
		var headers string
		if err := rows.Scan(&r.ID, &r.Topic, &r.Key, &r.Type, &r.AggregateType, &r.Subject, &r.CorrelationID, &r.CausationID,
			&r.Source, &r.Traceparent, &r.OccurredAt, &headers, &r.Published, &r.Parked, &r.ParkReason, &r.Schema, &r.payload); err != nil {
			return nil, err
		}
		r.Headers = map[string]string{}
		// Non-string header values (a plain-SQL writer's) are kept as their JSON text.
		var raw map[string]json.RawMessage
		if err := json.Unmarshal([]byte(headers), &raw); err == nil {
			for k, v := range raw {
				var s string
				if json.Unmarshal(v, &s) == nil {
					r.Headers[k] = s
				} else {
					r.Headers[k] = string(v)
				}
			}
		}
		if !r.Parked {
			r.ParkReason = ""
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func (f *Filter) match(e *Envelope) bool {
	if f == nil {
		return true
	}
	eq := func(want, got string) bool { return want == "" || want == got }
	if !eq(f.Topic, e.Topic) || !eq(f.Key, e.Key) || !eq(f.Type, e.Type) || !eq(f.AggregateType, e.AggregateType) ||
		!eq(f.CorrelationID, e.CorrelationID) || !eq(f.CausationID, e.CausationID) || !eq(f.Source, e.Source) {
		return false
	}
	for k, v := range f.Header {
		if got, ok := e.Headers[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func matching(all []row, f *Filter) []row {
	var out []row
	for _, r := range all {
		if f.match(&r.Envelope) {
			out = append(out, r)
		}
	}
	return out
}

func wantDiff(w Want, e Envelope) string {
	var d []string
	check := func(name, want, got string) {
		if want != "" && want != got {
			d = append(d, fmt.Sprintf("%s is %q, want %q", name, got, want))
		}
	}
	check("type", w.Type, e.Type)
	check("key", w.Key, e.Key)
	check("topic", w.Topic, e.Topic)
	check("aggregate type", w.AggregateType, e.AggregateType)
	check("correlation id", w.CorrelationID, e.CorrelationID)
	check("causation id", w.CausationID, e.CausationID)
	return strings.Join(d, ", ")
}

// describe renders a filter for a failure message: "{type=OrderCreated key=o-1}".
func describe(f *Filter) string {
	if f == nil {
		return "{any event}"
	}
	var parts []string
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, fmt.Sprintf("%s=%q", name, v))
		}
	}
	add("type", f.Type)
	add("key", f.Key)
	add("topic", f.Topic)
	add("aggregate", f.AggregateType)
	add("correlation", f.CorrelationID)
	add("causation", f.CausationID)
	add("source", f.Source)
	for k, v := range f.Header {
		add("header "+k, v)
	}
	if len(parts) == 0 {
		return "{any event}"
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func describeWant(w Want) string {
	return describe(&Filter{Type: w.Type, Key: w.Key, Topic: w.Topic, AggregateType: w.AggregateType,
		CorrelationID: w.CorrelationID, CausationID: w.CausationID})
}

func oneLine(e Envelope) string {
	s := fmt.Sprintf("%s topic=%q key=%q", e.Type, e.Topic, e.Key)
	if e.AggregateType != "" {
		s += fmt.Sprintf(" aggregate=%q", e.AggregateType)
	}
	if e.CorrelationID != "" {
		s += fmt.Sprintf(" correlation=%q", e.CorrelationID)
	}
	if e.CausationID != "" {
		s += fmt.Sprintf(" causation=%q", e.CausationID)
	}
	switch {
	case e.Parked:
		s += " parked: " + e.ParkReason
	case e.Published:
		s += " (published)"
	}
	return s + " id=" + e.ID
}

// listing renders events for a failure message. With a schema, it says that they are
// what the outbox of that schema holds; without, they are the matches.
func listing(rs []row, schema string) string {
	var b strings.Builder
	switch {
	case schema != "" && len(rs) == 0:
		return fmt.Sprintf("the outbox (schema %q) holds no events", schema)
	case schema != "":
		fmt.Fprintf(&b, "the outbox (schema %q) holds %d event(s):", schema, len(rs))
	default:
		b.WriteString("found:")
	}
	for i, r := range rs {
		if i == maxListed {
			fmt.Fprintf(&b, "\n  ... and %d more", len(rs)-maxListed)
			break
		}
		fmt.Fprintf(&b, "\n  %d. %s", i+1, oneLine(r.Envelope))
	}
	return b.String()
}

// schemaOf is the schema f reads.
func schemaOf(f *Filter) string {
	if f != nil && f.Schema != "" {
		return f.Schema
	}
	return migrations.DefaultSchema
}

// failf fails t with a message set apart from the test's own output.
func failf(t testingT, format string, args ...any) {
	t.Helper()
	t.Logf("\n    relaybox assertion failure:\n    %s\n", strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", "\n    "))
	t.FailNow()
}

// decodeEvent decodes r's value into a T.
func decodeEvent[T any](r row) (Event[T], error) {
	ev := Event[T]{Envelope: r.Envelope}
	return ev, decodeInto(r, &ev.Value)
}

var compat = avro.NewSchemaCompatibility()

// decodeAPI bounds what a corrupt payload can make the decoder allocate, as the
// consumer's does.
var decodeAPI = avro.Config{MaxByteSliceSize: 16 << 20, MaxSliceAllocSize: 1 << 20}.Freeze()

// decodeInto decodes r's payload into dst (a non-nil pointer) as the consumer would:
// the writer schema is the one stored with the row, the reader schema dst's type's.
func decodeInto(r row, dst any) (err error) {
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("Want.Into must be a non-nil pointer, got %T", dst)
	}
	what := fmt.Sprintf("event %s (%s, key %q)", r.ID, r.Type, r.Key)
	if r.Schema == "" {
		return fmt.Errorf("%s: its schema is missing from the schemas table", what)
	}
	writer, err := avro.Parse(r.Schema)
	if err != nil {
		return fmt.Errorf("%s: its stored schema does not parse: %v", what, err)
	}
	s := writer
	t := rv.Type().Elem()
	if t.Kind() != reflect.Interface {
		reader, err := avrotype.Of(t)
		if err != nil {
			return fmt.Errorf("%s: %v has no Avro schema: %v", what, t, err)
		}
		if reader.Fingerprint() != writer.Fingerprint() {
			if s, err = compat.Resolve(reader, writer); err != nil {
				return fmt.Errorf("%s does not decode into %v: the schema it was written with cannot be read as %v's: %v", what, t, t, err)
			}
		}
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s: decoding into %v panicked: %v", what, t, p)
		}
	}()
	rd := avro.NewReader(nil, 0, avro.WithReaderConfig(decodeAPI))
	rd.Reset(r.payload)
	rd.ReadVal(s, dst)
	if rd.Error != nil {
		err := rd.Error
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("payload truncated: %w", err)
		}
		return fmt.Errorf("%s does not decode into %v: %v", what, t, err)
	}
	return nil
}
