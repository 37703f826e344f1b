// Package registry wraps srclient for relaybox: an http.Client with timeouts, every
// call bound to its context (srclient takes none: each call gets a client whose
// transport attaches the call's context to its requests), caches of subject+schema → id
// and id → parsed schema, and error classification (incompatible, not found,
// unavailable) that holds for Confluent Schema Registry and for Apicurio's
// Confluent-compatible API alike.
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
	"golang.org/x/sync/singleflight"

	"github.com/relaybox/relaybox/internal/redact"
)

// Options configures a Client.
type Options struct {
	// Username and Password for HTTP basic auth. Never logged.
	Username, Password string
	// Timeout bounds every HTTP call. Defaults to 10s.
	Timeout time.Duration
	// Transport overrides the HTTP transport (e.g. for TLS settings).
	Transport http.RoundTripper
}

// Client is a caching schema registry client. Safe for concurrent use.
type Client struct {
	url        string // for requests
	shown      string // for error texts: the URL without its userinfo's password
	timeout    time.Duration
	transport  http.RoundTripper // normalizer over the configured transport
	user, pass string

	flight  singleflight.Group
	mu      sync.RWMutex
	ids     map[idKey]int
	schemas map[int]avro.Schema
}

// New returns a Client for the registry at url (e.g. http://host:8081, or Apicurio's
// http://host:8080/apis/ccompat/v7).
func New(url string, o Options) *Client {
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	base := o.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	return &Client{url: strings.TrimRight(url, "/"), shown: redact.URL(url), timeout: o.Timeout, transport: normalizer{base},
		user: o.Username, pass: o.Password, ids: map[idKey]int{}, schemas: map[int]avro.Schema{}}
}

// sr returns an srclient whose requests carry ctx: srclient v0.7.4 builds its requests
// without a context, so the transport attaches it. The client is cheap (a few maps);
// caching is relaybox's own (ids, schemas), srclient's is off.
func (c *Client) sr(ctx context.Context) *srclient.SchemaRegistryClient {
	hc := &http.Client{Timeout: c.timeout, Transport: ctxTransport{ctx: ctx, base: c.transport}}
	sr := srclient.NewSchemaRegistryClient(c.url, srclient.WithClient(hc))
	sr.CodecCreationEnabled(false)
	sr.CachingEnabled(false)
	if c.user != "" {
		sr.SetCredentials(c.user, c.pass)
	}
	return sr
}

// ctxTransport binds every request it carries to ctx.
type ctxTransport struct {
	ctx  context.Context
	base http.RoundTripper
}

func (t ctxTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.base.RoundTrip(req.WithContext(t.ctx))
}

// Error is a registry answer that is not a success.
type Error struct {
	Op      string
	Subject string
	Code    int // Confluent error code; the HTTP status when the registry gave none
	Message string
}

func (e *Error) Error() string {
	s := "schema registry " + e.Op
	if e.Subject != "" {
		s += " " + e.Subject
	}
	return fmt.Sprintf("%s: %d %s", s, e.Code, e.Message)
}

// codeReadOnly is the registry's "operation not permitted" answer in read-only
// mode (during an import or a failover): retried like an outage.
const codeReadOnly = 42205

// ErrUnavailable wraps transport failures (connection refused, timeouts, 5xx).
var ErrUnavailable = errors.New("schema registry unavailable")

// IsIncompatible reports whether the registry refused a schema as incompatible or
// invalid (HTTP 409 / 422): retrying will not help until the schema or rule changes.
func IsIncompatible(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	if strings.Contains(e.Message, "already exists") {
		return false
	}
	// 42201 is an invalid schema; 42204 (invalid mode) and 42205 (read-only mode) say
	// nothing about the schema: not incompatible (classify makes 42205 unavailable).
	return e.Code == 409 || e.Code == 422 || e.Code == 42201 || strings.Contains(e.Message, "ncompatible")
}

// IsNotFound reports whether the registry does not know the subject, version or id.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Code == 404 || e.Code/100 == 404)
}

// serverError reports whether err is a 5xx answer: the registry is up but failed
// (Apicurio's H2 store times out on locks under concurrent registrations).
func serverError(err error) bool {
	var se srclient.Error
	var e *Error
	switch {
	case errors.As(err, &se):
		return is5xx(se.Code)
	case errors.As(err, &e):
		return is5xx(e.Code)
	}
	return false
}

// is5xx reports whether a status or Confluent error code (50001, ...) is a server error.
func is5xx(code int) bool {
	return code >= 500 && code < 600 || code/100 >= 500 && code/100 < 600
}

// retry runs f up to three times while the registry answers 5xx.
func retry[T any](ctx context.Context, f func() (T, error)) (T, error) {
	var v T
	var err error
	for i := 0; i < 3; i++ {
		if v, err = f(); err == nil || !serverError(err) {
			return v, err
		}
		if sleep(ctx, time.Duration(i+1)*250*time.Millisecond) != nil {
			return v, err
		}
	}
	return v, err
}

// sleep waits d or until ctx ends, and returns ctx's error if it ended.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// classify turns an srclient or transport error into an *Error or ErrUnavailable. When
// ctx ended, the error wraps both ErrUnavailable and ctx's error (errors.Is(err,
// context.Canceled) holds): callers that treat ErrUnavailable as "try again later"
// (the relay, the consumer) never take a cancellation for a verdict on the schema.
func classify(ctx context.Context, op, subject string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, cerr)
	}
	var se srclient.Error
	e, ok := err.(*Error)
	if !ok && errors.As(err, &se) {
		e, ok = &Error{Op: op, Subject: subject, Code: se.Code, Message: se.Message}, true
	}
	if ok {
		if is5xx(e.Code) || e.Code == codeReadOnly {
			return fmt.Errorf("%w: %v", ErrUnavailable, e)
		}
		return e
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, op, err)
}

// idKey is the cache key of an id: a struct, so that a lookup (once per record the
// relay publishes) builds no string.
type idKey struct{ subject, schema string }

// ID returns the registry id of schema under subject: from the cache, else by lookup,
// else (when register is true) by registering it.
//
// The call is bound to ctx: cancelling it ends the HTTP request and returns an error
// wrapping ctx's error. Concurrent calls for the same subject and schema share one
// request (and so the first caller's context).
func (c *Client) ID(ctx context.Context, subject, schema string, register bool) (int, error) {
	k := idKey{subject, schema}
	c.mu.RLock()
	id, ok := c.ids[k]
	c.mu.RUnlock()
	if ok {
		return id, nil
	}
	// One call per subject and schema at a time: concurrent first registrations of
	// the same subject race inside some registries (Apicurio answers "already exists").
	v, err, _ := c.flight.Do(fmt.Sprint(register)+subject+"\x00"+schema, func() (any, error) {
		sr := c.sr(ctx)
		if !register {
			s, err := retry(ctx, func() (*srclient.Schema, error) { return sr.LookupSchema(subject, schema, srclient.Avro) })
			if err != nil {
				return 0, classify(ctx, "lookup", subject, err)
			}
			return s.ID(), nil
		}
		var lerr error
		for attempt := 0; attempt < 5; attempt++ {
			s, err := retry(ctx, func() (*srclient.Schema, error) { return sr.CreateSchema(subject, schema, srclient.Avro) })
			if err == nil {
				return s.ID(), nil
			}
			cerr := classify(ctx, "register", subject, err)
			var e *Error
			if !errors.As(cerr, &e) || !strings.Contains(e.Message, "already exists") {
				return 0, cerr
			}
			// Registered by a concurrent client: look it up. Apicurio can answer "already
			// exists" before the artifact is visible to a lookup: then try again.
			s, err = retry(ctx, func() (*srclient.Schema, error) { return sr.LookupSchema(subject, schema, srclient.Avro) })
			if err == nil {
				return s.ID(), nil
			}
			lerr = classify(ctx, "lookup", subject, err)
			if !IsNotFound(lerr) {
				return 0, lerr
			}
			if err := sleep(ctx, time.Duration(attempt+1)*200*time.Millisecond); err != nil {
				return 0, classify(ctx, "lookup", subject, err)
			}
		}
		return 0, lerr
	})
	if err != nil {
		return 0, err
	}
	id = v.(int)
	c.mu.Lock()
	c.ids[k] = id
	c.mu.Unlock()
	return id, nil
}

// Schema returns the parsed schema with the given id, cached. The call is bound to ctx.
func (c *Client) Schema(ctx context.Context, id int) (avro.Schema, error) {
	c.mu.RLock()
	s, ok := c.schemas[id]
	c.mu.RUnlock()
	if ok {
		return s, nil
	}
	sr := c.sr(ctx)
	got, err := retry(ctx, func() (*srclient.Schema, error) { return sr.GetSchema(id) })
	if err != nil {
		return nil, classify(ctx, fmt.Sprintf("get schema id %d", id), "", err)
	}
	parsed, err := avro.Parse(got.Schema())
	if err != nil {
		return nil, fmt.Errorf("schema id %d does not parse: %w", id, err)
	}
	c.mu.Lock()
	c.schemas[id] = parsed
	c.mu.Unlock()
	return parsed, nil
}

// Check verifies that the registry answers GET /subjects. The call is bound to ctx.
func (c *Client) Check(ctx context.Context) error {
	if _, err := c.sr(ctx).GetSubjects(); err != nil {
		return classify(ctx, "GET /subjects at "+c.shown, "", err)
	}
	return nil
}

// SetCompatibility sets the subject's compatibility level (e.g. "BACKWARD"). The call
// is bound to ctx.
func (c *Client) SetCompatibility(ctx context.Context, subject, level string) error {
	_, err := c.sr(ctx).ChangeSubjectCompatibilityLevel(subject, srclient.CompatibilityLevel(level))
	if err != nil {
		return classify(ctx, "set compatibility", subject, err)
	}
	return nil
}

// normalizer makes every error answer carry a JSON body with a non-zero error_code, so
// srclient reports it as srclient.Error: Apicurio answers 409 with error_code 0, and a
// wrong URL answers 404 with HTML.
type normalizer struct{ base http.RoundTripper }

func (n normalizer) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := n.base.RoundTrip(req)
	if err != nil || resp.StatusCode < 400 {
		return resp, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	var e struct {
		Code    int    `json:"error_code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) != nil || e.Message == "" {
		msg := strings.TrimSpace(string(body))
		if len(msg) > 200 || strings.HasPrefix(msg, "<") {
			msg = ""
		}
		e.Message = strings.TrimSpace(resp.Status + " " + msg)
	}
	if e.Code == 0 {
		e.Code = resp.StatusCode
	}
	nb, _ := json.Marshal(e)
	resp.Body = io.NopCloser(bytes.NewReader(nb))
	resp.ContentLength = int64(len(nb))
	resp.Header.Set("Content-Type", "application/json")
	return resp, nil
}
