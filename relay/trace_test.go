package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// tracedWrites writes, for each of traces request spans, perTrace events of one key
// (one shard: one batch), and returns the stored traceparent of every row.
func (e *env) tracedWrites(t *testing.T, tp trace.TracerProvider, topic string, traces, perTrace int) []string {
	t.Helper()
	w, err := outbox.New(e.pool, &outbox.Config{Schema: e.schema, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	seq := int64(0)
	for i := 0; i < traces; i++ {
		ctx, span := tp.Tracer("test").Start(context.Background(), "request")
		for j := 0; j < perTrace; j++ {
			seq++
			ev := outbox.Event{Topic: topic, Key: "k", Type: "Seq", Value: Seq{Key: "k", Seq: seq}}
			if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return w.Write(ctx, tx, ev) }); err != nil {
				t.Fatal(err)
			}
		}
		span.End()
	}
	return testenv.StoredTraceparents(t, e.pool, e.schema)
}

// tracedRelay writes traces×perTrace events of one key to a new topic (see
// tracedWrites) and starts a relay recording its spans in exp; mod may change its
// config further.
func tracedRelay(t *testing.T, traces, perTrace int, mod func(*env, *relay.Config)) (e *env, topic string, tps []string, exp *tracetest.InMemoryExporter) {
	t.Helper()
	e = newEnv(t)
	topic = testenv.Topic(t, 1)
	writerTP, _ := testenv.Tracing()
	tps = e.tracedWrites(t, writerTP, topic, traces, perTrace)
	relayTP, exp := testenv.Tracing()
	e.relay(t, func(c *relay.Config) {
		c.TracerProvider = relayTP
		if mod != nil {
			mod(e, c)
		}
	})
	return e, topic, tps, exp
}

func batchSpans(exp *tracetest.InMemoryExporter) []tracetest.SpanStub {
	return testenv.SpansNamed(exp, relay.BatchSpanName)
}

// batchWith waits for a batch span with the outcome and rows given (under load a
// first attempt may fail and be retried: its span says so, and is skipped here).
func batchWith(t *testing.T, exp *tracetest.InMemoryExporter, outcome string, rows int64) tracetest.SpanStub {
	t.Helper()
	var found tracetest.SpanStub
	ok := func() bool {
		for _, b := range batchSpans(exp) {
			a := testenv.Attrs(b.Attributes)
			if a[relay.AttrOutcome].AsString() == outcome && a[relay.AttrRows].AsInt64() == rows {
				found = b
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			var seen [][]attribute.KeyValue
			for _, b := range batchSpans(exp) {
				seen = append(seen, b.Attributes)
			}
			t.Fatalf("no batch span with outcome %s over %d rows within 60s; batch spans: %v", outcome, rows, seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return found
}

// One batch of events from three traces: its span is a root linked to each trace
// once (the first event's context, with its event id), with the batch's shard, rows,
// bytes and outcome; every Kafka record carries its writer's traceparent unchanged.
func TestTrace_BatchSpanLinksEachTraceAndRecordsCarryTheTraceparent(t *testing.T) {
	t.Parallel()
	_, topic, tps, exp := tracedRelay(t, 3, 2, nil)
	s := readBack(t, topic, 6, 60*time.Second)
	if s.distinct != 6 {
		t.Fatalf("read %d distinct events, want 6", s.distinct)
	}
	// The records are in key (= write) order: each carries its row's traceparent.
	for i, rec := range s.records[:6] {
		if got := header(rec, envelope.TraceParent); got != tps[i] || got == "" {
			t.Fatalf("record %d traceparent %q, stored %q", i, got, tps[i])
		}
	}
	b := batchWith(t, exp, relay.OutcomePublished, 6) // one key: one shard, one batch
	a := testenv.Attrs(b.Attributes)
	if b.Parent.IsValid() {
		t.Fatalf("a batch of three traces has parent %v, want a root", b.Parent)
	}
	if a[relay.AttrRows].AsInt64() != 6 || a[relay.AttrPublished].AsInt64() != 6 || a[relay.AttrOutcome].AsString() != relay.OutcomePublished ||
		a[relay.AttrBytes].AsInt64() <= 0 || a[relay.AttrShard].AsInt64() != int64(outbox.Shard("k")) ||
		a["relaybox.links.dropped"].AsInt64() != 0 || a["messaging.system"].AsString() != "kafka" {
		t.Fatalf("batch span attributes %v", b.Attributes)
	}
	if len(b.Links) != 3 {
		t.Fatalf("%d links, want one per trace (3)", len(b.Links))
	}
	for i, l := range b.Links {
		// Rows 0, 2, 4 are the first event of each trace.
		want := tps[2*i]
		got := "00-" + l.SpanContext.TraceID().String() + "-" + l.SpanContext.SpanID().String() + "-" + l.SpanContext.TraceFlags().String()
		if got != want || len(l.Attributes) != 1 || l.Attributes[0].Key != "messaging.message.id" {
			t.Fatalf("link %d: %s %v, want %s with the event id", i, got, l.Attributes, want)
		}
	}
}

// A batch whose events all belong to one trace is a child of the first event's
// context: the request's trace shows the relay's batch.
func TestTrace_BatchOfOneTraceIsItsChild(t *testing.T) {
	t.Parallel()
	_, topic, tps, exp := tracedRelay(t, 1, 3, nil)
	readBack(t, topic, 3, 60*time.Second)
	b := batchWith(t, exp, relay.OutcomePublished, 3)
	got := "00-" + b.Parent.TraceID().String() + "-" + b.Parent.SpanID().String() + "-" + b.Parent.TraceFlags().String()
	if got != tps[0] || b.SpanContext.TraceID() != b.Parent.TraceID() {
		t.Fatalf("batch span parent %s (trace %s), want the first event's %s", got, b.SpanContext.TraceID(), tps[0])
	}
}

// Exactly-once mode makes the same batch span (the Kafka transaction inside it).
func TestTrace_ExactlyOnceBatchSpan(t *testing.T) {
	t.Parallel()
	_, topic, _, exp := tracedRelay(t, 2, 2, func(e *env, c *relay.Config) {
		c.ExactlyOnce, c.TransactionalIDPrefix = true, "test-"+e.schema
	})
	readCommitted(t, topic, 4, 90*time.Second)
	b := batchWith(t, exp, relay.OutcomePublished, 4)
	a := testenv.Attrs(b.Attributes)
	if a[relay.AttrOutcome].AsString() != relay.OutcomePublished || a[relay.AttrPublished].AsInt64() != 4 || len(b.Links) != 2 {
		t.Fatalf("exactly-once batch span: %v, %d links", b.Attributes, len(b.Links))
	}
}

// A batch whose events park (too large) says so, without an error status.
func TestTrace_ParkedBatchOutcome(t *testing.T) {
	t.Parallel()
	_, _, _, exp := tracedRelay(t, 1, 2, func(_ *env, c *relay.Config) { c.MaxRecordBytes = 100 })
	b := batchWith(t, exp, relay.OutcomeParked, 2)
	a := testenv.Attrs(b.Attributes)
	// The first row parks; the second, behind it on its key, stays for later.
	if a[relay.AttrOutcome].AsString() != relay.OutcomeParked || a[relay.AttrParked].AsInt64() != 1 || b.Status.Code == codes.Error {
		t.Fatalf("parked batch span: %v, status %v", b.Attributes, b.Status)
	}
}
