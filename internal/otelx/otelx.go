// Package otelx holds what the writer, the relay and the consumer share about
// OpenTelemetry: the instrumentation scope, the tracer lookup and the capped set of
// links a batch span carries. It uses the otel API only (no SDK).
package otelx

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Scope is the instrumentation scope (tracer name) of relaybox's spans.
const Scope = "github.com/relaybox/relaybox"

// MaxLinks is the most links relaybox puts on one span: the SDK's default
// LinkCountLimit (OTEL_SPAN_LINK_COUNT_LIMIT), past which it drops links silently.
const MaxLinks = 128

// Attribute keys of relaybox's own span attributes (the messaging ones come from
// the semantic conventions).
const (
	// LinksDropped counts the distinct traces of a batch that got no link (past MaxLinks).
	LinksDropped = attribute.Key("relaybox.links.dropped")
	// Untraced counts the events of a batch that carried no valid trace context.
	Untraced = attribute.Key("relaybox.links.untraced")
)

// Tracer returns the tracer of tp, or of the global provider when tp is nil. The
// global provider is looked up per call, so one set after New is used too.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer(Scope)
}

var w3c = propagation.TraceContext{}

// SpanContext parses a W3C traceparent (and tracestate) header pair; the result is
// invalid when traceparent is empty or malformed. It is marked remote.
func SpanContext(traceparent, tracestate string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	var c carrier
	c.tp, c.ts = traceparent, tracestate
	return trace.SpanContextFromContext(w3c.Extract(context.Background(), &c))
}

// carrier is a TextMapCarrier of the two W3C headers, without a map.
type carrier struct{ tp, ts string }

func (c *carrier) Get(k string) string {
	switch k {
	case "traceparent":
		return c.tp
	case "tracestate":
		return c.ts
	}
	return ""
}
func (c *carrier) Set(string, string) {}
func (c *carrier) Keys() []string     { return []string{"traceparent", "tracestate"} }

// LinkSet collects the links of a batch span: the first span context of each
// distinct trace id, in the order added, up to Max (MaxLinks when 0). Traces past
// the cap are counted in Dropped, events without a valid context in Untraced. The
// zero value is ready.
type LinkSet struct {
	Max      int
	Links    []trace.Link
	Dropped  int // distinct traces not linked
	Untraced int // contexts added that were not valid
	seen     map[trace.TraceID]struct{}
	seenText map[string]struct{} // trace ids as text (AddTraceparent)
}

// Add adds a link to sc unless its trace is already linked or the set is full; it
// reports whether it added one (the caller may then set its Attributes).
func (l *LinkSet) Add(sc trace.SpanContext) bool {
	if !sc.IsValid() {
		l.Untraced++
		return false
	}
	if l.seen == nil {
		l.seen = make(map[trace.TraceID]struct{})
	}
	id := sc.TraceID()
	if _, ok := l.seen[id]; ok {
		return false
	}
	l.seen[id] = struct{}{}
	max := l.Max
	if max <= 0 {
		max = MaxLinks
	}
	if len(l.Links) >= max {
		l.Dropped++
		return false
	}
	l.Links = append(l.Links, trace.Link{SpanContext: sc})
	return true
}

// AddTraceparent is Add for a W3C traceparent (and tracestate) header pair. It
// parses only a trace not seen yet and under the cap: a batch repeats traces, and
// past the cap only the count is needed (a well-formed header's trace id is then
// counted as text, unparsed). Do not mix it with Add on one set.
func (l *LinkSet) AddTraceparent(traceparent, tracestate string) bool {
	tp := traceparent
	if len(tp) < 55 || tp[2] != '-' || tp[35] != '-' {
		l.Untraced++
		return false
	}
	key := tp[3:35]
	if l.seenText == nil {
		l.seenText = make(map[string]struct{})
	}
	if _, ok := l.seenText[key]; ok {
		return false
	}
	max := l.Max
	if max <= 0 {
		max = MaxLinks
	}
	if len(l.Links) >= max {
		l.seenText[key] = struct{}{}
		l.Dropped++
		return false
	}
	sc := SpanContext(traceparent, tracestate)
	if !sc.IsValid() {
		l.Untraced++
		return false
	}
	l.seenText[key] = struct{}{}
	l.Links = append(l.Links, trace.Link{SpanContext: sc})
	return true
}

// Apply adds the links and the counts (LinksDropped, Untraced) to span.
func (l *LinkSet) Apply(span trace.Span) {
	for _, k := range l.Links {
		span.AddLink(k)
	}
	span.SetAttributes(LinksDropped.Int(l.Dropped), Untraced.Int(l.Untraced))
}
