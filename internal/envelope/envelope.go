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

// The headers of the CloudEvents Kafka protocol binding, binary content mode (spec
// 1.0), which the relay also writes when CloudEvents is on for a topic.
const (
	CloudEventsSpecVersion = "ce_specversion"
	CloudEventsID          = "ce_id"
	CloudEventsType        = "ce_type"
	CloudEventsSource      = "ce_source"
	CloudEventsTime        = "ce_time"
	CloudEventsSubject     = "ce_subject"
	CloudEventsDataSchema  = "ce_dataschema"
	// ContentType carries the CloudEvents datacontenttype attribute in binary mode.
	ContentType = "content-type"
)

// CloudEventsOwn reports whether name is one of the CloudEvents headers the relay sets
// itself when CloudEvents is on: a writer's extra header of that name is then left
// out. Other ce_ headers (extension attributes) pass.
func CloudEventsOwn(name string) bool {
	switch name {
	case CloudEventsSpecVersion, CloudEventsID, CloudEventsType, CloudEventsSource, CloudEventsTime,
		CloudEventsSubject, CloudEventsDataSchema, ContentType:
		return true
	}
	return false
}
