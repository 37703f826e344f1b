package consumer

import (
	"context"
	"strconv"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/otelx"
)

// BatchSpanName is the name of the span of one batch-mode transaction. A record's
// span is named "process <topic>" (the messaging semantic conventions).
const BatchSpanName = "relaybox.consumer.batch"

// Attributes of the record and batch spans, besides the messaging ones.
const (
	// AttrOutcome is what became of the record (the Outcome* values) or, on a
	// batch span, of the batch (BatchCommitted, BatchSplit or OutcomeInterrupted).
	AttrOutcome = attribute.Key("relaybox.outcome")
	// AttrEventType is the record's event type.
	AttrEventType = attribute.Key("relaybox.event_type")
	// AttrRetries is how many times the handler failed and was retried.
	AttrRetries = attribute.Key("relaybox.retries")
	// AttrDeadLetterReason is the Reason* a dead-lettered record went with.
	AttrDeadLetterReason = attribute.Key("relaybox.dlq.reason")
)

// The outcomes of a record span (relaybox.outcome). A record retried and then
// applied or dead-lettered has one "retry" span event per failed attempt and
// relaybox.retries set.
const (
	OutcomeApplied      = "applied"       // the handler ran and its transaction committed
	OutcomeDuplicate    = "duplicate"     // already in processed_events: skipped
	OutcomeSkipped      = "skipped"       // no handler for its type (SkipUnknown)
	OutcomeDeadLettered = "dead_lettered" // produced to the dead-letter topic
	// OutcomeInterrupted: the partition was revoked or the consumer stopped before
	// the record was done; it is delivered again.
	OutcomeInterrupted = "interrupted"
)

// The outcomes of a batch span.
const (
	BatchCommitted = "committed" // every record in the batch's transaction
	BatchSplit     = "split"     // the records not committed ran one per transaction
)

// tracer is the configured provider's tracer, or the global provider's (which
// delegates to a provider set later).
func (c *Consumer) tracer() trace.Tracer { return c.tr }

// startRecordSpan starts it's span, a child of the trace context in the record's
// headers (it.ctx), and makes it.ctx carry it: the handler's spans nest under it.
//
// The attributes are set once the span is known to record: with no tracer
// provider (or a sampler that drops it) a record pays for no attribute at all.
func (p *partition) startRecordSpan(it *item) {
	m := it.m
	it.ctx, it.span = p.c.tracer().Start(it.ctx, p.spanName, trace.WithSpanKind(trace.SpanKindConsumer))
	if !it.span.IsRecording() {
		return
	}
	it.span.SetAttributes(
		semconv.MessagingSystemKafka,
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
		semconv.MessagingDestinationName(m.Topic),
		semconv.MessagingDestinationPartitionID(strconv.Itoa(int(m.Partition))),
		semconv.MessagingKafkaOffset(int(m.Offset)),
		semconv.MessagingMessageID(m.ID),
		semconv.MessagingConsumerGroupName(p.c.cfg.Group),
	)
}

// deduped notes what the dedup insert of it's current attempt said.
func (it *item) deduped(fresh bool) { it.dup, it.applied = !fresh, false }

// outcome is what became of it, once done.
func (it *item) outcome() string {
	switch {
	case it.sent:
		return OutcomeDeadLettered
	case it.dup:
		return OutcomeDuplicate
	case it.skip:
		return OutcomeSkipped
	case it.applied:
		return OutcomeApplied
	}
	return OutcomeInterrupted
}

// endRecordSpan ends it's span (once) with its outcome; done false means the record
// was not finished (interrupted).
func endRecordSpan(it *item, done bool) {
	span := it.span
	if span == nil {
		return
	}
	it.span = nil
	if !span.IsRecording() {
		span.End()
		return
	}
	outcome := OutcomeInterrupted
	if done {
		outcome = it.outcome()
	}
	span.SetAttributes(AttrOutcome.String(outcome), AttrEventType.String(it.m.Type))
	if it.retries > 0 {
		span.SetAttributes(AttrRetries.Int(it.retries))
	}
	if outcome == OutcomeDeadLettered && it.dead != nil {
		span.SetAttributes(AttrDeadLetterReason.String(it.dead.reason))
		span.RecordError(it.dead.err)
		span.SetStatus(codes.Error, "dead-lettered: "+it.dead.reason)
	}
	span.End()
}

// retried records a failed attempt on it's span.
func (it *item) retried(attempt int, err error) {
	it.retries = attempt
	if it.span != nil && it.span.IsRecording() {
		it.span.AddEvent("retry", trace.WithAttributes(attribute.Int("relaybox.attempt", attempt), attribute.String("error", err.Error())))
	}
}

// startBatchSpan starts the span of a batch-mode transaction over recs: a root, linked
// to the records' trace contexts (the first otelx.MaxLinks distinct traces, as the
// relay's batch span). Each record keeps its own span, a child of its record's
// context, linked to this one (linkBatch).
func (p *partition) startBatchSpan(recs []*kgo.Record) trace.Span {
	_, span := p.c.tracer().Start(context.Background(), BatchSpanName,
		trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			semconv.MessagingSystemKafka,
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingDestinationName(p.topic),
			semconv.MessagingDestinationPartitionID(strconv.Itoa(int(p.n))),
			semconv.MessagingConsumerGroupName(p.c.cfg.Group),
			semconv.MessagingBatchMessageCount(len(recs)),
		))
	if span.IsRecording() {
		var l otelx.LinkSet
		for _, rec := range recs {
			var tp, ts string
			for _, h := range rec.Headers {
				switch h.Key {
				case envelope.TraceParent:
					tp = string(h.Value)
				case envelope.TraceState:
					ts = string(h.Value)
				}
			}
			l.AddTraceparent(tp, ts)
		}
		l.Apply(span)
	}
	return span
}

// linkBatch links each record span of items to the batch span.
func linkBatch(batch trace.Span, items []*item) {
	if !batch.IsRecording() {
		return
	}
	sc := batch.SpanContext()
	for _, it := range items {
		if it.span != nil {
			it.span.AddLink(trace.Link{SpanContext: sc})
		}
	}
}

// endBatch ends the record spans of items not ended yet (interrupted) and the batch
// span, with the batch's outcome.
func endBatch(batch trace.Span, items []*item, done, split bool) {
	for _, it := range items {
		endRecordSpan(it, false)
	}
	outcome := BatchCommitted
	switch {
	case !done:
		outcome = OutcomeInterrupted
	case split:
		outcome = BatchSplit
	}
	batch.SetAttributes(AttrOutcome.String(outcome))
	batch.End()
}
