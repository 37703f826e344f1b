package metrics_test

import (
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/metrics"
	"github.com/relaybox/relaybox/relay"
)

// A consumer's metrics: Install before consumer.New, serve Handler. Here a hook is
// called by hand, where the consumer would call it.
func ExampleNewConsumer() {
	m, err := metrics.NewConsumer(nil)
	if err != nil {
		panic(err)
	}
	cfg := &consumer.Config{Group: "inventory", Topics: []string{"orders"} /* Brokers, RegistryURL, ... */}
	m.Install(cfg)
	// c, err := consumer.New(pool, cfg); http.Handle("/metrics", m.Handler()); c.Run(ctx)

	cfg.Hooks.OnProcessed(consumer.RecordEvent{Topic: "orders", Partition: 0, Offset: 41, EventType: "OrderPlaced"})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(l, "relaybox_consumer_records_total") {
			fmt.Println(l)
		}
	}
	// Output:
	// relaybox_consumer_records_total{group="inventory",outcome="applied",topic="orders"} 1
	// relaybox_consumer_records_total{group="inventory",outcome="dead_letter",topic="orders"} 0
	// relaybox_consumer_records_total{group="inventory",outcome="duplicate",topic="orders"} 0
	// relaybox_consumer_records_total{group="inventory",outcome="skipped",topic="orders"} 0
}

// A relay's metrics, with the status collector when RelayOpts.Pool is set.
func ExampleNewRelay() {
	m, err := metrics.NewRelay(&metrics.RelayOpts{ /* Pool: pool, Schema: "relaybox" */ })
	if err != nil {
		panic(err)
	}
	cfg := relay.Config{ /* Brokers, RegistryURL, ... */ }
	m.Install(&cfg)
	// r, err := relay.New(pool, &cfg); http.Handle("/metrics", m.Handler()); r.Run(ctx)

	cfg.Hooks.OnBatch(relay.BatchEvent{Shard: 7, Read: 100, Published: 100})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(l, "relaybox_relay_published_total") || strings.HasPrefix(l, "relaybox_relay_mode") {
			fmt.Println(l)
		}
	}
	// Output:
	// relaybox_relay_mode{mode="at-least-once"} 1
	// relaybox_relay_published_total 100
}

// One registry for the relay, the consumer and the Go runtime's collectors.
func Example_sharedRegistry() {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	if _, err := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg}); err != nil {
		panic(err)
	}
	if _, err := metrics.NewConsumer(&metrics.ConsumerOpts{Registerer: reg}); err != nil {
		panic(err)
	}
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{}) // serve it on /metrics
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	fmt.Println(strings.Contains(body, "relaybox_relay_published_total"), strings.Contains(body, "go_goroutines"))
	// Output:
	// true true
}
