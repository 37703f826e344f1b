package outbox_test

import (
	"errors"
	"testing"

	"github.com/relaybox/relaybox/outbox"
)

// FuzzValidate feeds arbitrary envelope strings and schema texts to the writer's
// encoding entry point: it must never panic, and must refuse with one of its errors.
func FuzzValidate(f *testing.F) {
	w, _ := outbox.New(nil, &outbox.Config{MaxPayloadBytes: 4096})
	f.Add("orders", "k", "T", "h", "v", `{"type":"record","name":"P","fields":[{"name":"n","type":"string"}]}`, "x")
	f.Add("", "", "", "", "", "", "")
	f.Add("a/b", "k\xff", "T", "traceparent", "v", `{"type":"array","items":"long"}`, "y")
	f.Fuzz(func(t *testing.T, topic, key, typ, hk, hv, schema, s string) {
		evs := []outbox.Event{
			{Topic: topic, Key: key, Type: typ, Value: OrderCreated{OrderID: s}, Headers: map[string]string{hk: hv}},
			{Topic: topic, Key: key, Type: typ, Value: map[string]any{"n": s}, Schema: schema},
		}
		for _, e := range evs {
			err := w.Validate(e)
			if err != nil && !errors.Is(err, outbox.ErrInvalidEvent) && !errors.Is(err, outbox.ErrEncoding) && !errors.Is(err, outbox.ErrTooLarge) {
				t.Fatalf("unclassified error: %v", err)
			}
		}
	})
}
