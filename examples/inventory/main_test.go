package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/relaybox/relaybox/internal/testenv"
)

// Runs the inventory consumer as its main does, on the real services, and checks that
// it serves stock.
func TestInventoryService_RealServices(t *testing.T) {
	pool := testenv.Pool(t)
	relaySchema := testenv.Schema(t, pool)
	testenv.Brokers(t)
	testenv.RegistryURL(t)
	testenv.TopicNamed(t, "orders", 3)
	app := testenv.Name(t, "inv")
	t.Cleanup(func() { pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS "`+app+`" CASCADE`) })
	port := testenv.FreePort(t)
	t.Setenv("RELAYBOX_SCHEMA", relaySchema)
	t.Setenv("INVENTORY_SCHEMA", app)
	t.Setenv("INVENTORY_GROUP", app)
	t.Setenv("INVENTORY_ADDR", fmt.Sprintf("127.0.0.1:%d", port))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	var body map[string]any
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/stock/sku-1", port))
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /stock/sku-1 never answered 200: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if body["sku"] != "sku-1" || body["available"] != float64(1000000) {
		t.Fatalf("stock %v", body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("inventory did not stop cleanly: %v", err)
	}
}
