package relay

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/relaybox/relaybox/internal/otelx"
)

func tpOf(trace, span int) string {
	return fmt.Sprintf("00-%032x-%016x-01", trace+1, span+1)
}

// A 4,000-row batch from 300 traces (some rows untraced or malformed) links the
// first 128 distinct traces in row order, each once with its first event's id, and
// counts the 172 others and the untraced rows, so the SDK drops nothing silently.
func TestTrace_LinkCapKeepsTheFirstDistinctTracesAndCountsTheRest(t *testing.T) {
	rows := make([]outboxRow, 4000)
	untraced := 0
	for i := range rows {
		rows[i].eventID = uuid.New()
		switch {
		case i%47 == 7:
			untraced++ // no context
		case i%47 == 9:
			rows[i].traceparent = "00-garbage"
			untraced++
		default:
			rows[i].traceparent = tpOf(i%300, i)
		}
	}
	l := linkRows(rows, 0)
	if len(l.Links) != otelx.MaxLinks || l.Dropped != 300-otelx.MaxLinks || l.Untraced != untraced {
		t.Fatalf("links %d dropped %d untraced %d; want %d, %d, %d", len(l.Links), l.Dropped, l.Untraced, otelx.MaxLinks, 300-otelx.MaxLinks, untraced)
	}
	// The expected links: the first row of each trace, in row order.
	var firstRows []int
	seen := map[string]bool{}
	for i, r := range rows {
		if len(r.traceparent) == 55 && !seen[r.traceparent[3:35]] {
			seen[r.traceparent[3:35]] = true
			firstRows = append(firstRows, i)
		}
	}
	if len(firstRows) != 300 {
		t.Fatalf("the batch has %d traces, want 300", len(firstRows))
	}
	for i, k := range l.Links {
		r := rows[firstRows[i]]
		if k.SpanContext.TraceID().String() != r.traceparent[3:35] || k.SpanContext.SpanID().String() != r.traceparent[36:52] ||
			k.Attributes[0].Value.AsString() != r.eventID.String() {
			t.Fatalf("link %d: %v %v, want row %d: %s, event %s", i, k.SpanContext, k.Attributes, firstRows[i], r.traceparent, r.eventID)
		}
	}

	// On a real SDK span with the default limits: 128 links kept, none dropped by the
	// SDK, the rest counted in the attribute.
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	_, span := tp.Tracer("t").Start(context.Background(), "batch")
	l.Apply(span)
	span.End()
	got := exp.GetSpans()[0]
	if len(got.Links) != otelx.MaxLinks || got.DroppedLinks != 0 {
		t.Fatalf("exported %d links, SDK dropped %d", len(got.Links), got.DroppedLinks)
	}
	for _, kv := range got.Attributes {
		if kv.Key == otelx.LinksDropped && kv.Value.AsInt64() != 172 {
			t.Fatalf("%s = %d, want 172", kv.Key, kv.Value.AsInt64())
		}
	}
}

// singleTrace finds a batch of one trace (untraced rows aside) and refuses a mixed one.
func TestTrace_SingleTrace(t *testing.T) {
	rows := []outboxRow{{}, {traceparent: tpOf(1, 1)}, {traceparent: tpOf(1, 2)}, {}}
	if sc := singleTrace(rows); !sc.IsValid() || sc.SpanID().String() != fmt.Sprintf("%016x", 2) {
		t.Fatalf("one trace: %v, want row 1's context", sc)
	}
	rows = append(rows, outboxRow{traceparent: tpOf(2, 3)})
	if sc := singleTrace(rows); sc.IsValid() {
		t.Fatalf("two traces: %v, want none", sc)
	}
	if sc := singleTrace([]outboxRow{{}, {}}); sc.IsValid() {
		t.Fatalf("untraced: %v", sc)
	}
}

// The cost of a recorded batch span's links: parsing the stored contexts of a
// 4,000-row batch from 4,000 traces (the worst case) and keeping 128.
func BenchmarkTrace_LinkRows4000(b *testing.B) {
	rows := make([]outboxRow, 4000)
	for i := range rows {
		rows[i].eventID = uuid.New()
		rows[i].traceparent = tpOf(i, i)
	}
	b.ReportAllocs()
	for b.Loop() {
		if l := linkRows(rows, 0); len(l.Links) != otelx.MaxLinks {
			b.Fatal(len(l.Links))
		}
	}
}
