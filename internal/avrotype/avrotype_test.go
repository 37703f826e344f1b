package avrotype

import (
	"reflect"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
)

type line struct {
	SKU string `avro:"sku"`
	Qty int32  `avro:"qty"`
}

type order struct {
	ID      string            `avro:"id"`
	Lines   []line            `avro:"lines"`
	Note    *string           `avro:"note"`
	At      time.Time         `avro:"at"`
	Tags    map[string]string `avro:"tags"`
	Total   float64           `avro:"total"`
	Ignored string            `avro:"-"`
	Raw     []byte            `avro:"raw"`
}

func (order) AvroNamespace() string { return "shop.v1" }

type declared struct {
	A string `avro:"a"`
}

func (declared) AvroSchema() string {
	return `{"type":"record","name":"Declared","fields":[{"name":"a","type":"string"}]}`
}

func TestOf_DerivedSchemaRoundTrips(t *testing.T) {
	s, err := Of(reflect.TypeOf(order{}))
	if err != nil {
		t.Fatal(err)
	}
	rs := s.(*avro.RecordSchema)
	if rs.FullName() != "shop.v1.order" || len(rs.Fields()) != 7 {
		t.Fatalf("schema = %s", s.String())
	}
	note := "fragile"
	in := order{ID: "o1", Lines: []line{{"a", 2}}, Note: &note, At: time.UnixMicro(1700000000123456).UTC(),
		Tags: map[string]string{"k": "v"}, Total: 9.5, Ignored: "x", Raw: []byte{1, 2}}
	b, err := avro.Marshal(s, in)
	if err != nil {
		t.Fatal(err)
	}
	var out order
	if err := avro.Unmarshal(s, b, &out); err != nil {
		t.Fatal(err)
	}
	in.Ignored = ""
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n in %+v\nout %+v", in, out)
	}
}

func TestOf_DeclaredSchemaWins(t *testing.T) {
	s, err := Of(reflect.TypeOf(declared{}))
	if err != nil {
		t.Fatal(err)
	}
	if s.(*avro.RecordSchema).FullName() != "Declared" {
		t.Fatalf("got %s", s)
	}
}

func TestOf_RejectsUnsupported(t *testing.T) {
	type bad struct{ C chan int }
	if _, err := Of(reflect.TypeOf(bad{})); err == nil {
		t.Fatal("want error for chan field")
	}
	if _, err := Of(reflect.TypeOf(map[int]string{})); err == nil {
		t.Fatal("want error for int-keyed map")
	}
}
