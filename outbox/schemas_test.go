package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/schemacheck"
)

// Three versions of one event type, as three releases of a service would declare it
// (local types: each is named OrderPlaced, so they share a record name).
func placedV1(topic string) []outbox.EventSchema {
	type OrderPlaced struct {
		OrderID string `avro:"order_id"`
		Amount  int64  `avro:"amount"`
	}
	return []outbox.EventSchema{{Topic: topic, Value: OrderPlaced{}}}
}

func placedV2Compatible(topic string) []outbox.EventSchema {
	type OrderPlaced struct {
		OrderID string  `avro:"order_id"`
		Amount  int64   `avro:"amount"`
		Coupon  *string `avro:"coupon"` // a pointer: optional, default null
	}
	return []outbox.EventSchema{{Topic: topic, Value: &OrderPlaced{}}}
}

func placedV2Breaking(topic string) []outbox.EventSchema {
	type OrderPlaced struct {
		OrderID string `avro:"order_id"`
		Amount  int64  `avro:"amount"`
		Tier    int32  `avro:"tier"` // no default
	}
	return []outbox.EventSchema{{Topic: topic, Value: OrderPlaced{}}}
}

// service is what a service's main does before it takes traffic: check the schemas
// it writes against the registry, refuse to start on a break. Its writer never talks
// to the registry.
type service struct{ w *outbox.Writer }

func startService(ctx context.Context, reg outbox.SchemaChecker, cfg *outbox.Config, events []outbox.EventSchema) (*service, error) {
	if err := outbox.CheckSchemas(ctx, reg, cfg, events...); err != nil {
		return nil, fmt.Errorf("not starting: %w", err)
	}
	w, err := outbox.New(nil, cfg)
	if err != nil {
		return nil, err
	}
	return &service{w: w}, nil
}

func TestCheckSchemas_ServiceRefusesToStartWithAnIncompatibleType(t *testing.T) {
	url := testenv.RegistryURL(t)
	ctx := context.Background()
	topic := testenv.Name(t, "orders")
	cfg := &outbox.Config{SubjectStrategy: outbox.TopicRecordName}
	subject := topic + "-OrderPlaced"
	reg := schemacheck.NewRegistry(url, nil)

	// First release: the subject holds nothing yet, there is nothing to break.
	if _, err := startService(ctx, reg, cfg, placedV1(topic)); err != nil {
		t.Fatalf("first release: %v", err)
	}
	if err := reg.SetLevel(ctx, subject, schemacheck.Full); err != nil {
		t.Fatal(err)
	}
	// The relay registers v1 when it publishes the first event.
	_, v1, err := placedV1(topic)[0].Subject(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registry.New(url, registry.Options{Timeout: time.Minute}).ID(ctx, subject, v1, true); err != nil {
		t.Fatal(err)
	}

	if _, err := startService(ctx, reg, cfg, placedV2Compatible(topic)); err != nil {
		t.Fatalf("compatible release: %v", err)
	}
	_, err = startService(ctx, reg, cfg, placedV2Breaking(topic))
	var se *outbox.SchemaError
	if !errors.Is(err, outbox.ErrIncompatibleSchema) || !errors.As(err, &se) || len(se.Problems) != 1 {
		t.Fatalf("breaking release started: %v", err)
	}
	want := "not starting: 1 incompatible schema change(s): subject " + subject + ": field `tier` added without a default: new readers cannot read old events under FULL [against registered version 1]"
	if err.Error() != want {
		t.Fatalf("err = %q\nwant  %q", err, want)
	}

	// A registry that does not answer is an error, not a verdict.
	down := schemacheck.NewRegistry("http://127.0.0.1:1", &schemacheck.RegistryOptions{Timeout: time.Second})
	if _, err := startService(ctx, down, cfg, placedV1(topic)); err == nil || errors.Is(err, outbox.ErrIncompatibleSchema) || !errors.Is(err, registry.ErrUnavailable) {
		t.Fatalf("registry down: %v", err)
	}
}

func TestEventSchema_SubjectAndTextFollowTheWriter(t *testing.T) {
	es := placedV1("orders")[0]
	text, err := es.Text()
	if err != nil || !strings.Contains(text, `"name":"OrderPlaced"`) {
		t.Fatalf("text %s, %v", text, err)
	}
	for st, want := range map[outbox.SubjectStrategy]string{outbox.TopicName: "orders-value", outbox.RecordName: "OrderPlaced", outbox.TopicRecordName: "orders-OrderPlaced"} {
		got, _, err := es.Subject(&outbox.Config{SubjectStrategy: st, TopicSubjectStrategies: map[string]outbox.SubjectStrategy{"other": outbox.RecordName}})
		if err != nil || got != want {
			t.Errorf("%v: %q %v, want %q", st, got, err, want)
		}
		if p, err := outbox.ParseSubjectStrategy(st.String()); err != nil || p != st {
			t.Errorf("ParseSubjectStrategy(%q) = %v %v", st.String(), p, err)
		}
	}
	for _, name := range []string{"TopicNameStrategy", "topic-name", "record_name", "TOPIC-RECORD"} {
		if _, err := outbox.ParseSubjectStrategy(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, _, err := (outbox.EventSchema{Topic: "t"}).Subject(nil); !errors.Is(err, outbox.ErrInvalidEvent) {
		t.Fatalf("no value: %v", err)
	}
	if _, _, err := (outbox.EventSchema{Topic: "t", Schema: `{"type":"record"`}).Subject(nil); !errors.Is(err, outbox.ErrInvalidEvent) {
		t.Fatalf("bad schema: %v", err)
	}
}
