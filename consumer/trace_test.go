package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
)

// A record from a producer that is not relaybox (a plain franz-go produce: the
// Avro value in wire format and a hand-made traceparent, no relaybox header) is
// processed in a span that continues that trace: a child of the header's context,
// with the messaging attributes, and the handler's own span nests under it.
func TestTrace_RecordFromAForeignProducerContinuesItsTrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	body, err := avro.Marshal(s, Seq{Key: "k", Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	const traceID, spanID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	produceTo(t, &kgo.Record{Topic: topic, Partition: 0, Key: []byte("k"), Value: wire.Frame(uint32(id), body),
		Headers: []kgo.RecordHeader{
			{Key: "traceparent", Value: []byte("00-" + traceID + "-" + spanID + "-01")},
			{Key: "tracestate", Value: []byte("vendor=opaque")},
		}})

	tp, exp := testenv.Tracing()
	cfg := e.config(t, topic)
	cfg.TracerProvider = tp
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", func(ctx context.Context, ev consumer.Event[Seq]) error {
		_, span := tp.Tracer("inventory").Start(ctx, "reserve stock")
		span.End()
		return nil
	}))
	run(t, c)
	name := "process " + topic
	waitFor(t, 60*time.Second, "the record's span", func() bool { return len(testenv.SpansNamed(exp, name)) == 1 })

	rs := testenv.SpansNamed(exp, name)[0]
	if rs.Parent.TraceID().String() != traceID || rs.Parent.SpanID().String() != spanID || !rs.Parent.IsRemote() {
		t.Fatalf("record span parent %v, want the header's %s/%s", rs.Parent, traceID, spanID)
	}
	if rs.SpanContext.TraceID().String() != traceID || rs.SpanContext.TraceState().String() != "vendor=opaque" {
		t.Fatalf("record span context %v, want trace %s with the tracestate", rs.SpanContext, traceID)
	}
	a := testenv.Attrs(rs.Attributes)
	want := map[attribute.Key]string{
		"messaging.system": "kafka", "messaging.destination.name": topic, "messaging.destination.partition.id": "0",
		"messaging.message.id": topic + "/0/0", "messaging.consumer.group.name": cfg.Group,
		"messaging.operation.type": "process", consumer.AttrOutcome: consumer.OutcomeApplied, consumer.AttrEventType: "Seq",
	}
	for k, v := range want {
		if a[k].String() != v {
			t.Errorf("%s = %q, want %q", k, a[k].String(), v)
		}
	}
	if off, ok := a["messaging.kafka.offset"]; !ok || off.AsInt64() != 0 || rs.SpanKind != trace.SpanKindConsumer {
		t.Errorf("offset %v (set %v), kind %v", off.AsInt64(), ok, rs.SpanKind)
	}
	hs := testenv.SpansNamed(exp, "reserve stock")
	if len(hs) != 1 || hs[0].Parent.SpanID() != rs.SpanContext.SpanID() || hs[0].SpanContext.TraceID().String() != traceID {
		t.Fatalf("handler spans %v: want one, a child of the record span %s", hs, rs.SpanContext.SpanID())
	}
}

// The record span says what became of the record: applied, duplicate, retried
// (events and a count) then applied, dead-lettered (status error, reason).
func TestTrace_RecordSpanOutcomes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	rec := func(key, eventID string) *kgo.Record {
		return record(t, topic, id, s, key, eventID, "Seq", Seq{Key: key, Seq: 1})
	}
	produceTo(t, rec("once", "e-once"), rec("once", "e-once"), rec("flaky", "e-flaky"), rec("perm", "e-perm"), rec("last", "e-last"))
	tp, exp := testenv.Tracing()
	cfg := e.config(t, topic)
	cfg.TracerProvider = tp
	c := e.newConsumer(t, cfg)
	flaky := 0
	consumer.Handle(c, "Seq", e.applySeq("c", func(_ context.Context, ev consumer.Event[Seq]) error {
		switch ev.Key {
		case "flaky":
			if flaky++; flaky == 1 {
				return errors.New("flaky failure")
			}
		case "perm":
			return consumer.Permanent(errors.New("no such order"))
		}
		return nil
	}))
	run(t, c)
	name := "process " + topic
	waitFor(t, 60*time.Second, "five record spans", func() bool { return len(testenv.SpansNamed(exp, name)) == 5 })
	got := map[string][]tracetest.SpanStub{}
	for _, sp := range testenv.SpansNamed(exp, name) {
		got[testenv.Attrs(sp.Attributes)["messaging.message.id"].AsString()] = append(got[testenv.Attrs(sp.Attributes)["messaging.message.id"].AsString()], sp)
	}
	outcome := func(sp tracetest.SpanStub) string {
		return testenv.Attrs(sp.Attributes)[consumer.AttrOutcome].AsString()
	}
	if o := got["e-once"]; len(o) != 2 || outcome(o[0]) != consumer.OutcomeApplied || outcome(o[1]) != consumer.OutcomeDuplicate {
		t.Errorf("e-once spans: %d, outcomes %v / %v; want applied then duplicate", len(o), outcome(o[0]), outcome(o[len(o)-1]))
	}
	f := got["e-flaky"][0]
	if outcome(f) != consumer.OutcomeApplied || testenv.Attrs(f.Attributes)[consumer.AttrRetries].AsInt64() != 1 || len(f.Events) != 1 || f.Events[0].Name != "retry" {
		t.Errorf("e-flaky: outcome %s, retries %d, events %v; want applied after one retry", outcome(f), testenv.Attrs(f.Attributes)[consumer.AttrRetries].AsInt64(), f.Events)
	}
	p := got["e-perm"][0]
	if outcome(p) != consumer.OutcomeDeadLettered || p.Status.Code != codes.Error || testenv.Attrs(p.Attributes)[consumer.AttrDeadLetterReason].AsString() != consumer.ReasonPermanent {
		t.Errorf("e-perm: outcome %s, status %v, attributes %v; want dead-lettered, error, reason permanent", outcome(p), p.Status, p.Attributes)
	}
}

// In batch mode each record keeps its own span, a child of its record's context and
// linked to the span of its batch's transaction; the batch span links to the
// records' traces.
func TestTrace_BatchModeRecordSpansLinkTheirBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	tps := []string{
		"00-11111111111111111111111111111111-1111111111111111-01",
		"00-22222222222222222222222222222222-2222222222222222-01",
		"00-11111111111111111111111111111111-3333333333333333-01",
		"",
	}
	var recs []*kgo.Record
	for i, tp := range tps {
		r := record(t, topic, id, s, "k", "e-"+strconv.Itoa(i), "Seq", Seq{Key: "k", Seq: int64(i + 1)})
		if tp != "" {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: envelope.TraceParent, Value: []byte(tp)})
		}
		recs = append(recs, r)
	}
	produceTo(t, recs...)
	tp, exp := testenv.Tracing()
	cfg := e.config(t, topic)
	cfg.TracerProvider, cfg.BatchMode = tp, true
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", nil))
	run(t, c)
	name := "process " + topic
	waitFor(t, 60*time.Second, "four record spans", func() bool { return len(testenv.SpansNamed(exp, name)) == 4 })
	waitFor(t, 10*time.Second, "the batch spans", func() bool {
		n := int64(0)
		for _, b := range testenv.SpansNamed(exp, consumer.BatchSpanName) {
			n += testenv.Attrs(b.Attributes)["messaging.batch.message_count"].AsInt64()
		}
		return n == 4
	})
	batches := map[trace.SpanID]tracetest.SpanStub{}
	linked := map[string]bool{}
	for _, b := range testenv.SpansNamed(exp, consumer.BatchSpanName) {
		batches[b.SpanContext.SpanID()] = b
		if o := testenv.Attrs(b.Attributes)[consumer.AttrOutcome].AsString(); o != consumer.BatchCommitted || b.Parent.IsValid() {
			t.Errorf("batch span outcome %q parent %v; want committed, a root", o, b.Parent)
		}
		for _, l := range b.Links {
			linked[l.SpanContext.TraceID().String()] = true
		}
	}
	if len(linked) != 2 {
		t.Errorf("batch spans link %d traces, want 2: %v", len(linked), linked)
	}
	for _, r := range testenv.SpansNamed(exp, name) {
		a := testenv.Attrs(r.Attributes)
		i, _ := strconv.Atoi(a["messaging.message.id"].AsString()[2:])
		wantParent := tps[i]
		gotParent := ""
		if r.Parent.IsValid() {
			gotParent = fmt.Sprintf("00-%s-%s-01", r.Parent.TraceID(), r.Parent.SpanID())
		}
		if gotParent != wantParent || a[consumer.AttrOutcome].AsString() != consumer.OutcomeApplied {
			t.Errorf("record %d: parent %q outcome %q, want %q applied", i, gotParent, a[consumer.AttrOutcome].AsString(), wantParent)
		}
		if len(r.Links) != 1 {
			t.Errorf("record %d has %d links, want its batch", i, len(r.Links))
		} else if _, ok := batches[r.Links[0].SpanContext.SpanID()]; !ok {
			t.Errorf("record %d links %v, not a batch span", i, r.Links[0].SpanContext)
		}
	}
	if n := e.count(t, `SELECT count(*) FROM `+e.table("effects")); n != 4 {
		t.Fatalf("%d effects", n)
	}
}
