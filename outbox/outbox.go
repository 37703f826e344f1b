package outbox

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/avrotype"
	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/wire"
	"github.com/relaybox/relaybox/migrations"
)

const (
	// Shards is the number of shards, fixed by migration 001.
	Shards = 64
	// MaxKeyBytes is the longest key (in UTF-8 bytes) the table accepts.
	MaxKeyBytes = 1024
	// DefaultChannel is the NOTIFY channel the writer signals and the relay listens on.
	DefaultChannel = "relaybox_outbox"
	// DefaultMaxPayloadBytes is Kafka's default 1 MiB message limit less the 5 bytes of
	// wire framing and 8 KiB kept for the key, headers and record batch overhead.
	DefaultMaxPayloadBytes = 1<<20 - wire.HeaderLen - 8<<10
)

// SubjectStrategy names the registry subject an event's schema is registered under,
// as Confluent's serializers do.
type SubjectStrategy int

const (
	// TopicName: "<topic>-value" (the default).
	TopicName SubjectStrategy = iota
	// RecordName: the record's full name, e.g. "shop.v1.OrderCreated".
	RecordName
	// TopicRecordName: "<topic>-<record full name>".
	TopicRecordName
)

// Subject returns the subject for topic and schema under the strategy.
func (s SubjectStrategy) Subject(topic string, schema avro.Schema) string {
	name := ""
	if n, ok := schema.(avro.NamedSchema); ok {
		name = n.FullName()
	}
	switch {
	case s == RecordName && name != "":
		return name
	case s == TopicRecordName && name != "":
		return topic + "-" + name
	}
	return topic + "-value"
}

// Config configures a [Writer]. The zero value is usable.
type Config struct {
	// Schema is the Postgres schema holding relaybox's tables. Defaults to "relaybox".
	Schema string
	// Channel is the NOTIFY channel. Defaults to DefaultChannel.
	Channel string
	// DisableNotify skips pg_notify; the relay then finds rows by polling only.
	DisableNotify bool
	// MaxPayloadBytes bounds the Avro-encoded value. Defaults to DefaultMaxPayloadBytes.
	MaxPayloadBytes int
	// Source fills the envelope's source (e.g. the service name) when an event has none.
	Source string
	// SubjectStrategy is the default naming strategy. Defaults to TopicName.
	SubjectStrategy SubjectStrategy
	// TopicSubjectStrategies overrides SubjectStrategy per topic.
	TopicSubjectStrategies map[string]SubjectStrategy
	// Propagator extracts trace context from ctx. Defaults to W3C TraceContext.
	Propagator propagation.TextMapPropagator
	// TracerProvider makes the write span (see "Tracing" in the package doc). Defaults
	// to the global provider (otel.GetTracerProvider), looked up at each write.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns a copy of c (nil: the zero Config) with every unset field
// given its default.
func (c *Config) WithDefaults() *Config {
	r := Config{}
	if c != nil {
		r = *c
	}
	if r.Schema == "" {
		r.Schema = migrations.DefaultSchema
	}
	if r.Channel == "" {
		r.Channel = DefaultChannel
	}
	if r.MaxPayloadBytes == 0 {
		r.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if r.Propagator == nil {
		r.Propagator = propagation.TraceContext{}
	}
	return &r
}

// maxChannel is Postgres's limit on a NOTIFY channel: pg_notify refuses a longer one,
// which would fail every Write.
const maxChannel = 63

// Validate returns an error naming the first field of c that cannot work, as New
// would with c: unset fields take their defaults first.
func (c *Config) Validate() error {
	r := c.WithDefaults()
	switch {
	case r.MaxPayloadBytes < 0:
		return fmt.Errorf("outbox: Config.MaxPayloadBytes must be positive, got %d", r.MaxPayloadBytes)
	case len(r.Channel) > maxChannel:
		return fmt.Errorf("outbox: Config.Channel is %d bytes; Postgres allows %d for a channel", len(r.Channel), maxChannel)
	case strings.ContainsRune(r.Schema, 0) || strings.ContainsRune(r.Channel, 0):
		return errors.New("outbox: Config.Schema and Config.Channel must not contain NUL")
	case !r.SubjectStrategy.valid():
		return fmt.Errorf("outbox: Config.SubjectStrategy %d is not TopicName, RecordName or TopicRecordName", r.SubjectStrategy)
	}
	for topic, st := range r.TopicSubjectStrategies {
		if !st.valid() {
			return fmt.Errorf("outbox: Config.TopicSubjectStrategies[%q] %d is not TopicName, RecordName or TopicRecordName", topic, st)
		}
	}
	return nil
}

func (s SubjectStrategy) valid() bool {
	return s == TopicName || s == RecordName || s == TopicRecordName
}

// Event is one event to record.
type Event struct {
	// ID is the event id; a UUIDv7 is assigned when zero.
	ID uuid.UUID
	// Topic is the Kafka topic. Required.
	Topic string
	// Key is the aggregate id: the Kafka record key and the unit of ordering. Required,
	// at most MaxKeyBytes.
	Key string
	// Type is the event type, e.g. "OrderCreated". Required.
	Type string
	// AggregateType is e.g. "Order". Optional.
	AggregateType string
	// Value is encoded to Avro. Required.
	Value any
	// Schema optionally gives the Avro schema text for Value, overriding the type's.
	Schema string
	// OccurredAt defaults to the time of the write.
	OccurredAt time.Time
	// CorrelationID and CausationID are optional.
	CorrelationID string
	CausationID   string
	// Source overrides Config.Source.
	Source string
	// Headers are extra Kafka headers. Names used by relaybox itself are refused.
	Headers map[string]string
}

// Errors returned for bad input. Write wraps them with the event's position.
var (
	ErrInvalidEvent = errors.New("invalid event")
	ErrTooLarge     = errors.New("payload too large")
	ErrEncoding     = errors.New("value does not encode with its Avro schema")
)

// Writer writes events into the outbox. It is safe for concurrent use.
type Writer struct {
	cfg       Config
	pool      *pgxpool.Pool
	outboxT   string
	shapes    sync.Map // insert shape -> statement text
	schemaSQL string

	mu      sync.Mutex
	parsed  map[string]*schemaInfo // by schema text given in Event.Schema
	stored  map[[32]byte]bool      // fingerprints known committed (via pool)
	storing map[[32]byte]*sync.Mutex
}

type schemaInfo struct {
	schema      avro.Schema
	text        string
	fingerprint [32]byte
}

var typeSchemas sync.Map // reflect.Type -> *schemaInfo

var topicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// New returns a Writer. pool is optional: with a pool, each schema is stored once
// (committed on its own, outside the caller's transaction) and skipped afterwards;
// without one, every Write upserts its schemas inside the caller's transaction.
func New(pool *pgxpool.Pool, cfg *Config) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := *cfg.WithDefaults()
	outboxT := pgx.Identifier{c.Schema, "outbox"}.Sanitize()
	schemasT := pgx.Identifier{c.Schema, "schemas"}.Sanitize()
	return &Writer{
		cfg:       c,
		pool:      pool,
		outboxT:   outboxT,
		schemaSQL: `INSERT INTO ` + schemasT + ` (fingerprint, schema) SELECT * FROM unnest($1::bytea[], $2::text[]) ON CONFLICT DO NOTHING`,
		parsed:    map[string]*schemaInfo{},
		stored:    map[[32]byte]bool{},
		storing:   map[[32]byte]*sync.Mutex{},
	}, nil
}

// Shard returns the shard of key, as the outbox table's generated column computes it:
// the first four bytes of md5(key) as a big-endian uint32, modulo Shards.
func Shard(key string) int {
	sum := md5.Sum([]byte(key))
	return int(binary.BigEndian.Uint32(sum[:4]) % Shards)
}

// Fingerprint is the schema store's key for a schema text: its SHA-256.
func Fingerprint(schemaText string) [32]byte { return sha256.Sum256([]byte(schemaText)) }

type row struct {
	id                                                      uuid.UUID
	topic, key, typ, aggType, subject                       string
	fp                                                      [32]byte
	payload                                                 []byte
	headers                                                 string
	occurred                                                time.Time
	corr, caus, source, traceparent, tracestate, schemaText string
}

// Write records events in tx. The rows exist if and only if tx commits: a rollback
// (of tx, or of the savepoint tx stands for) leaves nothing behind. All events are
// validated and encoded before tx is touched: on bad input Write returns an error
// wrapping ErrInvalidEvent, ErrTooLarge or ErrEncoding and tx is left as it was.
// Write works with any pgx.Tx: from a pool, a conn, or a nested (savepoint) Begin.
func (w *Writer) Write(ctx context.Context, tx pgx.Tx, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	if tx == nil {
		return fmt.Errorf("outbox: %w: nil transaction", ErrInvalidEvent)
	}
	b := &pgx.Batch{}
	ctx, span, err := w.enqueue(ctx, b, events)
	if err != nil {
		return err
	}
	if err = tx.SendBatch(ctx, b).Close(); err != nil {
		err = fmt.Errorf("outbox: writing %d event(s): %w", len(events), explain(err))
	}
	endSpan(span, err)
	return err
}

// Queue checks and encodes events exactly as Write does (same errors; on error
// nothing is queued) and appends the statements that insert them to b. Send b inside
// the transaction together with the business statements, tx.SendBatch(ctx, b): the
// business rows and the events then cost one round trip to Postgres, where Write
// costs one of its own. The rows exist if and only if the transaction that sent b
// commits. A failure of the events' statements is returned by the batch's results
// (BatchResults.Close returns the first error), and aborts the transaction.
func (w *Writer) Queue(ctx context.Context, b *pgx.Batch, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	if b == nil {
		return fmt.Errorf("outbox: %w: nil batch", ErrInvalidEvent)
	}
	_, span, err := w.enqueue(ctx, b, events)
	if err == nil {
		endSpan(span, nil)
	}
	return err
}

// enqueue is Queue; when ctx carries a span, it also starts the write span, which
// the events record as their trace context. On error the span is ended; otherwise
// the caller ends it.
func (w *Writer) enqueue(ctx context.Context, b *pgx.Batch, events []Event) (context.Context, trace.Span, error) {
	rows := make([]row, len(events))
	caller := ctx
	ctx, span := w.startSpan(ctx)
	carrier := propagation.MapCarrier{}
	w.cfg.Propagator.Inject(ctx, carrier)
	now := time.Now().UTC()
	for i := range events {
		r, err := w.prepare(&events[i], now)
		if err != nil {
			if len(events) > 1 {
				err = fmt.Errorf("outbox: event %d of %d: %w", i+1, len(events), err)
			} else {
				err = fmt.Errorf("outbox: %w", err)
			}
			endSpan(span, err)
			return ctx, nil, err
		}
		r.traceparent, r.tracestate = carrier["traceparent"], carrier["tracestate"]
		rows[i] = r
	}
	markWrite(caller, span, rows)
	w.queue(ctx, b, rows)
	return ctx, span, nil
}

// Validate checks and encodes events exactly as Write does, without writing: it returns
// the error Write would return for bad input, and nil where Write would proceed.
func (w *Writer) Validate(events ...Event) error {
	now := time.Now().UTC()
	for i := range events {
		if _, err := w.prepare(&events[i], now); err != nil {
			return fmt.Errorf("outbox: event %d of %d: %w", i+1, len(events), err)
		}
	}
	return nil
}

func (w *Writer) prepare(e *Event, now time.Time) (row, error) {
	var r row
	switch {
	case !topicRE.MatchString(e.Topic):
		return r, fmt.Errorf("%w: topic %q must be 1-249 characters of [a-zA-Z0-9._-]", ErrInvalidEvent, e.Topic)
	case e.Key == "":
		return r, fmt.Errorf("%w: empty key", ErrInvalidEvent)
	case len(e.Key) > MaxKeyBytes:
		return r, fmt.Errorf("%w: key is %d bytes, limit %d", ErrInvalidEvent, len(e.Key), MaxKeyBytes)
	case !utf8.ValidString(e.Key):
		return r, fmt.Errorf("%w: key is not valid UTF-8", ErrInvalidEvent)
	case e.Type == "":
		return r, fmt.Errorf("%w: empty event type", ErrInvalidEvent)
	case e.Value == nil:
		return r, fmt.Errorf("%w: nil value", ErrInvalidEvent)
	}
	for k := range e.Headers {
		if envelope.Reserved(k) || k == "" {
			return r, fmt.Errorf("%w: header name %q is reserved or empty", ErrInvalidEvent, k)
		}
	}
	si, err := w.schemaFor(e)
	if err != nil {
		return r, err
	}
	payload, err := avro.Marshal(si.schema, e.Value)
	if err != nil {
		return r, fmt.Errorf("%w: %T: %v", ErrEncoding, e.Value, err)
	}
	if len(payload) > w.cfg.MaxPayloadBytes {
		return r, fmt.Errorf("%w: %d bytes encoded, limit %d (Config.MaxPayloadBytes)", ErrTooLarge, len(payload), w.cfg.MaxPayloadBytes)
	}
	headers := "{}"
	if len(e.Headers) > 0 {
		b, err := json.Marshal(e.Headers)
		if err != nil {
			return r, fmt.Errorf("%w: headers: %v", ErrInvalidEvent, err)
		}
		headers = string(b)
	}
	id := e.ID
	if id == uuid.Nil {
		if id, err = uuid.NewV7(); err != nil {
			return r, err
		}
	}
	occurred := e.OccurredAt
	if occurred.IsZero() {
		occurred = now
	}
	source := e.Source
	if source == "" {
		source = w.cfg.Source
	}
	strategy := w.cfg.SubjectStrategy
	if s, ok := w.cfg.TopicSubjectStrategies[e.Topic]; ok {
		strategy = s
	}
	return row{
		id: id, topic: e.Topic, key: e.Key, typ: e.Type, aggType: e.AggregateType,
		subject: strategy.Subject(e.Topic, si.schema), fp: si.fingerprint, payload: payload,
		headers: headers, occurred: occurred, corr: e.CorrelationID, caus: e.CausationID,
		source: source, schemaText: si.text,
	}, nil
}

func (w *Writer) schemaFor(e *Event) (*schemaInfo, error) {
	if e.Schema != "" {
		w.mu.Lock()
		si := w.parsed[e.Schema]
		w.mu.Unlock()
		if si != nil {
			return si, nil
		}
		s, err := avro.Parse(e.Schema)
		if err != nil {
			return nil, fmt.Errorf("%w: Event.Schema does not parse: %v", ErrInvalidEvent, err)
		}
		si = newSchemaInfo(s, e.Schema)
		w.mu.Lock()
		w.parsed[e.Schema] = si
		w.mu.Unlock()
		return si, nil
	}
	t := reflect.TypeOf(e.Value)
	if si, ok := typeSchemas.Load(t); ok {
		return si.(*schemaInfo), nil
	}
	st := t
	for st.Kind() == reflect.Pointer {
		st = st.Elem()
	}
	s, err := avrotype.Of(st)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
	}
	text, err := avrotype.Text(st)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidEvent, err)
	}
	si := newSchemaInfo(s, text)
	typeSchemas.Store(t, si)
	return si, nil
}

// newSchemaInfo keeps the schema's full text (defaults, docs, logical types): that is
// what the registry checks compatibility on. avro.Schema.String() is the Parsing
// Canonical Form, which drops defaults, so it is not used here.
func newSchemaInfo(s avro.Schema, text string) *schemaInfo {
	text = strings.TrimSpace(text)
	return &schemaInfo{schema: s, text: text, fingerprint: Fingerprint(text)}
}

func (w *Writer) queue(ctx context.Context, b *pgx.Batch, rows []row) {
	var (
		schemaFPs   [][]byte
		schemaTexts []string
		seen        = map[[32]byte]bool{}
	)
	for i := range rows {
		r := &rows[i]
		if !seen[r.fp] {
			seen[r.fp] = true
			if !w.storeOutside(ctx, r.fp, r.schemaText) {
				schemaFPs = append(schemaFPs, r.fp[:])
				schemaTexts = append(schemaTexts, r.schemaText)
			}
		}
	}
	if len(schemaFPs) > 0 {
		b.Queue(w.schemaSQL, schemaFPs, schemaTexts)
	}
	// The insert carries the NOTIFY too (delivered at commit, never on rollback).
	sql, args := w.insertStatement(rows)
	b.Queue(sql, args...)
}

// shardList is the NOTIFY payload: the distinct shards of rows, ascending, comma
// separated ("3,17,40"). The relay wakes only those shards' drains; an empty payload
// (what a plain-SQL writer may send) wakes them all.
func shardList(rows []row) string {
	var seen [Shards]bool
	for i := range rows {
		seen[Shard(rows[i].key)] = true
	}
	b := make([]byte, 0, 64)
	for s, ok := range seen {
		if ok {
			if len(b) > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(s), 10)
		}
	}
	return string(b)
}

// storeOutside stores the schema through the pool (committed on its own) the first
// time this process sees it. It reports whether the schema is known to be committed.
func (w *Writer) storeOutside(ctx context.Context, fp [32]byte, text string) bool {
	if w.pool == nil {
		return false
	}
	w.mu.Lock()
	if w.stored[fp] {
		w.mu.Unlock()
		return true
	}
	m := w.storing[fp]
	if m == nil {
		m = &sync.Mutex{}
		w.storing[fp] = m
	}
	w.mu.Unlock()
	m.Lock()
	defer m.Unlock()
	w.mu.Lock()
	done := w.stored[fp]
	w.mu.Unlock()
	if done {
		return true
	}
	// The caller's transactions may hold every pooled connection (with one connection,
	// the caller's own always does): then do not wait for one, and never wait long
	// here; the in-transaction upsert is always a correct fallback.
	if st := w.pool.Stat(); st.IdleConns() == 0 && st.TotalConns() >= st.MaxConns() {
		return false
	}
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err := w.pool.Exec(sctx, w.schemaSQL, [][]byte{fp[:]}, []string{text})
	if err != nil {
		return false // fall back to the in-transaction upsert
	}
	w.mu.Lock()
	w.stored[fp] = true
	w.mu.Unlock()
	return true
}

func explain(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "25P02":
			return fmt.Errorf("transaction is aborted by an earlier error; roll it back: %w", err)
		case "42P01":
			return fmt.Errorf("outbox table missing (run `relaybox migrate up`): %w", err)
		}
	}
	if errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("transaction already committed or rolled back: %w", err)
	}
	return err
}

// Publish records one event whose value is v, in tx. It is Write for the common case.
func Publish[T any](ctx context.Context, w *Writer, tx pgx.Tx, topic, key, eventType string, v T) error {
	return w.Write(ctx, tx, Event{Topic: topic, Key: key, Type: eventType, Value: v})
}
