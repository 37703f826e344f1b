package consumer

import (
	"reflect"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/envelope"
)

// relayRecord is a record as the relay publishes it (no CloudEvents headers).
func relayRecord() *kgo.Record {
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	return &kgo.Record{Topic: "orders", Partition: 3, Offset: 42, Key: []byte("order-17"), Headers: []kgo.RecordHeader{
		h(envelope.TraceParent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
		h(envelope.AggregateType, "order"), h(envelope.CorrelationID, "c-1"), h(envelope.Source, "orders-svc"),
		h(envelope.EventID, "0192f8e2-7c3a-7b1e-9d4f-3a2b1c0d9e8f"), h(envelope.EventType, "OrderPlaced"),
		h(envelope.OccurredAt, time.Date(2026, 12, 1, 5, 0, 0, 123456789, time.UTC).Format(time.RFC3339Nano)),
	}}
}

func TestMessage_HeadersAndEnvelope(t *testing.T) {
	c := &Consumer{cfg: (&Config{}).WithDefaults()}
	rec := relayRecord()
	m := c.message(rec)
	if len(m.Headers) != len(rec.Headers) {
		t.Fatalf("%d headers, want %d", len(m.Headers), len(rec.Headers))
	}
	for _, h := range rec.Headers {
		if m.Headers[h.Key] != string(h.Value) {
			t.Errorf("header %s = %q, want %q", h.Key, m.Headers[h.Key], h.Value)
		}
	}
	want := Envelope{ID: "0192f8e2-7c3a-7b1e-9d4f-3a2b1c0d9e8f", Type: "OrderPlaced", Key: "order-17", AggregateType: "order",
		CorrelationID: "c-1", Source: "orders-svc", OccurredAt: time.Date(2026, 12, 1, 5, 0, 0, 123456789, time.UTC),
		Topic: "orders", Partition: 3, Offset: 42}
	got := m.Envelope
	got.Headers = nil
	if !got.OccurredAt.Equal(want.OccurredAt) {
		t.Errorf("OccurredAt %v, want %v", got.OccurredAt, want.OccurredAt)
	}
	got.OccurredAt = want.OccurredAt
	if !reflect.DeepEqual(got, want) {
		t.Errorf("envelope %+v, want %+v", got, want)
	}
	rec.Headers[4].Value[0] = 'X' // the record's buffers may be reused: the message keeps copies
	if m.ID[0] == 'X' || m.Headers[envelope.EventID][0] == 'X' {
		t.Error("the message shares the record's header bytes")
	}
}

func BenchmarkMessage(b *testing.B) {
	c := &Consumer{cfg: (&Config{}).WithDefaults()}
	rec := relayRecord()
	b.ReportAllocs()
	for b.Loop() {
		c.message(rec)
	}
}
