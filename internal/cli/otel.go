package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// otlpOpts are the OpenTelemetry trace export settings. The exporter and the SDK also
// read the other standard variables themselves (OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG], OTEL_EXPORTER_OTLP_TIMEOUT,
// _COMPRESSION, _CERTIFICATE, OTEL_BSP_*, OTEL_SPAN_LINK_COUNT_LIMIT, and the
// _TRACES_ variants of the OTLP ones).
type otlpOpts struct {
	endpoint, protocol, headers string
}

// otlpHeaderVars hold OTLP headers (often an API token): secrets, never printed.
var otlpHeaderVars = []string{"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"}

func (f *flags) otlp(o *otlpOpts) {
	f.conn(&o.endpoint, "otlp-endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT",
		"export trace spans over OTLP to this collector URL, e.g. http://otel-collector:4318 (empty: no export unless OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set)")
	f.str(&o.protocol, "otlp-protocol", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "OTLP protocol: http/protobuf or grpc")
	f.secret(&o.headers, "otlp-headers", "OTEL_EXPORTER_OTLP_HEADERS", "OTLP request headers, key=value,... (e.g. an authorization token)")
	envMu.Lock()
	for _, v := range otlpHeaderVars {
		envSeen[v], envSecret[v] = true, true
	}
	envSeen["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], envSeen["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = true, true
	envMu.Unlock()
}

// tracerProvider builds the SDK's provider exporting over OTLP, or returns nil when
// export is off (no endpoint, OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true):
// the relay then uses the global provider, a no-op unless an embedding program set
// one. Every header value is registered as a secret with s first. Its shutdown
// flushes the spans still buffered.
func (o *otlpOpts) tracerProvider(ctx context.Context, s *stdio, log *slog.Logger) (trace.TracerProvider, func(), error) {
	for _, v := range append([]string{o.headers}, envValues(otlpHeaderVars[1:])...) {
		for _, kv := range strings.Split(v, ",") {
			if _, val, ok := strings.Cut(kv, "="); ok {
				s.secrets.Add(strings.TrimSpace(val))
				if u, err := url.QueryUnescape(strings.TrimSpace(val)); err == nil {
					s.secrets.Add(u)
				}
			}
		}
	}
	tracesEndpoint := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	switch {
	case o.endpoint == "" && tracesEndpoint == "",
		strings.EqualFold(os.Getenv("OTEL_TRACES_EXPORTER"), "none"),
		strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true"):
		return nil, func() {}, nil
	}
	protocol := o.protocol
	if p := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"); p != "" {
		protocol = p
	}
	var endpoint *url.URL
	if o.endpoint != "" {
		u, err := url.Parse(o.endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, nil, errors.New("OTEL_EXPORTER_OTLP_ENDPOINT (--otlp-endpoint): want http(s)://host:port")
		}
		endpoint = u
	}
	headers := parseHeaders(o.headers)
	var client otlptrace.Client
	switch protocol {
	case "http/protobuf", "":
		opts := []otlptracehttp.Option{}
		if endpoint != nil && tracesEndpoint == "" {
			// The base URL, as OTEL_EXPORTER_OTLP_ENDPOINT means it: traces go to /v1/traces.
			u := *endpoint
			u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
			opts = append(opts, otlptracehttp.WithEndpointURL(u.String()))
		}
		if len(headers) > 0 {
			opts = append(opts, otlptracehttp.WithHeaders(headers))
		}
		client = otlptracehttp.NewClient(opts...)
	case "grpc":
		opts := []otlptracegrpc.Option{}
		if endpoint != nil && tracesEndpoint == "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint.String()))
		}
		if len(headers) > 0 {
			opts = append(opts, otlptracegrpc.WithHeaders(headers))
		}
		client = otlptracegrpc.NewClient(opts...)
	default:
		return nil, nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL (--otlp-protocol) %q: want http/protobuf or grpc", protocol)
	}
	// The SDK's own complaints (an unreachable collector) go to the command's logger,
	// whose output is scrubbed of secrets, not to the standard logger.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("opentelemetry", "err", err) }))
	otel.SetLogger(logr.FromSlogHandler(log.Handler()))
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, nil, fmt.Errorf("OTLP exporter: %w", err)
	}
	res, err := resource.Merge(resource.NewSchemaless(semconv.ServiceName("relaybox")), resource.Environment())
	if err != nil {
		res = resource.Default()
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	log.Info("exporting trace spans over OTLP", "protocol", protocol, "endpoint", redactedEndpoint(o.endpoint, tracesEndpoint))
	return tp, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tp.Shutdown(sctx); err != nil {
			log.Warn("flushing trace spans", "err", err)
		}
	}, nil
}

// redactedEndpoint is the endpoint in use without userinfo or query.
func redactedEndpoint(endpoint, tracesEndpoint string) string {
	if tracesEndpoint != "" {
		endpoint = tracesEndpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "(unparsable)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}

// parseHeaders reads the OTLP headers format: key=value pairs, comma-separated, values
// URL-encoded (W3C Baggage octets).
func parseHeaders(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			continue
		}
		if u, err := url.QueryUnescape(strings.TrimSpace(v)); err == nil {
			v = u
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out
}

func envValues(names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, os.Getenv(n))
	}
	return out
}
