package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sync"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/relaybox/relaybox/internal/avrotype"
	"github.com/relaybox/relaybox/internal/wire"
)

// Errors a [Registry] returns for schemas that retrying will not bring.
var (
	// ErrSchemaNotFound: the registry does not know the record's schema id.
	ErrSchemaNotFound = errors.New("schema id not found in the registry")
	// ErrSchemaInvalid: the registry's schema for the id cannot be used.
	ErrSchemaInvalid = errors.New("registry schema is not a usable Avro schema")
)

// Dead-letter reasons: the relaybox.dlq.reason header and the reason given to
// Hooks.OnDeadLetter.
const (
	// ReasonMalformed: the value is not in the Confluent wire format (shorter than
	// its 5-byte header, or a magic byte other than 0).
	ReasonMalformed = "malformed"
	// ReasonUnknownSchema: the registry does not know the schema id (or its schema
	// does not parse).
	ReasonUnknownSchema = "unknown_schema"
	// ReasonIncompatibleSchema: the writer schema cannot be read into the handler's
	// Go type under Avro schema resolution.
	ReasonIncompatibleSchema = "incompatible_schema"
	// ReasonBadBody: the Avro body does not decode with its writer schema
	// (truncated or corrupt).
	ReasonBadBody = "bad_body"
	// ReasonUnknownType: no handler for the event type, under DeadLetterUnknown.
	ReasonUnknownType = "unknown_type"
	// ReasonPermanent: the handler returned an error wrapped by [Permanent].
	ReasonPermanent = "permanent"
	// ReasonExhausted: the handler failed Config.MaxAttempts times.
	ReasonExhausted = "attempts_exhausted"
)

// DecodeError says why a record could not be decoded. Such records are
// dead-lettered at once, without retries.
type DecodeError struct {
	// Reason is one of ReasonMalformed, ReasonUnknownSchema,
	// ReasonIncompatibleSchema, ReasonBadBody.
	Reason string
	// SchemaID is the writer schema id, when the framing was readable.
	SchemaID int
	// Err is the underlying error.
	Err error
}

// Error says why, with the schema id when known.
func (e *DecodeError) Error() string {
	if e.Reason == ReasonMalformed {
		return fmt.Sprintf("record undecodable (%s): %v", e.Reason, e.Err)
	}
	return fmt.Sprintf("record undecodable (%s, schema id %d): %v", e.Reason, e.SchemaID, e.Err)
}

// Unwrap returns Err.
func (e *DecodeError) Unwrap() error { return e.Err }

// decodeAPI bounds what a corrupt body can make the decoder allocate: 16 MiB for a
// string or bytes value, 1Mi elements for an array.
var decodeAPI = avro.Config{MaxByteSliceSize: 16 << 20, MaxSliceAllocSize: 1 << 20}.Freeze()

type resolveKey struct {
	t        reflect.Type
	schemaID int
}

type resolved struct {
	schema avro.Schema
	err    error
}

// decoder turns framed Avro values into Go values: the writer schema from the
// registry by id, the reader schema from the Go type, resolved once per pair.
type decoder struct {
	reg    Registry
	compat *avro.SchemaCompatibility
	cache  sync.Map // resolveKey -> resolved

	// grace is how long a schema id the registry answers "not found" for is
	// retried before it counts as unknown (Config.SchemaNotFoundGrace).
	grace     time.Duration
	missingMu sync.Mutex
	missing   map[int]time.Time // schema id -> first "not found"
}

// maxMissing bounds the schema ids remembered as missing (hostile records could
// carry any id); past it the memory starts afresh, which only lengthens a grace.
const maxMissing = 10000

func newDecoder(reg Registry, grace time.Duration) *decoder {
	return &decoder{reg: reg, compat: avro.NewSchemaCompatibility(), grace: grace, missing: map[int]time.Time{}}
}

// errSchemaNotYetFound is a "not found" answer within the grace: retried.
var errSchemaNotYetFound = errors.New("schema id not found in the registry yet (retrying within the grace)")

// notFound returns the error for a "not found" answer about id: transient while the
// id has been missing for less than the grace, a *DecodeError after.
func (d *decoder) notFound(id int, err error) error {
	now := time.Now()
	d.missingMu.Lock()
	first, ok := d.missing[id]
	if !ok {
		if len(d.missing) >= maxMissing {
			clear(d.missing)
		}
		first = now
		d.missing[id] = now
	}
	d.missingMu.Unlock()
	if now.Sub(first) < d.grace {
		return fmt.Errorf("fetching writer schema id %d: %w: %w", id, errSchemaNotYetFound, err)
	}
	return &DecodeError{Reason: ReasonUnknownSchema, SchemaID: id, Err: err}
}

// frame splits a value into its schema id and Avro body.
func frame(value []byte) (int, []byte, error) {
	id, body, err := wire.Parse(value)
	if err != nil {
		return 0, nil, &DecodeError{Reason: ReasonMalformed, Err: err}
	}
	return int(id), body, nil
}

// writer returns the writer schema of id. A *DecodeError means the schema will never
// be available; any other error is transient.
func (d *decoder) writer(ctx context.Context, id int) (avro.Schema, error) {
	s, err := d.reg.Schema(ctx, id)
	switch {
	case err == nil && s == nil:
		return nil, d.notFound(id, ErrSchemaNotFound)
	case err == nil:
		if d.grace > 0 {
			d.missingMu.Lock()
			delete(d.missing, id)
			d.missingMu.Unlock()
		}
		return s, nil
	case errors.Is(err, ErrSchemaNotFound):
		// A registry can answer 404 for an id it has just registered (Apicurio's
		// visibility lag, a lagging replica, a cache in a proxy): a bounded grace of
		// retries before the record counts as undecodable.
		return nil, d.notFound(id, err)
	case errors.Is(err, ErrSchemaInvalid):
		return nil, &DecodeError{Reason: ReasonUnknownSchema, SchemaID: id, Err: err}
	}
	return nil, fmt.Errorf("fetching writer schema id %d: %w", id, err)
}

// readerSchema is the schema of t, for resolution.
func readerSchema(t reflect.Type) (avro.Schema, error) { return avrotype.Of(t) }

// resolve returns the schema that reads data written with writer (id) into t.
func (d *decoder) resolve(t reflect.Type, id int, writer avro.Schema) (avro.Schema, error) {
	k := resolveKey{t, id}
	if r, ok := d.cache.Load(k); ok {
		return r.(resolved).schema, r.(resolved).err
	}
	r := resolved{}
	reader, err := readerSchema(t)
	switch {
	case err != nil:
		r.err = &DecodeError{Reason: ReasonIncompatibleSchema, SchemaID: id, Err: err}
	case reader.Fingerprint() == writer.Fingerprint():
		r.schema = writer
	default:
		r.schema, err = d.compat.Resolve(reader, writer)
		if err != nil {
			r.err = &DecodeError{Reason: ReasonIncompatibleSchema, SchemaID: id,
				Err: fmt.Errorf("writer schema cannot be read as %v: %w", t, err)}
		}
	}
	d.cache.Store(k, r)
	return r.schema, r.err
}

// into decodes body (written with writer, id) into dst, a non-nil pointer.
func (d *decoder) into(id int, writer avro.Schema, body []byte, dst any) (err error) {
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("consumer: Decode needs a non-nil pointer, got %T", dst)
	}
	s, err := d.resolve(rv.Type().Elem(), id, writer)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = &DecodeError{Reason: ReasonBadBody, SchemaID: id, Err: fmt.Errorf("avro decoder panicked: %v", p)}
		}
	}()
	// Not decodeAPI.Unmarshal: it takes running out of bytes at a field boundary for
	// success, so a truncated body would decode with zero values.
	r := avro.NewReader(nil, 0, avro.WithReaderConfig(decodeAPI))
	r.Reset(body)
	r.ReadVal(s, dst)
	if r.Error != nil {
		err := r.Error
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("body truncated: %w", err)
		}
		return &DecodeError{Reason: ReasonBadBody, SchemaID: id, Err: err}
	}
	return nil
}

// decode is the whole decoding path of a record value into a new value of type t:
// framing, writer schema, resolution, Avro body. It returns a pointer to the value.
func (d *decoder) decode(ctx context.Context, value []byte, t reflect.Type) (any, error) {
	id, body, err := frame(value)
	if err != nil {
		return nil, err
	}
	w, err := d.writer(ctx, id)
	if err != nil {
		return nil, err
	}
	ptr := reflect.New(t).Interface()
	if err := d.into(id, w, body, ptr); err != nil {
		return nil, err
	}
	return ptr, nil
}
