package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/migrations"
)

// Relay publishes the outbox to Kafka. Create it with New and run it with Run.
type Relay struct {
	cfg  Config
	pool *pgxpool.Pool
	kc   *kgo.Client
	adm  *kadm.Client
	log  *slog.Logger
	sql  statements

	kopts []kgo.Opt // the producer's options, for exactly-once mode's per-shard clients

	mu        sync.Mutex
	shards    map[int]*shardRun
	retired   map[int]*shardRun // halted runs whose batch may still be finishing, by shard
	inflight  chan struct{}     // one slot per shard batch being read and published
	keepUp    chan struct{}     // one slot per batch of shards that keep up (keepUpBatches)
	mems      chan *batchMem    // batch memory kept for the next batches
	releasing map[int]bool
	drains    sync.WaitGroup // every drain and release goroutine

	testHook func(point string) // tests pause the relay at named points; nil otherwise

	fenced  atomic.Int64 // outcome writes that matched rows of a lease no longer held
	aborted atomic.Int64 // Kafka transactions aborted (exactly-once mode)
	txnMeta eosMeta      // exactly-once mode: the transactional id prefix and the commit log topic

	commitLogMu sync.Mutex
	commitLogOK bool // the commit log topic was found with its 64 partitions

	schemaMu sync.RWMutex
	schemas  map[[32]byte]string

	healthMu   sync.Mutex
	failing    map[ErrorKind]time.Time // component -> failing since
	lastErr    map[ErrorKind]error
	mixed      string // a live replica of the other mode (no claims meanwhile)
	running    bool
	kafkaSeen  atomic.Bool // Kafka answered since Run started
	topicsMade sync.Map
	// absentTopics: topic → when Kafka's metadata last said it does not exist.
	absentTopics sync.Map
	notFound     sync.Map // subject+fingerprint -> when the registry first said "not found"
	closeKafka   sync.Once
	legacyDone   map[int]bool // groups whose legacy groups are ended (endLegacy; guarded by commitLogMu)
}

// New returns a Relay over pool (the database holding the outbox). It builds its
// Kafka client but does not connect until Run.
func New(pool *pgxpool.Pool, cfg *Config) (*Relay, error) {
	if pool == nil {
		return nil, errors.New("relay: New: nil pool")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := *cfg.WithDefaults()
	if c.Registry == nil {
		c.Registry = registry.New(c.RegistryURL, registry.Options{Username: c.RegistryUsername, Password: c.RegistryPassword, Timeout: c.RegistryTimeout})
	}
	opts := []kgo.Opt{
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(max(c.Linger, 0)),
		kgo.ProducerBatchCompression(codec(c.Compression)...),
		kgo.ProducerBatchMaxBytes(int32(max(c.MaxRecordBytes, 1<<20))),
		kgo.MaxBufferedRecords(max(10000, 4*c.BatchSize)),
		kgo.WithLogger(kslog.New(slog.New(minLevel{c.Logger.Handler(), slog.LevelInfo}).With("component", "kafka"))),
		kgo.ClientID("relaybox-relay"),
	}
	if c.DeliveryTimeout > 0 {
		opts = append(opts, kgo.RecordDeliveryTimeout(c.DeliveryTimeout))
	}
	if len(c.Brokers) > 0 {
		opts = append(opts, kgo.SeedBrokers(c.Brokers...))
	}
	opts = append(opts, c.KafkaOpts...)
	kc, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("relay: kafka client: %w", err)
	}
	return &Relay{
		cfg: c, pool: pool, kc: kc, adm: kadm.NewClient(kc), log: c.Logger.With("replica", c.ReplicaID),
		sql: newStatements(c.Schema), kopts: opts, shards: map[int]*shardRun{}, retired: map[int]*shardRun{}, inflight: make(chan struct{}, c.MaxInFlightBatches), keepUp: make(chan struct{}, keepUpBatches), mems: make(chan *batchMem, c.MaxInFlightBatches), releasing: map[int]bool{},
		schemas: map[[32]byte]string{}, failing: map[ErrorKind]time.Time{}, lastErr: map[ErrorKind]error{},
	}, nil
}

// ReplicaID is this replica's name in the lease tables.
func (r *Relay) ReplicaID() string { return r.cfg.ReplicaID }

// Check verifies, once, everything the relay needs: the schema is migrated, Kafka
// answers, the registry answers. Each failure is one line naming what failed.
func (r *Relay) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := r.checkPostgres(ctx); err != nil {
		return err
	}
	if err := r.kc.Ping(ctx); err != nil {
		return fmt.Errorf("kafka unreachable: %w", err)
	}
	if ch, ok := r.cfg.Registry.(interface{ Check(context.Context) error }); ok {
		if err := ch.Check(ctx); err != nil {
			return err
		}
	}
	return nil
}

// checkPostgres pings Postgres and checks the schema's migrations.
func (r *Relay) checkPostgres(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := r.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres unreachable: %w", err)
	}
	return migrations.Check(ctx, r.pool, &migrations.Options{Schema: r.cfg.Schema})
}

// Run publishes until ctx is cancelled, then drains the batches in flight, releases
// its leases and returns. It first waits for Postgres to answer; it returns an error
// only if the schema is not migrated (or, in exactly-once mode, the commit log topic
// has too few partitions). Kafka and the registry need not answer at start: the
// batches retry them, and Ready reports the relay unready until Kafka has answered.
func (r *Relay) Run(ctx context.Context) error {
	// Every path out closes the Kafka client, after every goroutine Run started ended.
	defer r.closeKafka.Do(r.kc.Close)
	// Postgres holds the leases: it is waited for, readiness false meanwhile. A schema
	// that is not migrated is a configuration error: return it. Kafka and the registry
	// are looked at once and not waited for: a relay restarted while the broker and
	// Postgres restart in turn must not wait for a moment when all of them answer (the
	// fault suite's exactly-once runs found restarted relays that never started).
	for attempt := 1; ; attempt++ {
		err := r.checkPostgres(ctx)
		if err == nil && r.cfg.ExactlyOnce {
			err = r.resolveExactlyOnce(ctx)
		}
		if err == nil {
			break
		}
		if errors.Is(err, migrations.ErrNotMigrated) {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("waiting for dependencies", "err", err)
		sleep(ctx, r.startBackoff(attempt))
	}
	if err := r.Check(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("a dependency does not answer yet; starting, and retrying it", "err", err)
	} else {
		r.kafkaSeen.Store(true)
		if r.cfg.ExactlyOnce {
			// A commit log topic with too few partitions is a configuration error.
			if err := r.ensureCommitLog(ctx); errors.Is(err, errCommitLogPartitions) {
				return err
			}
		}
	}
	r.healthMu.Lock()
	r.running = true
	r.healthMu.Unlock()
	r.log.Info("relay starting", "schema", r.cfg.Schema, "mode", r.mode(), "batch_size", r.cfg.BatchSize, "lease_ttl", r.cfg.LeaseTTL,
		"poll_interval", r.cfg.PollInterval, "retention", r.cfg.Retention, "auto_register", !r.cfg.DisableAutoRegister)
	var bg sync.WaitGroup
	lctx, lcancel := context.WithCancel(context.Background())
	bg.Add(1)
	go func() { defer bg.Done(); r.listen(lctx) }()

	tick := time.NewTicker(r.cfg.HeartbeatInterval)
	defer tick.Stop()
	lastPurge := time.Now()
	for {
		r.heartbeat(ctx, true)
		if r.cfg.Retention > 0 && time.Since(lastPurge) > time.Minute {
			lastPurge = time.Now()
			r.purge(ctx)
		}
		select {
		case <-ctx.Done():
			r.shutdown()
			lcancel()
			bg.Wait()
			r.healthMu.Lock()
			r.running = false
			r.healthMu.Unlock()
			return nil
		case <-tick.C:
		}
	}
}

// testPoint calls the test hook, if any, at point.
func (r *Relay) testPoint(point string) {
	if r.testHook != nil {
		r.testHook(point)
	}
}

// shutdown stops every drain, keeps renewing the leases while their batches finish
// (a batch waiting on Kafka must not outlive its lease), then releases the leases.
// After ShutdownGrace the Kafka client is closed: the records still waiting fail
// and their rows stay for the next owner.
func (r *Relay) shutdown() {
	r.mu.Lock()
	n := len(r.shards)
	for _, s := range r.shards {
		s.halt()
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		r.drains.Wait()
		close(done)
	}()
	grace := time.NewTimer(r.cfg.ShutdownGrace)
	defer grace.Stop()
	tick := time.NewTicker(r.cfg.HeartbeatInterval)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-tick.C:
			r.heartbeat(context.Background(), false)
		case <-grace.C:
			r.log.Warn("batches still waiting for Kafka at shutdown; closing the Kafka client", "grace", r.cfg.ShutdownGrace)
			r.closeKafka.Do(r.kc.Close)
			r.closeTxnClients()
			<-done
			break wait
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.pool.Exec(ctx, r.sql.releaseAll, r.cfg.ReplicaID); err != nil {
		r.log.Warn("releasing leases on stop failed; they expire after the lease TTL", "err", err)
	}
	_, _ = r.pool.Exec(ctx, r.sql.deleteReplica, r.cfg.ReplicaID)
	r.log.Info("relay stopped; leases released", "shards", n)
}

func (r *Relay) backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt, 10)
	d = min(d, r.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1) // jitter
}

// startBackoff is the wait between dependency checks at start: at most 5 s, so that a
// relay started during an outage works as soon as the dependency is back (a check
// costs little).
func (r *Relay) startBackoff(attempt int) time.Duration {
	return min(r.backoff(attempt), 5*time.Second)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (r *Relay) purge(ctx context.Context) {
	for i := 0; i < 100 && ctx.Err() == nil; i++ {
		tag, err := r.pool.Exec(ctx, r.sql.purgePublished, interval(r.cfg.Retention))
		if err != nil {
			r.log.Warn("retention purge failed", "err", err)
			return
		}
		if tag.RowsAffected() < 10000 {
			return
		}
	}
}

// minLevel keeps the Kafka client's debug chatter out of the relay's debug logs.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(a []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(a), h.min}
}
func (h minLevel) WithGroup(n string) slog.Handler { return minLevel{h.Handler.WithGroup(n), h.min} }
