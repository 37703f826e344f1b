package main

// These tests are the model for testing a relaybox consumer: relayboxtest runs a relay
// and the consumer in-process on the test's Postgres (Kafka and the registry in-process,
// or the real ones when KAFKA_BROKERS and SCHEMA_REGISTRY_URL are set), the orders
// service writes events through its API, and the test waits until the consumer has
// applied them, never sleeping, before it checks the effects.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/examples/inventory/inventorysvc"
	"github.com/relaybox/relaybox/examples/orders/ordersvc"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/relayboxtest"
)

// ordersAPI starts the orders service on the harness (its outbox in h's schema, its
// events on topic) and returns a function that calls its API.
func ordersAPI(t *testing.T, pool *pgxpool.Pool, h *relayboxtest.Harness, topic string) (*ordersvc.Service, func(method, path, body string, want int) string) {
	t.Helper()
	app := dropLater(t, pool, testenv.Name(t, "ord"))
	orders, err := ordersvc.New(pool, h.Schema(), app, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	orders.Topic = topic
	if err := orders.Migrate(context.Background(), app); err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(orders.Handler())
	t.Cleanup(api.Close)
	return orders, func(method, path, body string, want int) string {
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
}

// dropLater drops the schema when the test ends.
func dropLater(t *testing.T, pool *pgxpool.Pool, schema string) string {
	t.Cleanup(func() {
		pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
	})
	return schema
}

func lines(customer string, l ...any) string {
	var out []map[string]any
	for i := 0; i+1 < len(l); i += 2 {
		out = append(out, map[string]any{"sku": l[i], "qty": l[i+1]})
	}
	body := map[string]any{"lines": out}
	if customer != "" {
		body["customer"] = customer
	}
	j, _ := json.Marshal(body)
	return string(j)
}

// placeOrders creates, modifies and deletes orders over the orders API and returns
// what the live orders reserve.
func placeOrders(call func(method, path, body string, want int) string) map[string]int64 {
	o1 := call("POST", "/orders", lines("c1", "a", 2, "b", 1), 201)
	call("PATCH", o1, lines("", "b", 5), 200) // re-reserves: a 0, b 5
	call("POST", "/orders", lines("c1", "a", 3), 201)
	o3 := call("POST", "/orders", lines("c1", "c", 4), 201)
	call("DELETE", o3, "", 204) // releases c
	return map[string]int64{"a": 3, "b": 5}
}

// The inventory's handlers on a harness consumer: every event applied once, in each
// order's version order, and the stock agrees with what the orders service holds.
func TestInventory_AppliesTheOrdersEventsOnceInOrder(t *testing.T) {
	pool := testenv.Pool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool})
	topic := h.Topic(ordersvc.Topic)
	orders, call := ordersAPI(t, pool, h, topic)

	app := dropLater(t, pool, testenv.Name(t, "inv"))
	inv := inventorysvc.New(pool, app)
	if err := inv.Migrate(context.Background(), app); err != nil {
		t.Fatal(err)
	}
	c := h.Consumer(&consumer.Config{Group: "inventory", Topics: []string{topic}})
	inv.Register(c.Consumer)
	c.Start()

	want := placeOrders(call)
	ctx := context.Background()
	if err := c.AwaitApplied(ctx); err != nil { // every event the orders service wrote
		t.Fatal(err)
	}

	reserved, err := inv.Reserved(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(reserved) != fmt.Sprint(want) {
		t.Errorf("inventory reserves %v, want %v", reserved, want)
	}
	fromOrders, err := orders.ReservedBySKU(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(fromOrders) != fmt.Sprint(want) {
		t.Errorf("the orders service reserves %v, want %v", fromOrders, want)
	}
	st, err := inv.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st != (inventorysvc.Stats{Effects: 5}) {
		t.Errorf("applied log %+v: want 5 effects, no duplicate, none out of version order", st)
	}
}

// The inventory as its main runs it (configuration from the environment), on the
// harness's Kafka, registry and schema: the stock it serves over HTTP is what the
// orders reserve.
func TestInventoryMain_ServesTheStockTheOrdersReserve(t *testing.T) {
	pool := testenv.Pool(t)
	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool})
	topic := h.Topic(ordersvc.Topic)
	_, call := ordersAPI(t, pool, h, topic)

	group := testenv.Name(t, "inv")
	port := testenv.FreePort(t)
	t.Setenv("KAFKA_BROKERS", strings.Join(h.Brokers(), ","))
	t.Setenv("SCHEMA_REGISTRY_URL", h.RegistryURL())
	t.Setenv("RELAYBOX_SCHEMA", h.Schema())
	t.Setenv("INVENTORY_SCHEMA", dropLater(t, pool, testenv.Name(t, "inv")))
	t.Setenv("INVENTORY_GROUP", group)
	t.Setenv("INVENTORY_TOPIC", topic)
	t.Setenv("INVENTORY_ADDR", fmt.Sprintf("127.0.0.1:%d", port))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("inventory did not stop cleanly: %v", err)
		}
	}()

	want := placeOrders(call)
	if err := h.AwaitApplied(ctx, group); err != nil {
		t.Fatal(err)
	}
	for sku, n := range map[string]int64{"a": want["a"], "b": want["b"], "c": 0} {
		var body struct {
			Reserved, Available int64
		}
		resp := getWhenListening(t, fmt.Sprintf("http://127.0.0.1:%d/stock/%s", port, sku))
		err := json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || body.Reserved != n || body.Available != 1000000-n {
			t.Errorf("GET /stock/%s: %s %+v (%v), want reserved %d", sku, resp.Status, body, err, n)
		}
	}
	// The consumer's metrics, served by the example on GET /metrics.
	resp := getWhenListening(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	appliedRE := regexp.MustCompile(`(?m)^relaybox_consumer_records_total\{group="` + regexp.QuoteMeta(group) + `",outcome="applied",topic="` +
		regexp.QuoteMeta(topic) + `"\} (\d+)$`)
	if m := appliedRE.FindSubmatch(body); m == nil {
		t.Errorf("GET /metrics: no applied count for group %s:\n%s", group, body)
	} else if n, _ := strconv.Atoi(string(m[1])); n < 1 {
		t.Errorf("GET /metrics: applied count %d for group %s", n, group)
	}
}

// getWhenListening GETs url, retrying while nothing listens yet (main starts its HTTP
// server in a goroutine), for at most 30s.
func getWhenListening(t *testing.T, url string) *http.Response {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(url)
		if err == nil {
			return resp
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
