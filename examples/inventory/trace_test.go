package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/examples/inventory/inventorysvc"
	"github.com/relaybox/relaybox/examples/orders/ordersvc"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// One trace from an HTTP request into the orders service to the inventory's handler,
// on the real services, every part on the global TracerProvider (the default): the
// client's span → the orders service's server span → the outbox write span → the
// relay's batch span (a batch of one trace is its child) → the Kafka record's
// traceparent (the write span's, unchanged) → the consumer's record span (a child of
// the write span) → the inventory handler's span (a child of the record span). Every
// span shares the client's trace id, as the SDK's in-memory exporter shows.
func TestTrace_OneTraceFromTheOrdersAPIToTheInventoryHandler(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(noop.NewTracerProvider()) })

	pool := testenv.Pool(t)
	relaySchema := testenv.Schema(t, pool)
	topic := testenv.Topic(t, 1)
	ordersApp, invApp := testenv.Name(t, "ord"), testenv.Name(t, "inv")
	t.Cleanup(func() {
		pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{invApp}.Sanitize()+` CASCADE; DROP SCHEMA IF EXISTS `+pgx.Identifier{ordersApp}.Sanitize()+` CASCADE`)
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	orders, err := ordersvc.New(pool, relaySchema, ordersApp, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	orders.Topic = topic
	if err := orders.Migrate(ctx, ordersApp); err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(orders.Handler())
	defer api.Close()
	r, err := relay.New(pool, &relay.Config{Schema: relaySchema, Brokers: testenv.Brokers(t), RegistryURL: testenv.RegistryURL(t),
		PollInterval: 200 * time.Millisecond, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rdone := make(chan error, 1)
	go func() { rdone <- r.Run(ctx) }()
	defer func() { cancel(); <-rdone }()
	inv := inventorysvc.New(pool, invApp)
	if err := inv.Migrate(ctx, invApp); err != nil {
		t.Fatal(err)
	}
	group := testenv.Name(t, "g")
	c, err := consumer.New(pool, &consumer.Config{Group: group, Topics: []string{topic}, Brokers: testenv.Brokers(t), Schema: relaySchema,
		RegistryURL: testenv.RegistryURL(t), Logger: testenv.Logger(t), CommitInterval: 200 * time.Millisecond,
		KafkaOpts: []kgo.Opt{kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}})
	if err != nil {
		t.Fatal(err)
	}
	inv.Register(c)
	cdone := make(chan error, 1)
	go func() { cdone <- c.Run(ctx) }()
	defer func() { cancel(); <-cdone }()

	// The client: a span of its own, sent as the request's traceparent.
	cctx, client := tp.Tracer("client").Start(context.Background(), "create order")
	req, _ := http.NewRequestWithContext(cctx, "POST", api.URL+"/orders",
		strings.NewReader(`{"customer":"c1","lines":[{"sku":"`+testenv.Name(t, "sku")+`","qty":2}]}`))
	propagation.TraceContext{}.Inject(cctx, propagation.HeaderCarrier(req.Header))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client.End()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /orders: %s", resp.Status)
	}
	traceID := client.SpanContext().TraceID()

	byName := func() map[string][]tracetest.SpanStub {
		m := map[string][]tracetest.SpanStub{}
		for _, s := range exp.GetSpans() {
			if s.SpanContext.TraceID() == traceID {
				m[s.Name] = append(m[s.Name], s)
			}
		}
		return m
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(byName()["inventory apply OrderCreated"]) == 0 {
		select {
		case err := <-cdone:
			cdone <- err // for the deferred stop
			t.Fatalf("consumer stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			var all []string
			for _, s := range exp.GetSpans() {
				all = append(all, s.Name+"@"+s.SpanContext.TraceID().String())
			}
			t.Fatalf("no inventory handler span in the client's trace within 60s; spans of the trace: %v; all: %v", names(byName()), all)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The record span ends after its transaction commits, after the handler's span.
	for len(byName()["process "+topic]) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	spans := byName()
	one := func(name string) tracetest.SpanStub {
		t.Helper()
		if len(spans[name]) != 1 {
			t.Fatalf("%d spans %q in the trace, want 1; spans: %v", len(spans[name]), name, names(spans))
		}
		return spans[name][0]
	}
	server := one("POST")
	write := one(outbox.SpanName)
	batch := one(relay.BatchSpanName)
	record := one("process " + topic)
	handler := one("inventory apply OrderCreated")
	parentIs := func(child, parent tracetest.SpanStub) {
		t.Helper()
		if child.Parent.SpanID() != parent.SpanContext.SpanID() {
			t.Errorf("%s's parent is %s, want %s (%s)", child.Name, child.Parent.SpanID(), parent.Name, parent.SpanContext.SpanID())
		}
	}
	if server.Parent.SpanID() != client.SpanContext().SpanID() {
		t.Errorf("server span's parent %s, want the client's %s", server.Parent.SpanID(), client.SpanContext().SpanID())
	}
	parentIs(write, server)
	parentIs(batch, write)
	parentIs(record, write) // the consumer continues the writer's span context
	parentIs(handler, record)
	if !record.Parent.IsRemote() || record.SpanKind != trace.SpanKindConsumer {
		t.Errorf("record span: parent remote %v, kind %v", record.Parent.IsRemote(), record.SpanKind)
	}

	// The Kafka record carries the write span's traceparent unchanged.
	cl := testenv.Client(t, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
	defer fcancel()
	recs := cl.PollFetches(fctx).Records()
	want := "00-" + write.SpanContext.TraceID().String() + "-" + write.SpanContext.SpanID().String() + "-01"
	if len(recs) != 1 {
		t.Fatalf("%d records on the topic, want 1", len(recs))
	}
	for _, h := range recs[0].Headers {
		if h.Key == "traceparent" && string(h.Value) != want {
			t.Fatalf("record traceparent %q, want the write span's %q", h.Value, want)
		}
	}
}

func names(m map[string][]tracetest.SpanStub) []string {
	var out []string
	for k, v := range m {
		for range v {
			out = append(out, k)
		}
	}
	return out
}
