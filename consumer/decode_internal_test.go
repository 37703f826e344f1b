package consumer

import (
	"context"
	"errors"
	"fmt"
	"github.com/twmb/franz-go/pkg/kgo"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hamba/avro/v2"

	"github.com/relaybox/relaybox/internal/wire"
)

type fuzzV1 struct {
	Key   string            `avro:"key"`
	Seq   int64             `avro:"seq"`
	Tags  []string          `avro:"tags"`
	Attrs map[string]string `avro:"attrs"`
	Note  *string           `avro:"note"`
}

const fuzzV2 = `{"type":"record","name":"fuzzV1","fields":[
	{"name":"key","type":"string"},{"name":"seq","type":"long"},
	{"name":"tags","type":{"type":"array","items":"string"}},
	{"name":"attrs","type":{"type":"map","values":"string"}},
	{"name":"note","type":["null","string"],"default":null},
	{"name":"extra","type":"double","default":1.5}]}`

// memRegistry is a Registry in memory: id 1 is fuzzV1's schema, id 2 a newer
// version, id 3 an incompatible one; id 9 is "unavailable".
type memRegistry map[int]avro.Schema

func (m memRegistry) Schema(_ context.Context, id int) (avro.Schema, error) {
	if id == 9 {
		return nil, errors.New("connection refused")
	}
	if s, ok := m[id]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrSchemaNotFound, id)
}

func testDecoder(t testing.TB) (*decoder, avro.Schema, avro.Schema) {
	v1, err := readerSchema(reflect.TypeFor[fuzzV1]())
	if err != nil {
		t.Fatal(err)
	}
	v2 := avro.MustParse(fuzzV2)
	bad := avro.MustParse(`{"type":"record","name":"fuzzV1","fields":[{"name":"key","type":"long"}]}`)
	return newDecoder(memRegistry{1: v1, 2: v2, 3: bad}, 0), v1, v2
}

func TestDecode_ClassifiesEveryFailure(t *testing.T) {
	d, v1, v2 := testDecoder(t)
	note := "hi"
	body1, _ := avro.Marshal(v1, fuzzV1{Key: "k", Seq: 7, Tags: []string{"a"}, Note: &note})
	body2, _ := avro.Marshal(v2, map[string]any{"key": "k", "seq": int64(8), "tags": []string{}, "attrs": map[string]any{"x": "y"}, "note": nil, "extra": 2.5})
	typ := reflect.TypeFor[fuzzV1]()
	ctx := context.Background()

	v, err := d.decode(ctx, wire.Frame(1, body1), typ)
	if got := v.(*fuzzV1); err != nil || got.Key != "k" || got.Seq != 7 || *got.Note != "hi" {
		t.Fatalf("same schema: %+v, %v", v, err)
	}
	v, err = d.decode(ctx, wire.Frame(2, body2), typ)
	if got := v.(*fuzzV1); err != nil || got.Seq != 8 || got.Attrs["x"] != "y" || got.Note != nil {
		t.Fatalf("newer writer into older type: %+v, %v", v, err)
	}
	for name, c := range map[string]struct {
		value  []byte
		reason string
	}{
		"empty":        {nil, ReasonMalformed},
		"short":        {[]byte{0, 0, 0}, ReasonMalformed},
		"magic":        {[]byte{1, 0, 0, 0, 1, 2}, ReasonMalformed},
		"unknown id":   {wire.Frame(4, body1), ReasonUnknownSchema},
		"incompatible": {wire.Frame(3, body1), ReasonIncompatibleSchema},
		"truncated":    {wire.Frame(1, body1[:3]), ReasonBadBody},
	} {
		_, err := d.decode(ctx, c.value, typ)
		var de *DecodeError
		if !errors.As(err, &de) || de.Reason != c.reason {
			t.Errorf("%s: %v, want a DecodeError with reason %s", name, err, c.reason)
		}
	}
	_, err = d.decode(ctx, wire.Frame(9, body1), typ)
	var de *DecodeError
	if err == nil || errors.As(err, &de) {
		t.Errorf("registry unavailable: %v, want a transient (non-DecodeError) error", err)
	}
}

// FuzzDecode feeds arbitrary bytes to the consumer's decoding path: framing,
// schema lookup, resolution and the Avro body. It must return a value or an error,
// never panic, whatever the bytes.
func FuzzDecode(f *testing.F) {
	d, v1, v2 := testDecoder(f)
	note := "n"
	b1, _ := avro.Marshal(v1, fuzzV1{Key: "key", Seq: 42, Tags: []string{"a", "b"}, Attrs: map[string]string{"k": "v"}, Note: &note})
	b2, _ := avro.Marshal(v2, map[string]any{"key": "k", "seq": int64(1), "tags": []string{"t"}, "attrs": map[string]any{}, "note": "x", "extra": 0.5})
	f.Add(wire.Frame(1, b1))
	f.Add(wire.Frame(2, b2))
	f.Add(wire.Frame(3, b1))
	f.Add(wire.Frame(1, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}))
	f.Add([]byte{0, 0, 0, 0, 2, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Add([]byte("not avro"))
	f.Add([]byte{})
	typ := reflect.TypeFor[fuzzV1]()
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := d.decode(context.Background(), b, typ)
		if (v == nil) == (err == nil) {
			t.Fatalf("decode returned value %v and error %v", v, err)
		}
	})
}

// FuzzMessageHeaders: arbitrary header names and values never panic the envelope
// parsing, and an event id that passes checkEventID is one Postgres text can hold.
func FuzzMessageHeaders(f *testing.F) {
	c := &Consumer{cfg: &Config{DedupKey: DefaultDedupKey}}
	f.Add("relaybox.event_id", "01900000-0000-7000-8000-000000000000", "relaybox.occurred_at", "2026-01-02T03:04:05Z")
	f.Add("relaybox.event_id", "bad\x00id", "traceparent", "00-zz")
	f.Add("relaybox.event_id", "\xff\xfe", "relaybox.occurred_at", "not a time")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		rec := &kgo.Record{Topic: "t", Headers: []kgo.RecordHeader{{Key: k1, Value: []byte(v1)}, {Key: k2, Value: []byte(v2)}}}
		m := c.message(rec)
		if m.ID == "" {
			t.Fatal("empty event id: the dedup key must fall back to topic/partition/offset")
		}
		if checkEventID(m.ID) == nil && (!utf8.ValidString(m.ID) || strings.ContainsRune(m.ID, 0)) {
			t.Fatalf("checkEventID accepted %q", m.ID)
		}
	})
}
