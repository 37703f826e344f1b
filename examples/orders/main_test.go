package main

// These tests are the model for a service that writes events with relaybox: the
// service's HTTP API runs in-process, and relayboxtest asserts the events each request
// wrote to the outbox, decoded into the service's own event types. Only Postgres is
// needed, except for TestOrdersMain_EventsArePublished, which also runs the relay
// (in-process Kafka and registry, or the real ones when KAFKA_BROKERS and
// SCHEMA_REGISTRY_URL are set).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/examples/orders/ordersvc"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/relayboxtest"
)

// newService returns the orders service on a relaybox schema and an orders schema of
// the test's own, its API served by an httptest server.
func newService(t *testing.T, pool *pgxpool.Pool) (svc *ordersvc.Service, relaySchema string, api *httptest.Server) {
	t.Helper()
	relaySchema = relayboxtest.NewSchema(t, pool)
	app := testenv.Name(t, "orders")
	t.Cleanup(func() {
		pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{app}.Sanitize()+` CASCADE`)
	})
	svc, err := ordersvc.New(pool, relaySchema, app, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Migrate(context.Background(), app); err != nil {
		t.Fatal(err)
	}
	api = httptest.NewServer(svc.Handler())
	t.Cleanup(api.Close)
	return svc, relaySchema, api
}

// call sends one request and returns the response, its body read.
func call(t *testing.T, method, url, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestOrders_EachChangeWritesItsEvent(t *testing.T) {
	pool := testenv.Pool(t)
	_, relaySchema, api := newService(t, pool)

	resp, _ := call(t, "POST", api.URL+"/orders", `{"customer":"c1","lines":[{"sku":"a","qty":2}]}`, "X-Correlation-ID", "corr-42")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 201 || !strings.HasPrefix(loc, "/orders/") || resp.Header.Get("X-Correlation-ID") != "corr-42" {
		t.Fatalf("POST: %s Location %q", resp.Status, loc)
	}
	if r, _ := call(t, "GET", api.URL+loc, ""); r.StatusCode != 200 {
		t.Fatalf("GET: %s", r.Status)
	}
	if r, _ := call(t, "PATCH", api.URL+loc, `{"lines":[{"sku":"b","qty":1}]}`); r.StatusCode != 200 {
		t.Fatalf("PATCH: %s", r.Status)
	}
	if r, _ := call(t, "DELETE", api.URL+loc, ""); r.StatusCode != 204 {
		t.Fatalf("DELETE: %s", r.Status)
	}
	if r, _ := call(t, "GET", api.URL+loc, ""); r.StatusCode != 404 {
		t.Fatalf("GET after DELETE: %s", r.Status)
	}

	// The order's three events, in order, each decoded into the service's own type.
	id := strings.TrimPrefix(loc, "/orders/")
	var created ordersvc.OrderCreated
	var modified ordersvc.OrderModified
	var deleted ordersvc.OrderDeleted
	envs := relayboxtest.RequireManyEvents(t, pool, &relayboxtest.Filter{Schema: relaySchema, Key: id},
		relayboxtest.Want{Type: "OrderCreated", Topic: ordersvc.Topic, AggregateType: "Order", CorrelationID: "corr-42", Into: &created},
		relayboxtest.Want{Type: "OrderModified", Into: &modified},
		relayboxtest.Want{Type: "OrderDeleted", Into: &deleted})
	if created.OrderID != id || created.Customer != "c1" || len(created.Lines) != 1 || created.Lines[0] != (ordersvc.Line{SKU: "a", Qty: 2}) || created.Version != 1 {
		t.Errorf("OrderCreated %+v", created)
	}
	if modified.Customer != nil || modified.Lines == nil || len(*modified.Lines) != 1 || (*modified.Lines)[0].SKU != "b" || modified.Version != 2 {
		t.Errorf("OrderModified %+v: want lines [b×1], customer unchanged (nil), version 2", modified)
	}
	if deleted.OrderID != id || deleted.Version != 3 {
		t.Errorf("OrderDeleted %+v", deleted)
	}
	// Three record types on one topic: each its own subject (TopicRecordName).
	if envs[0].Source != "orders-service" || envs[0].Subject != "orders-orders.v1.OrderCreated" {
		t.Errorf("envelope %+v", envs[0])
	}
}

func TestOrders_RejectedRequestsWriteNothing(t *testing.T) {
	pool := testenv.Pool(t)
	_, relaySchema, api := newService(t, pool)

	bad, body := call(t, "POST", api.URL+"/orders", `{"customer":"c1","lines":[]}`)
	var prob map[string]any
	json.Unmarshal(body, &prob)
	if bad.StatusCode != 422 || bad.Header.Get("Content-Type") != "application/problem+json" || prob["status"] != float64(422) {
		t.Fatalf("invalid order: %s %s %v", bad.Status, bad.Header.Get("Content-Type"), prob)
	}
	if r, _ := call(t, "PATCH", api.URL+"/orders/0190aaaa-0000-7000-8000-000000000000", `{"customer":"x"}`); r.StatusCode != 404 {
		t.Fatalf("PATCH of an unknown order: %s", r.Status)
	}
	if r, _ := call(t, "POST", api.URL+"/orders", `{"customer":"c1","lines":[{"sku":"a","qty":1}],"coupon":"x"}`); r.StatusCode != 400 {
		t.Fatalf("unknown field: %s", r.Status)
	}
	relayboxtest.RequireNoEvents(t, pool, &relayboxtest.Filter{Schema: relaySchema})
}

// Prefer: respond-async answers 202 at once; the order and its event are written
// after. The test waits on the service's Events hook, not on a timer.
func TestOrders_RespondAsyncWritesItsEventLater(t *testing.T) {
	pool := testenv.Pool(t)
	svc, relaySchema, api := newService(t, pool)
	written := make(chan string, 1)
	svc.Events = func(eventType string) { written <- eventType }

	resp, _ := call(t, "POST", api.URL+"/orders", `{"customer":"c2","lines":[{"sku":"a","qty":1}]}`, "Prefer", "respond-async")
	if resp.StatusCode != 202 || resp.Header.Get("Location") == "" || resp.Header.Get("Preference-Applied") != "respond-async" {
		t.Fatalf("respond-async: %s", resp.Status)
	}
	select {
	case typ := <-written:
		if typ != "OrderCreated" {
			t.Fatalf("hook saw %s", typ)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the async order was not written within 30s")
	}
	id := strings.TrimPrefix(resp.Header.Get("Location"), "/orders/")
	ev := relayboxtest.RequireEvent[ordersvc.OrderCreated](t, pool, &relayboxtest.Filter{Schema: relaySchema, Key: id})
	if ev.Value.Customer != "c2" {
		t.Errorf("async OrderCreated %+v", ev.Value)
	}
	if r, _ := call(t, "GET", api.URL+resp.Header.Get("Location"), ""); r.StatusCode != 200 {
		t.Errorf("GET of the async order: %s", r.Status)
	}
}

// The service as its main runs it (configuration from the environment), with a relay
// beside it: what it writes is published.
func TestOrdersMain_EventsArePublished(t *testing.T) {
	pool := testenv.Pool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool})
	app := testenv.Name(t, "orders")
	t.Cleanup(func() {
		pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{app}.Sanitize()+` CASCADE`)
	})
	port := testenv.FreePort(t)
	t.Setenv("RELAYBOX_SCHEMA", h.Schema())
	t.Setenv("ORDERS_SCHEMA", app)
	t.Setenv("ORDERS_TOPIC", h.Topic(ordersvc.Topic))
	t.Setenv("ORDERS_ADDR", fmt.Sprintf("127.0.0.1:%d", port))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	// The listener is up once a connection succeeds (bounded).
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the orders service did not listen within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, _ := call(t, "POST", fmt.Sprintf("http://127.0.0.1:%d/orders", port), `{"customer":"c1","lines":[{"sku":"a","qty":2}]}`)
	if resp.StatusCode != 201 {
		t.Fatalf("POST: %s", resp.Status)
	}
	if err := h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	ev := relayboxtest.RequireEvent[ordersvc.OrderCreated](t, pool, &relayboxtest.Filter{Schema: h.Schema(), Type: "OrderCreated"})
	if !ev.Published || ev.Topic != os.Getenv("ORDERS_TOPIC") {
		t.Errorf("after Drain: published %v, topic %s", ev.Published, ev.Topic)
	}
}
