// Package envelope names the Kafka record headers that carry a relaybox event's
// envelope, shared by the relay (which writes them) and the consumer (which reads them).
package envelope

// Header names. Values are UTF-8 strings; times are RFC 3339 with nanoseconds (UTC).
const (
	EventID       = "relaybox.event_id"
	EventType     = "relaybox.event_type"
	AggregateType = "relaybox.aggregate_type"
	OccurredAt    = "relaybox.occurred_at"
	CorrelationID = "relaybox.correlation_id"
	CausationID   = "relaybox.causation_id"
	Source        = "relaybox.source"
	Subject       = "relaybox.subject"
	// W3C trace context, under the names the W3C and OpenTelemetry's Kafka
	// instrumentation use.
	TraceParent = "traceparent"
	TraceState  = "tracestate"
)

// Reserved reports whether name is one of the headers relaybox sets itself; extra
// headers supplied by a writer may not use these names.
func Reserved(name string) bool {
	switch name {
	case EventID, EventType, AggregateType, OccurredAt, CorrelationID, CausationID, Source, Subject, TraceParent, TraceState:
		return true
	}
	return false
}
