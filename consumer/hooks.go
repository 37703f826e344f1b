package consumer

import "time"

// Hooks observe the consumer, for metrics (package
// github.com/relaybox/relaybox/metrics turns them into Prometheus collectors). Any
// may be nil. They are called from the partition goroutines and must not block.
// Each takes one struct, so that fields can be added without breaking callers (as
// pgx's tracer and franz-go's hooks do).
type Hooks struct {
	// OnProcessed: a handler ran and its transaction committed (the event is
	// applied).
	OnProcessed func(RecordEvent)
	// OnDuplicate: the event id was already in processed_events for this group; the
	// handler did not run.
	OnDuplicate func(RecordEvent)
	// OnSkipped: no handler for the event type; recorded and skipped (SkipUnknown).
	OnSkipped func(RecordEvent)
	// OnRetry: an attempt of a handler failed and will be retried after a backoff.
	OnRetry func(RetryEvent)
	// OnDeadLetter: the record was produced to its dead-letter topic.
	OnDeadLetter func(DeadLetterEvent)
	// OnHandlerLatency: one handler call returned (successfully or not).
	OnHandlerLatency func(HandlerEvent)
	// OnLag: a partition's record (or batch) is done.
	OnLag func(LagEvent)
	// OnBatch: in batch mode, a partition took a batch of records to run in one
	// transaction.
	OnBatch func(BatchEvent)
	// OnRevoked: partitions are no longer this consumer's (revoked by a rebalance,
	// lost, or left at shutdown); their lag is now another member's to report.
	OnRevoked func(RevokedEvent)
	// OnError: an infrastructure failure, retried without limit.
	OnError func(ErrorEvent)
}

// RecordEvent is the argument of Hooks.OnProcessed, OnDuplicate and OnSkipped: the
// record the outcome is about.
type RecordEvent struct {
	Topic     string
	Partition int32
	Offset    int64
	EventID   string // the relaybox.event_id header, else Config.DedupKey's key
	EventType string // empty for a record whose type is unknown before decoding
}

// RetryEvent is the argument of Hooks.OnRetry.
type RetryEvent struct {
	RecordEvent
	Attempt int   // the failed attempt, 1-based
	Err     error // the handler's error
}

// DeadLetterEvent is the argument of Hooks.OnDeadLetter.
type DeadLetterEvent struct {
	RecordEvent
	Reason          string // one of the Reason* constants
	DeadLetterTopic string // where the record went
	Attempts        int    // handler attempts made (0: dead-lettered without running it)
	Err             error  // why
}

// HandlerEvent is the argument of Hooks.OnHandlerLatency.
type HandlerEvent struct {
	RecordEvent
	Duration time.Duration // the handler call alone, not its transaction's commit
	Err      error         // nil when the handler succeeded
}

// LagEvent is the argument of Hooks.OnLag.
type LagEvent struct {
	Topic     string
	Partition int32
	// Lag is the records of the partition not yet processed by this consumer, from
	// the last fetch's high watermark.
	Lag int64
}

// BatchEvent is the argument of Hooks.OnBatch.
type BatchEvent struct {
	Topic     string
	Partition int32
	Records   int // at most Config.MaxBatch
}

// RevokedEvent is the argument of Hooks.OnRevoked.
type RevokedEvent struct {
	Partitions map[string][]int32 // topic -> partitions
	Lost       bool               // lost (the group moved on without this member), not revoked
}

// ErrorEvent is the argument of Hooks.OnError.
type ErrorEvent struct {
	Kind ErrorKind
	Err  error
}

// ErrorKind names the part of the infrastructure an [ErrorEvent] is about.
type ErrorKind string

// The kinds of Hooks.OnError.
const (
	ErrorPostgres ErrorKind = "postgres" // a transaction, or the cleaner's delete
	ErrorRegistry ErrorKind = "registry" // the schema registry is unavailable
	ErrorKafka    ErrorKind = "kafka"    // a dead-letter produce failed
	ErrorCommit   ErrorKind = "commit"   // an offset commit failed
)

// recordEvent describes m for the hooks.
func recordEvent(m *Message) RecordEvent {
	return RecordEvent{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, EventID: m.ID, EventType: m.Type}
}
