package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relaybox/relaybox/internal/testenv"
)

// Runs the orders service as its main does, against the real Postgres, and checks its
// answers: 201 + Location, GET, PATCH, DELETE, problem+json, Prefer: respond-async.
func TestOrdersService_RealPostgres(t *testing.T) {
	pool := testenv.Pool(t)
	relaySchema := testenv.Schema(t, pool)
	app := testenv.Name(t, "orders")
	t.Cleanup(func() { pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS "`+app+`" CASCADE`) })
	port := testenv.FreePort(t)
	t.Setenv("RELAYBOX_SCHEMA", relaySchema)
	t.Setenv("ORDERS_SCHEMA", app)
	t.Setenv("ORDERS_ADDR", fmt.Sprintf("127.0.0.1:%d", port))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() { cancel(); <-done }()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		if i > 100 {
			t.Fatal("orders service did not listen")
		}
		time.Sleep(100 * time.Millisecond)
	}
	do := func(method, path, body string, hdr ...string) *http.Response {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	resp := do("POST", "/orders", `{"customer":"c1","lines":[{"sku":"a","qty":2}]}`, "X-Correlation-ID", "corr-42")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 201 || !strings.HasPrefix(loc, "/orders/") || resp.Header.Get("X-Correlation-ID") != "corr-42" {
		t.Fatalf("POST: %s Location %q", resp.Status, loc)
	}
	if r := do("GET", loc, ""); r.StatusCode != 200 {
		t.Fatalf("GET: %s", r.Status)
	}
	if r := do("PATCH", loc, `{"lines":[{"sku":"b","qty":1}]}`); r.StatusCode != 200 {
		t.Fatalf("PATCH: %s", r.Status)
	}
	bad := do("POST", "/orders", `{"customer":"c1","lines":[]}`)
	var prob map[string]any
	json.NewDecoder(bad.Body).Decode(&prob)
	if bad.StatusCode != 422 || bad.Header.Get("Content-Type") != "application/problem+json" || prob["status"] != float64(422) {
		t.Fatalf("invalid order: %s %s %v", bad.Status, bad.Header.Get("Content-Type"), prob)
	}
	if r := do("DELETE", loc, ""); r.StatusCode != 204 {
		t.Fatalf("DELETE: %s", r.Status)
	}
	if r := do("GET", loc, ""); r.StatusCode != 404 {
		t.Fatalf("GET after DELETE: %s", r.Status)
	}
	async := do("POST", "/orders", `{"customer":"c2","lines":[{"sku":"a","qty":1}]}`, "Prefer", "respond-async")
	if async.StatusCode != 202 || async.Header.Get("Location") == "" {
		t.Fatalf("respond-async: %s", async.Status)
	}
	deadline := time.Now().Add(5 * time.Second)
	for do("GET", async.Header.Get("Location"), "").StatusCode != 200 {
		if time.Now().After(deadline) {
			t.Fatal("async order never appeared at its Location")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var events []string
	rows, _ := pool.Query(context.Background(), `SELECT event_type || ':' || correlation_id FROM "`+relaySchema+`".outbox ORDER BY id`)
	for rows.Next() {
		var s string
		rows.Scan(&s)
		events = append(events, s)
	}
	if len(events) != 4 || events[0] != "OrderCreated:corr-42" || !strings.HasPrefix(events[1], "OrderModified:") || !strings.HasPrefix(events[2], "OrderDeleted:") {
		t.Fatalf("outbox events %v", events)
	}
}
