package registry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// blockingRegistry answers no request until the test ends; arrived receives one value
// per request that reached it.
func blockingRegistry(t *testing.T) (url string, arrived <-chan struct{}) {
	t.Helper()
	got := make(chan struct{}, 16)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv.URL, got
}

// Every Client call is bound to its context: against a registry that never answers,
// cancelling the context ends the call with the context's error (the HTTP timeout is
// an hour, so only the cancellation can end it).
func TestClient_CallsEndWithTheirContext(t *testing.T) {
	const schema = `{"type":"record","name":"Blocked","fields":[{"name":"a","type":"string"}]}`
	calls := map[string]func(ctx context.Context, c *Client) error{
		"ID lookup":   func(ctx context.Context, c *Client) error { _, err := c.ID(ctx, "s-value", schema, false); return err },
		"ID register": func(ctx context.Context, c *Client) error { _, err := c.ID(ctx, "s-value", schema, true); return err },
		"Schema":      func(ctx context.Context, c *Client) error { _, err := c.Schema(ctx, 7); return err },
		"Check":       func(ctx context.Context, c *Client) error { return c.Check(ctx) },
		"SetCompatibility": func(ctx context.Context, c *Client) error {
			return c.SetCompatibility(ctx, "s-value", "FULL")
		},
		"CheckCompatibility": func(ctx context.Context, c *Client) error {
			_, err := c.CheckCompatibility(ctx, "s-value", schema)
			return err
		},
		"SubjectCompatibility": func(ctx context.Context, c *Client) error {
			_, _, err := c.SubjectCompatibility(ctx, "s-value")
			return err
		},
		"Subjects": func(ctx context.Context, c *Client) error { _, err := c.Subjects(ctx); return err },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url, arrived := blockingRegistry(t)
			c := New(url, Options{Timeout: time.Hour})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- call(ctx, c) }()
			<-arrived // the request is in flight
			cancel()
			err := <-done
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			// Callers retry ErrUnavailable; a cancellation is no verdict on a schema.
			if !errors.Is(err, ErrUnavailable) || IsIncompatible(err) || IsNotFound(err) {
				t.Fatalf("err = %v, want it unavailable, neither incompatible nor not found", err)
			}
		})
	}
}

// A deadline ends a call too, and the error says so.
func TestClient_DeadlineEndsACall(t *testing.T) {
	url, _ := blockingRegistry(t)
	c := New(url, Options{Timeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.ID(ctx, "s-value", `"string"`, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}
