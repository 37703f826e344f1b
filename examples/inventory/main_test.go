package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/examples/orders/ordersvc"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/relay"
)

// Runs the inventory consumer as its main does, on the real services, behind the
// orders service and a relay: orders are created, modified and deleted over the orders
// API, and the inventory's stock (over its own API) ends as the live orders reserve,
// each event applied once, in version order.
func TestInventoryService_ReservesWhatTheOrdersServicePublished(t *testing.T) {
	pool := testenv.Pool(t)
	relaySchema := testenv.Schema(t, pool)
	brokers, registryURL := testenv.Brokers(t), testenv.RegistryURL(t)
	testenv.TopicNamed(t, ordersvc.Topic, 3)
	app, ordersApp := testenv.Name(t, "inv"), testenv.Name(t, "ord")
	t.Cleanup(func() {
		pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{app}.Sanitize()+` CASCADE; DROP SCHEMA IF EXISTS `+pgx.Identifier{ordersApp}.Sanitize()+` CASCADE`)
	})
	port := testenv.FreePort(t)
	t.Setenv("RELAYBOX_SCHEMA", relaySchema)
	t.Setenv("INVENTORY_SCHEMA", app)
	t.Setenv("INVENTORY_GROUP", app)
	t.Setenv("INVENTORY_ADDR", fmt.Sprintf("127.0.0.1:%d", port))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()

	// The orders service (its API in-process) and a relay publishing its outbox.
	orders, err := ordersvc.New(pool, relaySchema, ordersApp, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := orders.Migrate(ctx, ordersApp); err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(orders.Handler())
	defer api.Close()
	r, err := relay.New(pool, &relay.Config{Schema: relaySchema, Brokers: brokers, RegistryURL: registryURL,
		PollInterval: 200 * time.Millisecond, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	rdone := make(chan error, 1)
	go func() { rdone <- r.Run(rctx) }()
	defer func() { rcancel(); <-rdone }()

	// SKUs of this test only (the orders topic is shared).
	a, b, c := testenv.Name(t, "sku-a"), testenv.Name(t, "sku-b"), testenv.Name(t, "sku-c")
	call := func(method, path, body string, want int) string {
		t.Helper()
		req, _ := http.NewRequest(method, api.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != want {
			msg, _ := io.ReadAll(resp.Body)
			t.Fatalf("%s %s: %s %s, want %d", method, path, resp.Status, msg, want)
		}
		return resp.Header.Get("Location")
	}
	lines := func(l ...any) string {
		var out []map[string]any
		for i := 0; i+1 < len(l); i += 2 {
			out = append(out, map[string]any{"sku": l[i], "qty": l[i+1]})
		}
		j, _ := json.Marshal(map[string]any{"lines": out})
		return string(j)
	}
	withCustomer := func(body string) string { return strings.Replace(body, "{", `{"customer":"c1",`, 1) }
	o1 := call("POST", "/orders", withCustomer(lines(a, 2, b, 1)), 201)
	call("PATCH", o1, lines(b, 5), 200) // re-reserves: a 0, b 5
	call("POST", "/orders", withCustomer(lines(a, 3)), 201)
	o3 := call("POST", "/orders", withCustomer(lines(c, 4)), 201)
	call("DELETE", o3, "", 204) // releases c
	want := map[string]int64{a: 3, b: 5, c: 0}

	stock := func(sku string) (reserved, available int64) {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/stock/%s", port, sku))
		if err != nil {
			return -1, -1 // not listening yet
		}
		defer resp.Body.Close()
		var body struct {
			SKU       string `json:"sku"`
			Reserved  int64  `json:"reserved"`
			Available int64  `json:"available"`
		}
		raw, _ := io.ReadAll(resp.Body)
		if err := json.NewDecoder(bytes.NewReader(raw)).Decode(&body); err != nil || resp.StatusCode != 200 || body.SKU != sku {
			t.Fatalf("GET /stock/%s: %s %s", sku, resp.Status, raw)
		}
		return body.Reserved, body.Available
	}
	// The 5 events applied: order versions seen by the inventory for our orders.
	applied := func() (n, distinct, outOfOrder int) {
		t.Helper()
		err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT event_id), count(*) FILTER (WHERE version <= prev)
			FROM `+pgx.Identifier{app, "applied"}.Sanitize()+` WHERE order_id IN (SELECT id::text FROM `+pgx.Identifier{ordersApp, "orders"}.Sanitize()+`)
			OR order_id = $1`, strings.TrimPrefix(o3, "/orders/")).Scan(&n, &distinct, &outOfOrder)
		if err != nil && !strings.Contains(err.Error(), "does not exist") { // the inventory's tables come with its start
			t.Fatal(err)
		}
		return n, distinct, outOfOrder
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		n, _, _ := applied()
		ra, _ := stock(a)
		rb, _ := stock(b)
		rc, _ := stock(c)
		if n >= 5 && ra == want[a] && rb == want[b] && rc == want[c] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60s: %d of 5 events applied; reserved %s=%d %s=%d %s=%d, want %v", n, a, ra, b, rb, c, rc, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n, distinct, outOfOrder := applied(); n != 5 || distinct != 5 || outOfOrder != 0 {
		t.Errorf("applied log: %d effects, %d distinct events, %d out of version order; want 5, 5, 0", n, distinct, outOfOrder)
	}
	// The orders service's own view of what live orders reserve agrees.
	fromOrders, err := orders.ReservedBySKU(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for sku, n := range want {
		if fromOrders[sku] != n {
			t.Errorf("orders service reserves %d of %s, inventory %d", fromOrders[sku], sku, n)
		}
		if _, avail := stock(sku); avail != 1000000-n {
			t.Errorf("GET /stock/%s: available %d, want %d", sku, avail, 1000000-n)
		}
	}
	cancel()
	stopped = true
	if err := <-done; err != nil {
		t.Fatalf("inventory did not stop cleanly: %v", err)
	}
}
