package consumer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Envelope is what every event carries besides its value: the relaybox envelope
// from the record's headers and where the record came from. [Message] and [Event]
// embed it.
type Envelope struct {
	// ID is the event id (relaybox.event_id header), or Config.DedupKey of the
	// record when it has none. It is the dedup key in processed_events.
	ID string
	// Type is the event type (relaybox.event_type header), or the full name of the
	// writer schema when the header is missing.
	Type string
	// Key is the record key: the aggregate id for events from the relay.
	Key string
	// AggregateType, CorrelationID, CausationID and Source are the envelope's
	// (empty when not set).
	AggregateType, CorrelationID, CausationID, Source string
	// OccurredAt is when the event happened, per its writer (zero if unknown).
	OccurredAt time.Time
	// Headers holds every record header (for a repeated name, the last value).
	Headers map[string]string
	// Topic, Partition and Offset locate the record.
	Topic     string
	Partition int32
	Offset    int64
}

// Message is one record as a [Handler] sees it: its [Envelope] and the Avro body
// still encoded. Typed handlers registered with [Handle] receive an [Event] instead.
type Message struct {
	Envelope
	// SchemaID is the registry id of the writer schema.
	SchemaID int
	// Body is the Avro-encoded value (after the 5-byte wire header). It aliases the
	// record: do not modify it.
	Body []byte
	// Record is the Kafka record itself.
	Record *kgo.Record

	writer  avro.Schema
	dec     *decoder
	decoded any // pointer to the value decoded for a typed route
}

// Decode decodes the body into dst (a non-nil pointer) with Avro schema resolution:
// the writer schema is the record's, the reader schema is dst's type's (its
// AvroSchema() method or one derived from its fields and `avro` tags). A failure
// is a *DecodeError.
func (m *Message) Decode(dst any) error {
	if m.dec == nil || m.writer == nil {
		return errors.New("consumer: Message.Decode on a message not built by a Consumer")
	}
	if m.decoded != nil && reflect.TypeOf(m.decoded) == reflect.TypeOf(dst) {
		reflect.ValueOf(dst).Elem().Set(reflect.ValueOf(m.decoded).Elem())
		return nil
	}
	return m.dec.into(m.SchemaID, m.writer, m.Body, dst)
}

// Event is a decoded event, as typed handlers registered with [Handle] receive it.
type Event[T any] struct {
	Envelope
	// Value is the payload, decoded into T.
	Value T
}

// Handler applies one message inside tx, the transaction that also records the
// event as processed: return nil and both commit; return an error and both roll
// back, and the message is retried (or dead-lettered, see [Permanent]). A handler
// must do its database work through tx, not through another connection, or its
// effects escape the exactly-once guarantee. ctx carries the record's span, a child
// of the trace context in the record's traceparent/tracestate headers.
type Handler interface {
	Handle(ctx context.Context, tx pgx.Tx, m *Message) error
}

// HandlerFunc adapts a function to a [Handler].
type HandlerFunc func(ctx context.Context, tx pgx.Tx, m *Message) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, tx pgx.Tx, m *Message) error { return f(ctx, tx, m) }

// Middleware wraps every handler of a Consumer (see [Consumer.Use]); for logging,
// metrics or tracing around handler calls.
type Middleware func(Handler) Handler

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: a handler returning it has its record
// dead-lettered at once (reason "permanent"). Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err (or an error it wraps) came from [Permanent].
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// route is what a registered event type runs: t is the Go type a typed handler
// decodes into before the transaction (nil for a raw Handler).
type route struct {
	h Handler
	t reflect.Type
}

// Handle registers fn for eventType on c: each record of that type is decoded into
// a T (Avro schema resolution from the writer schema to T's schema) and, if it
// decodes, fn runs in its dedup transaction. A record that does not decode into T
// is dead-lettered without calling fn. Handle panics if T has no Avro schema, if
// eventType already has a handler, or if c is running.
func Handle[T any](c *Consumer, eventType string, fn func(ctx context.Context, tx pgx.Tx, ev Event[T]) error) {
	t := reflect.TypeFor[T]()
	if _, err := readerSchema(t); err != nil {
		panic(fmt.Sprintf("consumer.Handle[%v](%q): %v", t, eventType, err))
	}
	h := HandlerFunc(func(ctx context.Context, tx pgx.Tx, m *Message) error {
		p, ok := m.decoded.(*T)
		if !ok {
			p = new(T)
			if err := m.Decode(p); err != nil {
				return Permanent(err)
			}
		}
		return fn(ctx, tx, Event[T]{Envelope: m.Envelope, Value: *p})
	})
	c.register(eventType, route{h: h, t: t})
}

// Handle registers h for eventType. It panics if eventType already has a handler or
// if c is running.
func (c *Consumer) Handle(eventType string, h Handler) {
	if h == nil {
		panic(fmt.Sprintf("consumer: nil handler for %q", eventType))
	}
	c.register(eventType, route{h: h})
}

// HandleFunc registers fn for eventType, like Handle.
func (c *Consumer) HandleFunc(eventType string, fn func(ctx context.Context, tx pgx.Tx, m *Message) error) {
	c.Handle(eventType, HandlerFunc(fn))
}

// Use adds middleware around every handler, the first given outermost. Call it
// before Run.
func (c *Consumer) Use(mw ...Middleware) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		panic("consumer: Use after Run")
	}
	c.middleware = append(c.middleware, mw...)
}

func (c *Consumer) register(eventType string, r route) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.started:
		panic(fmt.Sprintf("consumer: handler for %q registered after Run", eventType))
	case eventType == "":
		panic("consumer: handler for an empty event type")
	case c.routes[eventType].h != nil:
		panic(fmt.Sprintf("consumer: a handler for %q is already registered", eventType))
	}
	c.routes[eventType] = r
}
