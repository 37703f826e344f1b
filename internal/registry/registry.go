// Package registry wraps srclient for relaybox: an http.Client with timeouts (srclient
// takes no context), caches of subject+schema → id and id → parsed schema, and error
// classification (incompatible, not found, unavailable) that holds for Confluent Schema
// Registry and for Apicurio's Confluent-compatible API alike.
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
	url string
	sr  *srclient.SchemaRegistryClient

	flight  singleflight.Group
	mu      sync.RWMutex
	ids     map[string]int
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
	hc := &http.Client{Timeout: o.Timeout, Transport: normalizer{base}}
	sr := srclient.NewSchemaRegistryClient(strings.TrimRight(url, "/"), srclient.WithClient(hc))
	sr.CodecCreationEnabled(false)
	if o.Username != "" {
		sr.SetCredentials(o.Username, o.Password)
	}
	// url is for error texts only: without the userinfo's password.
	return &Client{url: redact.URL(url), sr: sr, ids: map[string]int{}, schemas: map[int]avro.Schema{}}
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
	return errors.As(err, &se) && (se.Code >= 500 && se.Code < 600 || se.Code/100 >= 500 && se.Code/100 < 600)
}

// retry runs f up to three times while the registry answers 5xx.
func retry[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for i := 0; i < 3; i++ {
		if v, err = f(); err == nil || !serverError(err) {
			return v, err
		}
		time.Sleep(time.Duration(i+1) * 250 * time.Millisecond)
	}
	return v, err
}

func classify(op, subject string, err error) error {
	var se srclient.Error
	if errors.As(err, &se) {
		e := &Error{Op: op, Subject: subject, Code: se.Code, Message: se.Message}
		if e.Code >= 500 && e.Code < 600 || e.Code/100 >= 500 && e.Code/100 < 600 || e.Code == codeReadOnly {
			return fmt.Errorf("%w: %v", ErrUnavailable, e)
		}
		return e
	}
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err)
}

func key(subject, schema string) string { return subject + "\x00" + schema }

// ID returns the registry id of schema under subject: from the cache, else by lookup,
// else (when register is true) by registering it.
func (c *Client) ID(_ context.Context, subject, schema string, register bool) (int, error) {
	k := key(subject, schema)
	c.mu.RLock()
	id, ok := c.ids[k]
	c.mu.RUnlock()
	if ok {
		return id, nil
	}
	// One call per subject and schema at a time: concurrent first registrations of
	// the same subject race inside some registries (Apicurio answers "already exists").
	v, err, _ := c.flight.Do(fmt.Sprint(register)+k, func() (any, error) {
		if !register {
			s, err := retry(func() (*srclient.Schema, error) { return c.sr.LookupSchema(subject, schema, srclient.Avro) })
			if err != nil {
				return 0, classify("lookup", subject, err)
			}
			return s.ID(), nil
		}
		var lerr error
		for attempt := 0; attempt < 5; attempt++ {
			s, err := retry(func() (*srclient.Schema, error) { return c.sr.CreateSchema(subject, schema, srclient.Avro) })
			if err == nil {
				return s.ID(), nil
			}
			cerr := classify("register", subject, err)
			var e *Error
			if !errors.As(cerr, &e) || !strings.Contains(e.Message, "already exists") {
				return 0, cerr
			}
			// Registered by a concurrent client: look it up. Apicurio can answer "already
			// exists" before the artifact is visible to a lookup: then try again.
			s, err = retry(func() (*srclient.Schema, error) { return c.sr.LookupSchema(subject, schema, srclient.Avro) })
			if err == nil {
				return s.ID(), nil
			}
			lerr = classify("lookup", subject, err)
			if !IsNotFound(lerr) {
				return 0, lerr
			}
			time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
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

// Schema returns the parsed schema with the given id, cached.
func (c *Client) Schema(_ context.Context, id int) (avro.Schema, error) {
	c.mu.RLock()
	s, ok := c.schemas[id]
	c.mu.RUnlock()
	if ok {
		return s, nil
	}
	got, err := retry(func() (*srclient.Schema, error) { return c.sr.GetSchema(id) })
	if err != nil {
		return nil, classify(fmt.Sprintf("get schema id %d", id), "", err)
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

// Check verifies that the registry answers GET /subjects.
func (c *Client) Check(_ context.Context) error {
	if _, err := c.sr.GetSubjects(); err != nil {
		return classify("GET /subjects at "+c.url, "", err)
	}
	return nil
}

// SetCompatibility sets the subject's compatibility level (e.g. "BACKWARD").
func (c *Client) SetCompatibility(subject, level string) error {
	_, err := c.sr.ChangeSubjectCompatibilityLevel(subject, srclient.CompatibilityLevel(level))
	if err != nil {
		return classify("set compatibility", subject, err)
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
