package outbox

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/otelx"
)

// SpanName is the name of the span a write starts when its ctx carries a span.
const SpanName = "relaybox.outbox.write"

// maxSpanEventIDs bounds the event ids listed on a write span (a batch write may
// carry thousands).
const maxSpanEventIDs = 32

// AttrEventIDs lists the ids of the events a write recorded (the first 32).
const AttrEventIDs = attribute.Key("relaybox.event_ids")

// startSpan starts the write span when ctx carries a valid span context; nil
// otherwise (an untraced write stays untraced: no root span per write).
func (w *Writer) startSpan(ctx context.Context) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, nil
	}
	return otelx.Tracer(w.cfg.TracerProvider).Start(ctx, SpanName,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(semconv.MessagingSystemKafka, semconv.MessagingOperationTypeCreate))
}

// markWrite describes the write on span; if span does not record (the writer's
// provider is a no-op) but the caller's span (in caller) does, a span event on the
// caller's span marks the write instead.
func markWrite(caller context.Context, span trace.Span, rows []row) {
	if span == nil {
		return
	}
	target := span
	if !span.IsRecording() {
		if target = trace.SpanFromContext(caller); !target.IsRecording() {
			return
		}
	}
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, semconv.MessagingBatchMessageCount(len(rows)))
	ids := make([]string, 0, min(len(rows), maxSpanEventIDs))
	topic := rows[0].topic
	for i := range rows {
		if len(ids) < maxSpanEventIDs {
			ids = append(ids, rows[i].id.String())
		}
		if rows[i].topic != topic {
			topic = ""
		}
	}
	if topic != "" {
		attrs = append(attrs, semconv.MessagingDestinationName(topic))
	}
	if len(rows) == 1 {
		attrs = append(attrs, semconv.MessagingMessageID(ids[0]))
	}
	attrs = append(attrs, AttrEventIDs.StringSlice(ids))
	if target == span {
		span.SetAttributes(attrs...)
		return
	}
	target.AddEvent(SpanName, trace.WithAttributes(attrs...))
}

// endSpan ends span (nil: nothing), with err as its status.
func endSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
