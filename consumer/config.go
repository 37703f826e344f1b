package consumer

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/migrations"
)

// Registry returns the writer schema registered under a schema id. The client built
// from Config.RegistryURL implements it (and caches).
//
// An implementation reports a schema id the registry does not know with an error
// matching [ErrSchemaNotFound] (errors.Is), and a schema that cannot be used (does
// not parse) with one matching [ErrSchemaInvalid]; such records are dead-lettered.
// Any other error counts as the registry being unavailable: the record is retried,
// without limit, until the registry answers.
type Registry interface {
	Schema(ctx context.Context, id int) (avro.Schema, error)
}

// UnknownPolicy says what happens to a record whose event type has no handler.
type UnknownPolicy int

const (
	// SkipUnknown records the event in processed_events (so it is never looked at
	// again by this group) and moves on. The default: a consumer subscribes to a
	// topic that carries more event types than it cares about.
	SkipUnknown UnknownPolicy = iota
	// DeadLetterUnknown sends the record to the dead-letter topic with reason
	// "unknown_type", for consumers that must handle every type on their topics.
	DeadLetterUnknown
)

// String returns "skip" or "dead-letter".
func (p UnknownPolicy) String() string {
	switch p {
	case SkipUnknown:
		return "skip"
	case DeadLetterUnknown:
		return "dead-letter"
	}
	return "UnknownPolicy(" + strconv.Itoa(int(p)) + ")"
}

// Config configures a [Consumer]. Only Group, Topics, a Kafka address and a registry
// are required.
type Config struct {
	// Group is the Kafka consumer group, and the consumer_group column of
	// processed_events: two groups each apply every event once. A group without
	// committed offsets starts at the beginning of its topics (set
	// kgo.ConsumeResetOffset in KafkaOpts to start elsewhere). Required.
	Group string
	// Topics to consume. Required.
	Topics []string
	// Brokers are the Kafka seed brokers. Required unless KafkaOpts sets them.
	Brokers []string
	// KafkaOpts are appended to the consumer's franz-go options (TLS, SASL, fetch
	// sizes, kgo.ConsumeResetOffset, session timeouts, ...). The group, topics,
	// commit and rebalance-callback options are the consumer's own; do not override
	// them.
	KafkaOpts []kgo.Opt
	// ReadUncommitted makes the consumer read records of Kafka transactions that were
	// aborted or are still open. By default it reads read_committed: the relay's
	// exactly-once mode publishes in Kafka transactions, and a record of an aborted
	// transaction (a relay fenced or crashed mid-batch) is published again by the
	// next owner, so applying the aborted copy would apply an event nobody committed
	// to Kafka. Set it only for topics written without transactions by producers
	// you cannot wait on (read_committed stops at the last stable offset).
	ReadUncommitted bool

	// RegistryURL is the schema registry's Confluent-compatible base URL, e.g.
	// http://localhost:8081 or Apicurio's http://localhost:8080/apis/ccompat/v7.
	// Required unless Registry is set.
	RegistryURL string
	// RegistryUsername and RegistryPassword enable HTTP basic auth. Never logged.
	RegistryUsername, RegistryPassword string
	// RegistryTimeout bounds each registry call. Defaults to 10s.
	RegistryTimeout time.Duration
	// Registry overrides the client built from RegistryURL.
	Registry Registry
	// SchemaNotFoundGrace is how long a schema id the registry says it does not
	// know is retried (with backoff, holding up its partition) before its records
	// are dead-lettered as unknown_schema. A registry can answer 404 for an id it
	// has just registered (Apicurio's visibility lag, a lagging replica, a caching
	// proxy): without a grace the first records of a new schema would be
	// dead-lettered while later events of the same key are applied. The grace runs
	// from the id's first "not found"; once it has passed, further records with that
	// id are dead-lettered at once. Defaults to 10s; negative means none.
	SchemaNotFoundGrace time.Duration

	// Schema is the Postgres schema holding processed_events. Defaults to "relaybox".
	Schema string
	// Logger defaults to slog.Default(). franz-go logs through it too, with
	// component=kafka.
	Logger *slog.Logger
	// TracerProvider makes the span of each record (and, in BatchMode, of each
	// batch): see "Tracing" in the package doc. Defaults to the global provider
	// (otel.GetTracerProvider).
	TracerProvider trace.TracerProvider

	// MaxAttempts is how many times a handler runs for one record before the record
	// is dead-lettered. 1 means no retry. Defaults to 5.
	MaxAttempts int
	// RetryBackoff is the wait after the first failed attempt; it doubles with each
	// further attempt (with ±20% jitter) up to MaxRetryBackoff. Defaults to 100ms.
	RetryBackoff time.Duration
	// MaxRetryBackoff caps the backoff between attempts, and between retries of
	// infrastructure failures (Postgres, registry or Kafka down), which are retried
	// without limit. Defaults to 10s.
	MaxRetryBackoff time.Duration

	// DeadLetterTopic names the dead-letter topic of a topic. Defaults to
	// [DeadLetterTopicName](topic, DeadLetterSuffix): topic + DeadLetterSuffix, or a
	// shortened name when that exceeds Kafka's 249 characters. The topic must exist
	// (or the consumer or the brokers must be allowed to create it): a dead-letter
	// produce that fails is retried without limit, and holds up its partition, rather
	// than drop the record. New refuses a function that names, for one of Topics,
	// the topic itself or a name Kafka does not accept.
	DeadLetterTopic func(topic string) string
	// DeadLetterSuffix is used by the default DeadLetterTopic. Defaults to ".dlq".
	DeadLetterSuffix string
	// UnknownType is the policy for event types without a handler. Defaults to
	// SkipUnknown.
	UnknownType UnknownPolicy

	// BatchMode runs the records of one partition taken together (up to MaxBatch)
	// in one transaction, with a savepoint per record. Faster; a failing record is
	// rolled back to its savepoint, retried and dead-lettered inside the batch
	// without undoing the others. Defaults to false (one transaction per record).
	BatchMode bool
	// MaxBatch bounds the records of one batch-mode transaction. Defaults to 500.
	MaxBatch int

	// DedupKey gives the dedup key of a record that has no relaybox.event_id
	// header (one not published by the relay). Defaults to "topic/partition/offset",
	// which dedups redeliveries of the same record but not a copy produced again
	// (such as a dead letter redriven).
	DedupKey func(rec *kgo.Record) string
	// DisableDedup skips processed_events entirely: handlers run in a transaction
	// but every redelivery is applied again. For benchmarks measuring the cost of
	// dedup only; never in production.
	DisableDedup bool

	// CommitInterval is how often the offsets of processed records are committed to
	// Kafka (they are also committed on revoke and on shutdown). Redeliveries after
	// a crash are at most about this much work, all deduplicated. Defaults to 1s.
	CommitInterval time.Duration
	// MaxPollRecords bounds the records taken from franz-go per poll. Defaults to 1000.
	MaxPollRecords int
	// MaxBufferedPerPartition is the number of fetched records a partition may have
	// waiting; past it, fetching that partition pauses until its goroutine catches
	// up. Bounds memory, and keeps a slow partition from holding up the others.
	// Defaults to 2000.
	MaxBufferedPerPartition int

	// CleanAfter, when non-zero, runs a cleaner in Run that deletes this group's
	// processed_events rows older than CleanAfter, every CleanInterval, in batches
	// of CleanBatch. See "Retention" in the package doc for the duplicate window
	// this opens. Defaults to 0 (never delete).
	CleanAfter time.Duration
	// CleanCommittedOnly makes the cleaner in Run use [Consumer.CleanCommitted]:
	// a row is deleted only once it is older than CleanAfter and the group's
	// committed offset of its partition is past its record. Prefer it: it costs one
	// offset fetch per cleaning, and never deletes the row of a record Kafka can
	// still deliver to the group; see "Retention" in the package doc.
	CleanCommittedOnly bool
	// CleanInterval defaults to 1h.
	CleanInterval time.Duration
	// CleanBatch defaults to 10000.
	CleanBatch int

	// Hooks for metrics.
	Hooks Hooks
}

// Defaults of Config (the CLI's too).
const (
	DefaultSchemaNotFoundGrace     = 10 * time.Second
	DefaultRegistryTimeout         = 10 * time.Second
	DefaultMaxAttempts             = 5
	DefaultRetryBackoff            = 100 * time.Millisecond
	DefaultMaxRetryBackoff         = 10 * time.Second
	DefaultDeadLetterSuffix        = ".dlq"
	DefaultMaxBatch                = 500
	DefaultCommitInterval          = time.Second
	DefaultMaxPollRecords          = 1000
	DefaultMaxBufferedPerPartition = 2000
	DefaultCleanInterval           = time.Hour
	DefaultCleanBatch              = 10000
)

// DefaultDedupKey is the dedup key of records without an event id:
// "topic/partition/offset".
func DefaultDedupKey(rec *kgo.Record) string {
	return rec.Topic + "/" + strconv.Itoa(int(rec.Partition)) + "/" + strconv.FormatInt(rec.Offset, 10)
}

// WithDefaults returns a copy of cfg (nil means the zero Config) with every unset
// field given its default.
func (cfg *Config) WithDefaults() *Config {
	c := Config{}
	if cfg != nil {
		c = *cfg
	}
	if c.Schema == "" {
		c.Schema = migrations.DefaultSchema
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.RegistryTimeout == 0 {
		c.RegistryTimeout = DefaultRegistryTimeout
	}
	if c.SchemaNotFoundGrace == 0 {
		c.SchemaNotFoundGrace = DefaultSchemaNotFoundGrace
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.MaxRetryBackoff == 0 {
		c.MaxRetryBackoff = DefaultMaxRetryBackoff
	}
	if c.DeadLetterSuffix == "" {
		c.DeadLetterSuffix = DefaultDeadLetterSuffix
	}
	if c.DeadLetterTopic == nil {
		suffix := c.DeadLetterSuffix
		c.DeadLetterTopic = func(topic string) string { return DeadLetterTopicName(topic, suffix) }
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.DedupKey == nil {
		c.DedupKey = DefaultDedupKey
	}
	if c.CommitInterval == 0 {
		c.CommitInterval = DefaultCommitInterval
	}
	if c.MaxPollRecords == 0 {
		c.MaxPollRecords = DefaultMaxPollRecords
	}
	if c.MaxBufferedPerPartition == 0 {
		c.MaxBufferedPerPartition = DefaultMaxBufferedPerPartition
	}
	if c.CleanInterval == 0 {
		c.CleanInterval = DefaultCleanInterval
	}
	if c.CleanBatch == 0 {
		c.CleanBatch = DefaultCleanBatch
	}
	return &c
}

// Validate returns an error naming the first field of cfg that cannot work, as New
// would with cfg: unset fields take their defaults (WithDefaults) first.
func (cfg *Config) Validate() error {
	c := cfg.WithDefaults()
	switch {
	case c.Group == "":
		return errors.New("consumer: Config.Group is required")
	case len(c.Topics) == 0:
		return errors.New("consumer: Config.Topics is required")
	case len(c.Brokers) == 0 && len(c.KafkaOpts) == 0:
		return errors.New("consumer: Config.Brokers is required")
	case c.Registry == nil && c.RegistryURL == "":
		return errors.New("consumer: Config.RegistryURL is required")
	case c.MaxAttempts < 1:
		return fmt.Errorf("consumer: Config.MaxAttempts must be at least 1, got %d", c.MaxAttempts)
	case c.RegistryTimeout < 0:
		return fmt.Errorf("consumer: Config.RegistryTimeout must not be negative, got %s", c.RegistryTimeout)
	case c.RetryBackoff < 0 || c.MaxRetryBackoff < c.RetryBackoff:
		return fmt.Errorf("consumer: Config.RetryBackoff (%s) must be between 0 and Config.MaxRetryBackoff (%s)", c.RetryBackoff, c.MaxRetryBackoff)
	case c.UnknownType != SkipUnknown && c.UnknownType != DeadLetterUnknown:
		return fmt.Errorf("consumer: Config.UnknownType is not a known policy: %v", c.UnknownType)
	case c.MaxBatch < 1:
		return fmt.Errorf("consumer: Config.MaxBatch must be positive, got %d", c.MaxBatch)
	case c.CommitInterval < 0:
		return errors.New("consumer: Config.CommitInterval must not be negative")
	case c.MaxPollRecords < 1 || c.MaxBufferedPerPartition < 1:
		return errors.New("consumer: Config.MaxPollRecords and Config.MaxBufferedPerPartition must be positive")
	case c.CleanAfter < 0 || c.CleanInterval < 0 || c.CleanBatch < 1:
		return errors.New("consumer: Config.CleanAfter and CleanInterval must not be negative, CleanBatch must be positive")
	}
	for _, t := range c.Topics {
		d := c.DeadLetterTopic(t)
		if d == t {
			return fmt.Errorf("consumer: Config.DeadLetterTopic of %q is the topic itself", t)
		}
		if err := validTopicName(d); err != nil {
			return fmt.Errorf("consumer: Config.DeadLetterTopic of %q: %w", t, err)
		}
	}
	return nil
}

// maxTopicName is Kafka's limit on a topic name's length.
const maxTopicName = 249

// DeadLetterTopicName is the default dead-letter topic of topic: topic + suffix
// when that fits Kafka's 249-character limit on topic names. A longer name keeps
// the suffix and as much of the topic as fits, with "-" and 8 hex digits of the
// FNV-1a hash of the whole topic name before the suffix, so that two long topics
// sharing a prefix get different dead-letter topics: a 249-character topic
// "orders…" gets "orders…" cut to 236 characters + "-1a2b3c4d" + ".dlq".
func DeadLetterTopicName(topic, suffix string) string {
	name := topic + suffix
	if len(name) <= maxTopicName {
		return name
	}
	h := fnv.New32a()
	h.Write([]byte(topic))
	tag := fmt.Sprintf("-%08x", h.Sum32())
	keep := max(0, maxTopicName-len(suffix)-len(tag))
	return topic[:min(keep, len(topic))] + tag + suffix
}

// validTopicName checks what Kafka checks of a topic name.
func validTopicName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%q is not a valid topic name", name)
	case len(name) > maxTopicName:
		return fmt.Errorf("topic name of %d characters exceeds Kafka's %d", len(name), maxTopicName)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("topic name %q has %q: Kafka allows only ASCII letters, digits, '.', '_' and '-'", name, r)
		}
	}
	return nil
}

// builtinRegistry adapts the internal registry client: a 404 becomes
// ErrSchemaNotFound, a schema that does not parse ErrSchemaInvalid (retrying will
// not fix either), anything else stays an "unavailable" error.
type builtinRegistry struct{ c *registry.Client }

func (b builtinRegistry) Schema(ctx context.Context, id int) (avro.Schema, error) {
	s, err := b.c.Schema(ctx, id)
	if err == nil {
		return s, nil
	}
	var re *registry.Error
	switch {
	case registry.IsNotFound(err):
		return nil, fmt.Errorf("%w: %w", ErrSchemaNotFound, err)
	case errors.Is(err, registry.ErrUnavailable), errors.As(err, &re):
		return nil, err
	}
	return nil, fmt.Errorf("%w: %w", ErrSchemaInvalid, err) // does not parse
}
