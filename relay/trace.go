package relay

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/otelx"
)

// BatchSpanName is the name of the span the relay makes per batch.
const BatchSpanName = "relaybox.relay.batch"

// MaxBatchLinks is the most links a batch span carries: the OpenTelemetry SDK's
// default link limit (OTEL_SPAN_LINK_COUNT_LIMIT), past which it drops links
// silently. The distinct traces past it are counted in relaybox.links.dropped.
const MaxBatchLinks = otelx.MaxLinks

// Attributes of the batch span (besides messaging.system, messaging.operation.type
// and messaging.batch.message_count).
const (
	AttrShard     = attribute.Key("relaybox.shard")       // the shard whose drain ran the batch
	AttrShards    = attribute.Key("relaybox.shards")      // every shard of the batch, when it drained several
	AttrRows      = attribute.Key("relaybox.batch.rows")  // rows read
	AttrBytes     = attribute.Key("relaybox.batch.bytes") // key, value and header bytes handed to Kafka
	AttrPublished = attribute.Key("relaybox.batch.published")
	AttrParked    = attribute.Key("relaybox.batch.parked")
	AttrRetried   = attribute.Key("relaybox.batch.retried") // rows left for the next attempt
	AttrOutcome   = attribute.Key("relaybox.batch.outcome") // one of the Outcome* values
)

// The values of the batch span's relaybox.batch.outcome.
const (
	// OutcomePublished: every row read was published (or, behind a parked row of its
	// key, left for later) and the outcome recorded.
	OutcomePublished = "published"
	// OutcomeParked: rows were parked; the others were published.
	OutcomeParked = "parked"
	// OutcomeRetry: Kafka or the registry failed for some rows; they stay for the
	// next attempt.
	OutcomeRetry = "retry"
	// OutcomeFenced: the lease was lost; the new owner publishes the rows.
	OutcomeFenced = "fenced"
	// OutcomeLeaseDeadline: the lease deadline passed before producing; nothing was
	// handed to Kafka.
	OutcomeLeaseDeadline = "lease_deadline"
	// OutcomeError: Postgres failed (reading schemas, or recording the outcome: the
	// acked rows are published again).
	OutcomeError = "error"
)

// startBatchSpan starts b's span once its rows are read (start is when the read
// began). The span links to the stored trace context of the batch's events: one link
// per distinct trace id, the first MaxLinks of them in row order; the distinct traces
// past the cap are counted in relaybox.links.dropped, events without a context in
// relaybox.links.untraced. When every traced event of the batch belongs to one trace,
// the span is also a child of the first such event's context (so a trace with one
// request's events shows the relay's batch inline); otherwise it is a root. The
// records themselves carry the writer's traceparent unchanged.
func (r *Relay) startBatchSpan(b *batch, start time.Time) {
	ctx := context.Background()
	if sc := singleTrace(b.rows); sc.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemKafka, semconv.MessagingOperationTypeSend,
		semconv.MessagingBatchMessageCount(len(b.rows)),
		AttrShard.Int(b.shards[0]), AttrRows.Int(len(b.rows)),
	}
	if len(b.shards) > 1 {
		attrs = append(attrs, AttrShards.IntSlice(b.shards))
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithTimestamp(start), trace.WithAttributes(attrs...)}
	if !trace.SpanContextFromContext(ctx).IsValid() {
		opts = append(opts, trace.WithNewRoot())
	}
	_, b.span = otelx.Tracer(r.cfg.TracerProvider).Start(ctx, BatchSpanName, opts...)
	if !b.span.IsRecording() {
		return // no SDK, or not sampled: the links are not worth parsing
	}
	linkRows(b.rows, 0).Apply(b.span)
}

// linkRows collects the links of rows (max 0: otelx.MaxLinks), each carrying the
// event id of the first event of its trace.
func linkRows(rows []outboxRow, max int) *otelx.LinkSet {
	l := &otelx.LinkSet{Max: max}
	var buf []byte
	for i := range rows {
		o := &rows[i]
		if l.AddTraceparent(o.traceparent, o.tracestate) {
			buf = appendUUID(buf[:0], o.eventID)
			l.Links[len(l.Links)-1].Attributes = []attribute.KeyValue{semconv.MessagingMessageID(string(buf))}
		}
	}
	return l
}

// singleTrace returns the context of the first traced row when every traced row of
// rows has the same trace id; otherwise (or when none is traced) an invalid one.
// Trace ids are compared as text (the traceparent's second field), parsing one.
func singleTrace(rows []outboxRow) trace.SpanContext {
	first := -1
	for i := range rows {
		tp := rows[i].traceparent
		if len(tp) < 55 {
			continue
		}
		if first < 0 {
			first = i
			continue
		}
		if tp[3:35] != rows[first].traceparent[3:35] {
			return trace.SpanContext{}
		}
	}
	if first < 0 {
		return trace.SpanContext{}
	}
	return otelx.SpanContext(rows[first].traceparent, rows[first].tracestate)
}

// endBatchSpan ends b's span (if any, once) with its outcome; err is the batch's
// error, if any.
func (r *Relay) endBatchSpan(b *batch, err error) {
	span := b.span
	if span == nil {
		return
	}
	b.span = nil
	if !span.IsRecording() {
		span.End()
		return
	}
	o := &b.out
	bytes := 0
	for _, p := range b.items {
		if p.rec == nil {
			continue
		}
		bytes += len(p.rec.Key) + len(p.rec.Value)
		for _, h := range p.rec.Headers {
			bytes += len(h.Key) + len(h.Value)
		}
	}
	outcome := batchOutcome(b, err)
	span.SetAttributes(AttrBytes.Int(bytes), AttrPublished.Int(len(o.done)), AttrParked.Int(len(o.parkIDs)),
		AttrRetried.Int(len(o.retryIDs)), AttrOutcome.String(outcome))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, outcome)
	}
	span.End()
}

func batchOutcome(b *batch, err error) string {
	switch {
	case errors.Is(err, errFenced):
		return OutcomeFenced
	case errors.Is(err, errLeaseDeadline):
		return OutcomeLeaseDeadline
	case err != nil && !errors.Is(err, b.depErr) && !errors.Is(err, b.out.kafkaErr):
		return OutcomeError
	case len(b.out.retryIDs) > 0 || err != nil:
		return OutcomeRetry
	case len(b.out.parkIDs) > 0:
		return OutcomeParked
	}
	return OutcomePublished
}
