package cli

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

type tracedEvent struct {
	ID string `avro:"id"`
}

// collector is a fake OTLP/HTTP collector on 127.0.0.1 that refuses every export
// with 401, echoing the request's Authorization header in its answer (the worst a
// collector can do with a token).
type collector struct {
	mu       sync.Mutex
	requests []*coltracepb.ExportTraceServiceRequest
	auth     []string
	paths    []string
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	req := &coltracepb.ExportTraceServiceRequest{}
	err := proto.Unmarshal(body, req)
	c.mu.Lock()
	c.paths = append(c.paths, r.URL.Path)
	c.auth = append(c.auth, r.Header.Get("Authorization"))
	if err == nil {
		c.requests = append(c.requests, req)
	}
	c.mu.Unlock()
	http.Error(w, "unauthorized: "+r.Header.Get("Authorization"), http.StatusUnauthorized)
}

// batchSpan returns the trace id of the first link of the first relaybox.relay.batch
// span received, and the service name of its resource.
func (c *collector) batchSpan() (link, service string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, req := range c.requests {
		for _, rs := range req.ResourceSpans {
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					service = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, sp := range ss.Spans {
					if sp.Name == "relaybox.relay.batch" && len(sp.Links) > 0 {
						return strings.ToLower(string(hexBytes(sp.Links[0].TraceId))), service, true
					}
				}
			}
		}
	}
	return "", "", false
}

func hexBytes(b []byte) []byte {
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, x := range b {
		out = append(out, hex[x>>4], hex[x&15])
	}
	return out
}

// The relay command with OTEL_EXPORTER_OTLP_ENDPOINT and a token in
// OTEL_EXPORTER_OTLP_HEADERS exports its batch spans to the collector (the batch
// span links to the writer's trace; service.name relaybox; the token sent as the
// Authorization header), and when the collector refuses them, echoing the token, the
// SDK's error reaches the log without it.
func TestTrace_RelayCommandExportsOverOTLPWithoutPrintingTheToken(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	topic := testenv.Topic(t, 1)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewInMemoryExporter()))
	w, err := outbox.New(pool, &outbox.Config{Schema: schema, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	ctx, span := tp.Tracer("test").Start(context.Background(), "request")
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return w.Write(ctx, tx, outbox.Event{Topic: topic, Key: "k", Type: "Traced", Value: tracedEvent{ID: "1"}})
	}); err != nil {
		t.Fatal(err)
	}
	span.End()
	writerTrace := span.SpanContext().TraceID().String()

	col := &collector{}
	srv := httptest.NewServer(col)
	defer srv.Close()
	t.Setenv("DATABASE_URL", testenv.DatabaseURL(t))
	t.Setenv("KAFKA_BROKERS", strings.Join(testenv.Brokers(t), ","))
	t.Setenv("SCHEMA_REGISTRY_URL", testenv.RegistryURL(t))
	t.Setenv("RELAYBOX_SCHEMA", schema)
	t.Setenv("RELAYBOX_METRICS_ADDR", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20"+url.QueryEscape(otlpLeak))
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")

	rctx, cancel := context.WithCancel(context.Background())
	var b strings.Builder
	lw := &lockedWriter{b: &b}
	done := make(chan int, 1)
	go func() { done <- mainContext(rctx, []string{"relay", "--log-level", "debug"}, lw, lw) }()
	logs := func() string { lw.mu.Lock(); defer lw.mu.Unlock(); return b.String() }
	deadline := time.Now().Add(60 * time.Second)
	var link, service string
	for {
		var ok bool
		if link, service, ok = col.batchSpan(); ok {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("no batch span exported within 60s; paths %v\n%s", col.paths, logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Wait for the refusal to be logged (the SDK's error handler), then stop.
	for !strings.Contains(logs(), "opentelemetry") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("relay exit %d", code)
	}
	out := logs()
	if link != writerTrace || service != "relaybox" {
		t.Errorf("batch span links trace %s (service %q), want the writer's %s (relaybox)", link, service, writerTrace)
	}
	col.mu.Lock()
	if col.paths[0] != "/v1/traces" || col.auth[0] != "Bearer "+otlpLeak {
		t.Errorf("export to %s with Authorization %q, want /v1/traces with the token", col.paths[0], col.auth[0])
	}
	col.mu.Unlock()
	if !strings.Contains(out, "opentelemetry") || !strings.Contains(out, "401") {
		t.Errorf("the collector's refusal is not in the log (was the error path taken?):\n%s", out)
	}
	if strings.Contains(out, otlpMark) {
		t.Fatalf("the OTLP token reached the relay's output:\n%s", out)
	}
}
