package outbox_test

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

// writeTraced writes events in one committed transaction and returns the stored
// traceparent of each row, in id order.
func (s setup) writeTraced(t *testing.T, ctx context.Context, events ...outbox.Event) []string {
	t.Helper()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if err := s.w.Write(ctx, tx, events...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return testenv.StoredTraceparents(t, s.pool, s.schema)
}

func traceparentOf(sc trace.SpanContext) string {
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
}

// A write under a span starts the write span, a child of the caller's; every event
// of the write records the write span's context, which the relay carries to Kafka
// and the consumer continues.
func TestTrace_WriteUnderASpanRecordsTheWriteSpan(t *testing.T) {
	t.Parallel()
	tp, exp := testenv.Tracing()
	s := newSetup(t, &outbox.Config{TracerProvider: tp})
	ctx, parent := tp.Tracer("test").Start(context.Background(), "POST /orders")
	ev := func(key string) outbox.Event {
		return outbox.Event{Topic: "orders", Key: key, Type: "OrderCreated", Value: OrderCreated{OrderID: key}}
	}
	tps := s.writeTraced(t, ctx, ev("o-1"), ev("o-2"))
	parent.End()

	var write *tracetest.SpanStub
	for _, sp := range exp.GetSpans() {
		if sp.Name == outbox.SpanName {
			sp := sp
			write = &sp
		}
	}
	if write == nil {
		t.Fatalf("no %s span among %d exported", outbox.SpanName, len(exp.GetSpans()))
	}
	if write.Parent.SpanID() != parent.SpanContext().SpanID() || write.SpanContext.TraceID() != parent.SpanContext().TraceID() {
		t.Fatalf("write span's parent %v, want the caller's span %v", write.Parent, parent.SpanContext())
	}
	if write.SpanKind != trace.SpanKindProducer || write.Status.Code == codes.Error {
		t.Fatalf("write span kind %v status %v", write.SpanKind, write.Status)
	}
	want := traceparentOf(write.SpanContext)
	if len(tps) != 2 || tps[0] != want || tps[1] != want {
		t.Fatalf("stored traceparents %q, want the write span's %q for both", tps, want)
	}
	a := testenv.Attrs(write.Attributes)
	if a["messaging.batch.message_count"].AsInt64() != 2 || a["messaging.destination.name"].AsString() != "orders" ||
		len(a[outbox.AttrEventIDs].AsStringSlice()) != 2 || a["messaging.system"].AsString() != "kafka" {
		t.Fatalf("write span attributes %v", write.Attributes)
	}
}

// With a no-op provider for the writer, the events record the caller's own span
// context and a span event on the caller's span marks the write.
func TestTrace_NoopProviderMarksTheCallersSpanWithAnEvent(t *testing.T) {
	t.Parallel()
	tp, exp := testenv.Tracing()
	s := newSetup(t, &outbox.Config{TracerProvider: noop.NewTracerProvider()})
	ctx, parent := tp.Tracer("test").Start(context.Background(), "handler")
	tps := s.writeTraced(t, ctx, outbox.Event{Topic: "orders", Key: "k", Type: "OrderCreated", Value: OrderCreated{OrderID: "k"}})
	parent.End()
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans exported, want only the caller's", len(spans))
	}
	if want := traceparentOf(parent.SpanContext()); len(tps) != 1 || tps[0] != want {
		t.Fatalf("stored traceparent %q, want the caller's %q", tps, want)
	}
	if ev := spans[0].Events; len(ev) != 1 || ev[0].Name != outbox.SpanName || testenv.Attrs(ev[0].Attributes)["messaging.message.id"].AsString() == "" {
		t.Fatalf("caller's span events %+v, want one %s with the event id", ev, outbox.SpanName)
	}
}

// Without a span in ctx a write makes no span and stores no trace context.
func TestTrace_UntracedWriteMakesNoSpan(t *testing.T) {
	t.Parallel()
	tp, exp := testenv.Tracing()
	s := newSetup(t, &outbox.Config{TracerProvider: tp})
	tps := s.writeTraced(t, context.Background(), outbox.Event{Topic: "orders", Key: "k", Type: "OrderCreated", Value: OrderCreated{OrderID: "k"}})
	if len(exp.GetSpans()) != 0 || len(tps) != 1 || tps[0] != "" {
		t.Fatalf("%d spans, traceparents %q: want none", len(exp.GetSpans()), tps)
	}
}

// A write refused for bad input ends its span with the error.
func TestTrace_RefusedWriteEndsTheSpanWithTheError(t *testing.T) {
	t.Parallel()
	tp, exp := testenv.Tracing()
	s := newSetup(t, &outbox.Config{TracerProvider: tp})
	ctx, parent := tp.Tracer("test").Start(context.Background(), "handler")
	defer parent.End()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	err = s.w.Write(ctx, tx, outbox.Event{Topic: "orders", Key: "", Type: "OrderCreated", Value: OrderCreated{}})
	if !errors.Is(err, outbox.ErrInvalidEvent) {
		t.Fatalf("err %v", err)
	}
	spans := exp.GetSpans()
	if len(spans) != 1 || spans[0].Name != outbox.SpanName || spans[0].Status.Code != codes.Error {
		t.Fatalf("spans %+v, want one ended %s with status Error", spans, outbox.SpanName)
	}
}
