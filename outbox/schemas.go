package outbox

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/relaybox/relaybox/internal/avrotype"
	"github.com/relaybox/relaybox/schemacheck"
)

// This file holds the schema governance checks (issue 19): what a service writes,
// checked against the registry at start-up or in its tests. Nothing here is on the
// write path, which stays Postgres-only.

// EventSchema is one schema a service writes. A package-level list of them is the
// service's registration, read by [CheckSchemas] at start-up and by the
// outbox/outboxtest helpers in its tests:
//
//	var Events = []outbox.EventSchema{
//		{Topic: "orders", Value: OrderCreated{}},
//		{Topic: "orders", Schema: orderCancelledAvsc},
//	}
type EventSchema struct {
	// Topic is the Kafka topic the events go to. Required.
	Topic string
	// Value is a value of the event type, as passed in Event.Value: its schema is the
	// type's AvroSchema() or the one derived from its fields, as [Writer.Write] uses.
	Value any
	// Schema is the schema text (an .avsc), as in Event.Schema; it wins over Value.
	Schema string
}

// Text returns the schema text the writer stores (and the relay registers) for e.
func (e EventSchema) Text() (string, error) {
	if e.Schema != "" {
		return e.Schema, nil
	}
	if e.Value == nil {
		return "", fmt.Errorf("%w: EventSchema for topic %q has neither Value nor Schema", ErrInvalidEvent, e.Topic)
	}
	t := reflect.TypeOf(e.Value)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	text, err := avrotype.Text(t)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidEvent, err)
	}
	return text, nil
}

// Subject returns the registry subject a writer configured by cfg (nil for the
// defaults) names for e's events, and e's schema text.
func (e EventSchema) Subject(cfg *Config) (subject, text string, err error) {
	if e.Topic == "" {
		return "", "", fmt.Errorf("%w: EventSchema without a Topic", ErrInvalidEvent)
	}
	if text, err = e.Text(); err != nil {
		return "", "", err
	}
	s, err := schemacheck.Parse(text)
	if err != nil {
		return "", "", fmt.Errorf("%w: topic %q: %v", ErrInvalidEvent, e.Topic, err)
	}
	strategy := TopicName
	if cfg != nil {
		strategy = cfg.SubjectStrategy
		if st, ok := cfg.TopicSubjectStrategies[e.Topic]; ok {
			strategy = st
		}
	}
	return strategy.Subject(e.Topic, s), text, nil
}

// SchemaChecker asks a schema registry whether a schema may be registered under a
// subject. *schemacheck.Registry implements it.
type SchemaChecker interface {
	Check(ctx context.Context, subject, schema string) ([]schemacheck.Problem, error)
}

// ErrIncompatibleSchema is wrapped by the *SchemaError CheckSchemas returns.
var ErrIncompatibleSchema = errors.New("incompatible schema")

// SchemaError lists the incompatibilities CheckSchemas found.
type SchemaError struct {
	Problems []schemacheck.Problem
}

func (e *SchemaError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.String()
	}
	return fmt.Sprintf("%d incompatible schema change(s): %s", len(e.Problems), strings.Join(msgs, "; "))
}

// Unwrap makes errors.Is(err, ErrIncompatibleSchema) hold.
func (e *SchemaError) Unwrap() error { return ErrIncompatibleSchema }

// CheckSchemas asks the registry whether each event schema is compatible with what its
// subject holds, under the subject's configured level, naming subjects as a writer
// configured by cfg (nil for the defaults) does. It returns a *SchemaError listing
// every incompatibility, or the first error talking to the registry. A subject with no
// version yet is compatible.
//
// Call it at a service's start-up (refuse to start on error) or in its tests
// (outbox/outboxtest.RequireRegistryCompatible). It is never called on the write
// path: Write and Queue talk to Postgres only.
//
//	reg := schemacheck.NewRegistry(os.Getenv("SCHEMA_REGISTRY_URL"), nil)
//	if err := outbox.CheckSchemas(ctx, reg, cfg, Events...); err != nil {
//		log.Fatalf("not starting: %v", err)
//	}
func CheckSchemas(ctx context.Context, reg SchemaChecker, cfg *Config, events ...EventSchema) error {
	var problems []schemacheck.Problem
	for _, e := range events {
		subject, text, err := e.Subject(cfg)
		if err != nil {
			return err
		}
		ps, err := reg.Check(ctx, subject, text)
		if err != nil {
			return fmt.Errorf("checking %s: %w", subject, err)
		}
		problems = append(problems, ps...)
	}
	if len(problems) > 0 {
		return &SchemaError{Problems: problems}
	}
	return nil
}

// String returns the strategy's name as ParseSubjectStrategy reads it.
func (s SubjectStrategy) String() string {
	switch s {
	case RecordName:
		return "record"
	case TopicRecordName:
		return "topic-record"
	}
	return "topic"
}

// ParseSubjectStrategy reads a strategy name: "topic", "record", "topic-record" (also
// with a "-name" suffix, or Confluent's class names TopicNameStrategy,
// RecordNameStrategy, TopicRecordNameStrategy), case-insensitively.
func ParseSubjectStrategy(s string) (SubjectStrategy, error) {
	n := strings.ToLower(strings.TrimSpace(s))
	n = strings.TrimSuffix(n, "strategy")
	n = strings.ReplaceAll(strings.ReplaceAll(n, "-", ""), "_", "")
	n = strings.TrimSuffix(n, "name")
	switch n {
	case "topic":
		return TopicName, nil
	case "record":
		return RecordName, nil
	case "topicrecord":
		return TopicRecordName, nil
	}
	return 0, fmt.Errorf("subject strategy %q: want topic, record or topic-record", s)
}
