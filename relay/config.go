package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"
)

// Registry resolves a schema to its registry id; the relay's own client (built from
// RegistryURL) implements it. A custom Registry says why it cannot give an id by
// wrapping ErrSchemaIncompatible (the event parks as incompatible_schema) or
// ErrSchemaNotRegistered (with DisableAutoRegister: retried for SchemaNotFoundGrace, then
// parked); any other error means the registry is unavailable, and the event is retried.
type Registry interface {
	ID(ctx context.Context, subject, schema string, register bool) (int, error)
}

// Errors a custom Registry wraps to classify its failures (see Registry).
var (
	ErrSchemaIncompatible  = errors.New("relay: schema incompatible with its subject")
	ErrSchemaNotRegistered = errors.New("relay: schema not registered under its subject")
)

// Hooks observe the relay (for metrics: package relayboxprom-style collectors, or the
// CLI's). Any may be nil. They must not block. Each takes one struct, so fields can be
// added without breaking callers (pgx's tracer, franz-go's hooks).
type Hooks struct {
	// OnBatch: a batch finished.
	OnBatch func(BatchEvent)
	// OnRead: a batch's read query returned (the time a relay needs to find its next
	// events; it should not grow with the backlog).
	OnRead func(ReadEvent)
	// OnPublished: one record acked.
	OnPublished func(PublishedEvent)
	// OnError: a failure, of an ErrorKind.
	OnError func(ErrorEvent)
	// OnParked: an event parked.
	OnParked func(ParkEvent)
	// OnShards: the set of shards this replica owns changed.
	OnShards func(ShardsEvent)
	// OnLease: a drain of a shard started under a lease generation, or stopped
	// because the lease was lost.
	OnLease func(LeaseEvent)
	// OnFenced: an outcome write (or, in exactly-once mode, a transaction) was refused
	// because this replica no longer holds the lease it was made under.
	OnFenced func(FencedEvent)
	// OnTransaction: exactly-once mode ended a Kafka transaction.
	OnTransaction func(TransactionEvent)
}

// BatchEvent is the argument of Hooks.OnBatch.
type BatchEvent struct {
	Shard     int           // the shard whose drain ran the batch (it may have drained others with it)
	Read      int           // rows read
	Published int           // rows acked and removed (or marked)
	Duration  time.Duration // from read to the outcome's commit
	// Stages splits the batch's time (the latency of the events it carried) by step.
	Stages BatchStages
}

// BatchStages is a batch's time by step: waiting for a slot (one of
// MaxInFlightBatches for a shard with a backlog, one of 4 for shards that keep up;
// exactly-once groups take none), the read query, framing the records (registry
// lookups included), producing until the last ack (in exactly-once mode, until the
// transaction's end), and recording the outcome in Postgres.
type BatchStages struct {
	SlotWait, Read, Build, Produce, Record time.Duration
}

// ReadEvent is the argument of Hooks.OnRead.
type ReadEvent struct {
	Shard    int // the first shard of the batch
	Rows     int
	Duration time.Duration // includes the wait for a pool connection
}

// PublishedEvent is the argument of Hooks.OnPublished.
type PublishedEvent struct {
	// Latency is from the event's created_at (now() of the transaction that wrote it:
	// its start, not its commit) to the ack.
	Latency time.Duration
}

// ErrorEvent is the argument of Hooks.OnError.
type ErrorEvent struct {
	Kind ErrorKind
	Err  error
}

// ParkEvent is the argument of Hooks.OnParked.
type ParkEvent struct {
	Reason ParkReason
	ID     int64 // the outbox row
}

// ShardsEvent is the argument of Hooks.OnShards.
type ShardsEvent struct {
	Owned []int // sorted
}

// LeaseEvent is the argument of Hooks.OnLease.
type LeaseEvent struct {
	Shard      int
	Generation int64 // bumped by every claim of the shard
	Acquired   bool  // true: a drain started; false: the lease was lost
}

// FencedEvent is the argument of Hooks.OnFenced.
type FencedEvent struct {
	Shards []int // the shards of the batch (usually one)
	Rows   int   // rows the write did not change: they belong to the lease's new owner
	Op     string
}

// TransactionEvent is the argument of Hooks.OnTransaction.
type TransactionEvent struct {
	Shard     int // the first shard of the transaction's group (ExactlyOnceGroupShards)
	Shards    []int
	Records   int
	Committed bool          // false: aborted (Err says why)
	Fenced    bool          // the next owner's producer fenced this one
	Err       error         // nil when committed
	Duration  time.Duration // from begin to the end's answer
	Produce   time.Duration // of Duration, producing the records until the last ack
}

// ErrorKind says which dependency a failure reported to Hooks.OnError came from. Its
// values are the "kind" label of relaybox_relay_errors_total.
type ErrorKind string

// The kinds of Hooks.OnError.
const (
	ErrorKafka    ErrorKind = "kafka"    // producing, or the Kafka client
	ErrorRegistry ErrorKind = "registry" // resolving a schema id
	ErrorPostgres ErrorKind = "postgres" // reading the outbox, recording outcomes, the lease protocol's statements
	ErrorLease    ErrorKind = "lease"    // a lease lost while its shard was draining
)

// ErrorKinds lists every ErrorKind (for metrics that pre-create a series per kind).
func ErrorKinds() []ErrorKind {
	return []ErrorKind{ErrorKafka, ErrorRegistry, ErrorPostgres, ErrorLease}
}

// ParkReason says why an event was parked: the outbox's park_reason column, the
// "reason" label of the parked metrics and ParkEvent.Reason. The detail (the
// registry's or Kafka's error text) is in last_error.
type ParkReason string

// The park reasons.
const (
	// ParkIncompatible: the registry refused the schema under its subject's
	// compatibility level.
	ParkIncompatible ParkReason = "incompatible_schema"
	// ParkNotRegistered: DisableAutoRegister is set and the schema is not under its subject
	// (after SchemaNotFoundGrace).
	ParkNotRegistered ParkReason = "schema_not_registered"
	// ParkTooLarge: the framed record exceeds MaxRecordBytes, or Kafka refused its size.
	ParkTooLarge ParkReason = "too_large"
	// ParkTopicMissing: the topic does not exist and AutoCreateTopics is off.
	ParkTopicMissing ParkReason = "topic_missing"
	// ParkInvalid: the row cannot become a record (its schema is missing from the
	// schema store, Kafka refused the record or the topic name).
	ParkInvalid ParkReason = "invalid"
	// ParkUnknown: the reason was not recorded (a row parked by hand, or one parked
	// before migration 004 whose last_error named no known reason).
	ParkUnknown ParkReason = "unknown"
)

// ParkReasons lists every ParkReason.
func ParkReasons() []ParkReason {
	return []ParkReason{ParkIncompatible, ParkNotRegistered, ParkTooLarge, ParkTopicMissing, ParkInvalid, ParkUnknown}
}

// The modes of a replica, as `relaybox status` shows them.
const (
	ModeAtLeastOnce = "at-least-once"
	ModeExactlyOnce = "exactly-once"
)

// ExactlyOnceGroupShards is how many consecutive shards exactly-once mode leases and
// publishes together (64/16 = 4 groups, so at most 4 replicas share the work). A group
// is the unit of the lease and of the transactional id: one transaction per group
// batch, not one per shard, keeps the transaction rate (and so the broker's commit
// markers) low at steady rates. Each transaction costs the broker ~1.5 ms of CPU
// whatever it carries, and a group runs them back to back while events flow: groups of
// 8 (8 producers, the releases before this one) spent most of a 2-core machine at
// 5,000 events/s on transactions of ~9 events (docs/benchmarks.md, session 9).
const ExactlyOnceGroupShards = 16

// legacyGroupShards is the group size of the releases before groups of 16: their
// transactional ids (<prefix>-g<group>) are fenced, and their commit log records read,
// by the group that now holds their shards (see endLegacy), so that a replica of such a
// release frozen across an upgrade publishes nothing and its last commits are honoured.
const legacyGroupShards = 8

// Defaults of Config (the CLI's too). DefaultBatchSize × DefaultMaxInFlightBatches:
// 16000 rows in flight at most.
const (
	DefaultBatchSize           = 4000
	DefaultMaxInFlightBatches  = 4
	DefaultLeaseTTL            = 15 * time.Second
	DefaultPollInterval        = time.Second
	DefaultShutdownGrace       = 20 * time.Second
	DefaultSchemaNotFoundGrace = 10 * time.Second
	DefaultCompression         = "snappy"
	DefaultLinger              = 2 * time.Millisecond
	DefaultMaxRecordBytes      = 1 << 20
	DefaultTopicPartitions     = 12
	DefaultUnreadyAfter        = 30 * time.Second
	DefaultMaxBackoff          = 30 * time.Second
	DefaultRegistryTimeout     = 10 * time.Second
	// DefaultHeartbeatDivisor: HeartbeatInterval defaults to LeaseTTL divided by it.
	DefaultHeartbeatDivisor = 5
	// DefaultAutoRegister: schemas are registered unless DisableAutoRegister is set.
	DefaultAutoRegister = true
	// MaxBatchSize is the largest BatchSize.
	MaxBatchSize = 100000
)

// DefaultPoolSize is the Postgres pool a relay with cfg needs (what the CLI sizes its
// pool to): the batches in flight plus 8, at least 16, so that outcome writes and the
// small batches of shards that keep up do not queue behind the reads.
func DefaultPoolSize(cfg *Config) int {
	n := DefaultMaxInFlightBatches
	if cfg != nil && cfg.MaxInFlightBatches > 0 {
		n = cfg.MaxInFlightBatches
	}
	return max(n+8, 16)
}

// Config configures a Relay.
type Config struct {
	// Schema holds relaybox's tables. Defaults to "relaybox".
	Schema string
	// Channel is the LISTEN channel. Defaults to outbox.DefaultChannel.
	Channel string
	// Brokers are the Kafka seed brokers. Required unless KafkaOpts sets them.
	Brokers []string
	// KafkaOpts are appended to the relay's producer options (TLS, SASL, linger, ...).
	KafkaOpts []kgo.Opt
	// RegistryURL is the schema registry's Confluent-compatible base URL, e.g.
	// http://localhost:8081 or Apicurio's http://localhost:8080/apis/ccompat/v7.
	// Required unless Registry is set.
	RegistryURL string
	// RegistryUsername and RegistryPassword enable HTTP basic auth. Never logged.
	RegistryUsername, RegistryPassword string
	// RegistryTimeout bounds each registry call. Defaults to 10s
	// (DefaultRegistryTimeout).
	RegistryTimeout time.Duration
	// Registry overrides the client built from RegistryURL.
	Registry Registry
	// DisableAutoRegister stops the relay from registering schemas not yet under their
	// subject: such an event is retried for SchemaNotFoundGrace, then parks as
	// schema_not_registered. Defaults to false: the relay registers them, and the
	// registry's compatibility level decides what it accepts (an incompatible schema
	// parks as incompatible_schema), as Confluent's serializers do. That is the CLI's
	// default too (--auto-register): set a level on each subject and keep
	// registration on, unless a pipeline registers schemas itself
	// (docs/configuration.md, "Auto-register").
	DisableAutoRegister bool
	// ReplicaID names this replica. Defaults to hostname-pid-random.
	ReplicaID string
	// BatchSize is the most rows read per shard per batch. Defaults to 4000.
	BatchSize int
	// MaxInFlightBatches bounds how many shards with a backlog (last batch at least a
	// quarter of BatchSize) read and publish at once, across all shards this replica
	// owns: the relay's memory is about this times BatchSize rows, however large the
	// backlog. Shards that keep up run their small batches on 4 slots of their own:
	// while those run, the next batch gathers the news of every other shard.
	// Defaults to 4: with the default BatchSize, 16000 rows. Fewer, larger batches
	// drain faster than many small ones on the same cores, as Postgres does less per
	// row (docs/benchmarks.md, "Against the targets").
	MaxInFlightBatches int
	// PollInterval is how often idle shards are polled without a NOTIFY. Defaults to 1s.
	PollInterval time.Duration
	// LeaseTTL is how long a shard lease lasts without renewal. Defaults to 15s.
	LeaseTTL time.Duration
	// HeartbeatInterval is how often leases are renewed. Defaults to LeaseTTL/5.
	HeartbeatInterval time.Duration
	// Compression is the codec of produced batches: "snappy" (the default), "lz4",
	// "zstd", "gzip" or "none". Compression costs the relay CPU and saves the broker
	// bytes (disk, network, consumers' fetches).
	Compression string
	// Linger is how long a partition's batch waits for more records before it is sent.
	// Defaults to 2ms; a negative value sends at once.
	Linger time.Duration
	// MaxRecordBytes bounds a framed record (key, value, headers). Larger events park.
	// Defaults to 1 MiB, Kafka's default message.max.bytes.
	MaxRecordBytes int
	// DeliveryTimeout, when non-zero, bounds how long a record may wait for Kafka
	// before it fails. Defaults to 0: records never time out, a batch waits for Kafka
	// to come back (readiness turns false meanwhile). A non-zero value can break per-key
	// order when the broker fails: franz-go then fails a partition's oldest batch while
	// later batches of the same partition go on and may be acked first.
	DeliveryTimeout time.Duration
	// Retention, when non-zero, switches to retention mode: published rows are marked
	// (published_at) instead of deleted, and purged once older than Retention.
	Retention time.Duration
	// AutoCreateTopics creates a missing topic (TopicPartitions partitions) instead of
	// parking its events.
	AutoCreateTopics bool
	// TopicPartitions for auto-created topics. Defaults to 12.
	TopicPartitions int32
	// UnreadyAfter: Ready reports an error once publishing has failed continuously for
	// this long. Defaults to 30s.
	UnreadyAfter time.Duration
	// MaxBackoff caps the exponential backoff after failures. Defaults to 30s.
	MaxBackoff time.Duration
	// SchemaNotFoundGrace: with DisableAutoRegister, how long a schema the registry says
	// is not registered is retried before its event parks as schema_not_registered (a
	// registry may not see a schema registered a moment ago). Defaults to 10s.
	SchemaNotFoundGrace time.Duration
	// ShutdownGrace bounds how long Run, once ctx is cancelled, waits for the batches
	// in flight (leases are renewed meanwhile); then the Kafka client is closed, the
	// records still waiting fail and their rows stay. Defaults to 20s.
	ShutdownGrace time.Duration
	// ExactlyOnce publishes each batch in a Kafka transaction: a read_committed reader
	// then sees every event once, in key order, whatever fails (docs/guarantees.md).
	// Shards are leased and published in groups of ExactlyOnceGroupShards, one
	// transactional id per group: a transaction carries the rows of all the shards of
	// its group. Every replica sharing the outbox must run in the same mode: a replica
	// does not claim shards while one of the other mode (or an exactly-once replica
	// grouping shards by another size, such as a release before groups of 16) is live.
	// Defaults to false (at-least-once).
	ExactlyOnce bool
	// TransactionalIDPrefix names the groups' transactional ids (prefix-g<group>of4) in
	// exactly-once mode. Two relays with the same prefix fence each other: it must
	// be unique per outbox. Defaults to relaybox-<database system identifier>-<Schema>.
	TransactionalIDPrefix string
	// CommitLogTopic is the compacted topic (64 partitions; a group writes to the
	// partition of its first shard) where exactly-once mode records, inside each
	// transaction, which outbox rows it carried, so the next owner of a group does not
	// publish them again. Created if missing. Defaults to
	// "<TransactionalIDPrefix>.commits" with characters Kafka refuses replaced by "_".
	CommitLogTopic string
	// CloudEvents also writes the CloudEvents Kafka binary-mode headers, on every
	// topic or on some (see CloudEvents). Off by default.
	CloudEvents CloudEvents
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Hooks for metrics.
	Hooks Hooks
	// TracerProvider makes the span of each batch (BatchSpanName; see "Tracing" in
	// the package doc). Defaults to the global provider (otel.GetTracerProvider),
	// looked up per batch.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns a copy of c (nil: the zero Config) with every unset field
// given its default. The Registry client built from RegistryURL is not: New builds it.
func (c *Config) WithDefaults() *Config {
	r := Config{}
	if c != nil {
		r = *c
	}
	defaultPlace(&r.Schema, &r.Channel)
	if r.ReplicaID == "" {
		h, _ := os.Hostname()
		r.ReplicaID = fmt.Sprintf("%s-%d-%04x", h, os.Getpid(), time.Now().UnixNano()&0xffff)
	}
	if r.RegistryTimeout == 0 {
		r.RegistryTimeout = DefaultRegistryTimeout
	}
	if r.BatchSize == 0 {
		r.BatchSize = DefaultBatchSize
	}
	if r.MaxInFlightBatches == 0 {
		r.MaxInFlightBatches = DefaultMaxInFlightBatches
	}
	if r.PollInterval == 0 {
		r.PollInterval = DefaultPollInterval
	}
	if r.LeaseTTL == 0 {
		r.LeaseTTL = DefaultLeaseTTL
	}
	if r.SchemaNotFoundGrace == 0 {
		r.SchemaNotFoundGrace = DefaultSchemaNotFoundGrace
	}
	if r.ShutdownGrace == 0 {
		r.ShutdownGrace = DefaultShutdownGrace
	}
	if r.HeartbeatInterval == 0 {
		r.HeartbeatInterval = r.LeaseTTL / DefaultHeartbeatDivisor
	}
	if r.Compression == "" {
		r.Compression = DefaultCompression
	}
	if r.Linger == 0 {
		r.Linger = DefaultLinger
	}
	if r.MaxRecordBytes == 0 {
		r.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if r.TopicPartitions == 0 {
		r.TopicPartitions = DefaultTopicPartitions
	}
	if r.UnreadyAfter == 0 {
		r.UnreadyAfter = DefaultUnreadyAfter
	}
	if r.MaxBackoff == 0 {
		r.MaxBackoff = DefaultMaxBackoff
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	_ = r.CloudEvents.withDefaults(r.Schema, r.RegistryURL) // its errors are Validate's
	return &r
}

// Validate returns an error naming the first field of c that cannot work, as New
// would with c: unset fields take their defaults (WithDefaults) first.
func (c *Config) Validate() error {
	r := c.WithDefaults()
	if r.Registry == nil {
		if r.RegistryURL == "" {
			return errors.New("relay: Config.RegistryURL (or Config.Registry) is required")
		}
		if u, err := url.Parse(r.RegistryURL); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return errors.New("relay: Config.RegistryURL: want http(s)://host[:port][/path]") // the URL may hold a password: not shown
		}
	}
	if err := validPlace("Config", r.Schema, r.Channel); err != nil {
		return err
	}
	negative := []struct {
		name string
		d    time.Duration
	}{
		{"RegistryTimeout", r.RegistryTimeout}, {"PollInterval", r.PollInterval}, {"LeaseTTL", r.LeaseTTL},
		{"HeartbeatInterval", r.HeartbeatInterval}, {"DeliveryTimeout", r.DeliveryTimeout}, {"Retention", r.Retention},
		{"UnreadyAfter", r.UnreadyAfter}, {"MaxBackoff", r.MaxBackoff}, {"SchemaNotFoundGrace", r.SchemaNotFoundGrace},
		{"ShutdownGrace", r.ShutdownGrace},
	}
	for _, n := range negative {
		if n.d < 0 {
			return fmt.Errorf("relay: Config.%s must not be negative, got %s", n.name, n.d)
		}
	}
	if ce := r.CloudEvents; ce.Enabled || len(ce.Topics) > 0 {
		if err := ce.withDefaults(r.Schema, r.RegistryURL); err != nil {
			return err
		}
	}
	switch {
	case len(r.Brokers) == 0 && len(r.KafkaOpts) == 0:
		return errors.New("relay: Config.Brokers (or seed brokers in Config.KafkaOpts) is required")
	case r.BatchSize < 1 || r.BatchSize > MaxBatchSize:
		return fmt.Errorf("relay: Config.BatchSize must be 1..%d, got %d", MaxBatchSize, r.BatchSize)
	case r.MaxInFlightBatches < 1:
		return fmt.Errorf("relay: Config.MaxInFlightBatches must be positive, got %d", r.MaxInFlightBatches)
	case r.HeartbeatInterval*2 >= r.LeaseTTL:
		return fmt.Errorf("relay: Config.HeartbeatInterval (%s) must be under half of LeaseTTL (%s)", r.HeartbeatInterval, r.LeaseTTL)
	case codec(r.Compression) == nil:
		return fmt.Errorf("relay: Config.Compression %q: want snappy, lz4, zstd, gzip or none", r.Compression)
	case r.MaxRecordBytes < 1:
		return fmt.Errorf("relay: Config.MaxRecordBytes must be positive, got %d", r.MaxRecordBytes)
	case r.TopicPartitions < 1:
		return fmt.Errorf("relay: Config.TopicPartitions must be positive, got %d", r.TopicPartitions)
	}
	return nil
}

// codec is the franz-go codec named by a Compression setting, or nil.
func codec(name string) []kgo.CompressionCodec {
	switch strings.ToLower(name) {
	case "snappy":
		return []kgo.CompressionCodec{kgo.SnappyCompression(), kgo.NoCompression()}
	case "lz4":
		return []kgo.CompressionCodec{kgo.Lz4Compression(), kgo.NoCompression()}
	case "zstd":
		return []kgo.CompressionCodec{kgo.ZstdCompression(), kgo.NoCompression()}
	case "gzip":
		return []kgo.CompressionCodec{kgo.GzipCompression(), kgo.NoCompression()}
	case "none":
		return []kgo.CompressionCodec{kgo.NoCompression()}
	}
	return nil
}
