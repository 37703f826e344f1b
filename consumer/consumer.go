package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/plugin/kslog"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/otelx"
	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/migrations"
)

// Consumer is an idempotent Kafka consumer. Create it with [New], register handlers
// with [Handle] (or [Consumer.Handle]), then call [Consumer.Run] once.
type Consumer struct {
	cfg  *Config
	pool *pgxpool.Pool
	kc   *kgo.Client
	dec  *decoder
	log  *slog.Logger
	prop propagation.TextMapPropagator

	insertSQL, cleanSQL string
	bulkInsertSQL       string
	bulkInsertAllSQL    string // bulkInsertSQL for a batch expected to be all new: no ON CONFLICT, no RETURNING
	cleanCommittedSQL   string
	tr                  trace.Tracer

	mu         sync.Mutex
	started    bool
	routes     map[string]route
	middleware []Middleware

	partsMu sync.Mutex
	parts   map[topicPartition]*partition

	// commitMu serializes offset commits, so that a commit never rewinds a later one
	// (the periodic committer against the revoke and shutdown commits). Revoke and
	// loss detach their partitions under it: a periodic commit, which keeps only the
	// partitions still attached, can then never commit a partition that is gone.
	commitMu sync.Mutex
	// afterSnapshot, when set (by tests), runs between the periodic committer's
	// snapshot of the partitions and its commit.
	afterSnapshot func()

	runCtx context.Context // context.WithoutCancel of Run's context: handler parent

	dlqMade sync.Map // dead-letter topics created (or found) by this consumer
}

type topicPartition struct {
	topic     string
	partition int32
}

// New returns a Consumer reading cfg.Topics as cfg.Group, recording processed
// events in pool's processed_events table. It connects to nothing: the Kafka client
// is built, and the group joined, by Run.
func New(pool *pgxpool.Pool, cfg *Config) (*Consumer, error) {
	if pool == nil {
		return nil, errors.New("consumer: nil pool")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := cfg.WithDefaults()
	if c.Registry == nil {
		c.Registry = builtinRegistry{registry.New(c.RegistryURL, registry.Options{
			Username: c.RegistryUsername, Password: c.RegistryPassword, Timeout: c.RegistryTimeout})}
	}
	co := &Consumer{
		cfg:    c,
		pool:   pool,
		dec:    newDecoder(c.Registry, c.SchemaNotFoundGrace),
		log:    c.Logger.With("group", c.Group),
		prop:   propagation.TraceContext{},
		tr:     otelx.Tracer(c.TracerProvider),
		routes: map[string]route{},
		parts:  map[topicPartition]*partition{},
	}
	table := pgx.Identifier{c.Schema, "processed_events"}.Sanitize()
	co.bulkInsertSQL = `INSERT INTO ` + table + ` (consumer_group, event_id, topic, "partition", "offset")
		SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::bigint[]) ON CONFLICT DO NOTHING RETURNING event_id`
	co.bulkInsertAllSQL = `INSERT INTO ` + table + ` (consumer_group, event_id, topic, "partition", "offset")
		SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::bigint[])`
	co.insertSQL = `INSERT INTO ` + table + ` (consumer_group, event_id, topic, "partition", "offset")
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`
	co.cleanSQL = `DELETE FROM ` + table + ` WHERE consumer_group = $1 AND event_id IN (
		SELECT event_id FROM ` + table + ` WHERE consumer_group = $1 AND processed_at < now() - $2::interval LIMIT $3)`
	co.cleanCommittedSQL = `DELETE FROM ` + table + ` WHERE consumer_group = $1 AND event_id IN (
		SELECT p.event_id FROM ` + table + ` p
		JOIN unnest($4::text[], $5::int[], $6::bigint[]) AS c(topic, part, committed)
		  ON p.topic = c.topic AND p."partition" = c.part AND p."offset" < c.committed
		WHERE p.consumer_group = $1 AND p.processed_at < now() - $2::interval LIMIT $3)`

	return co, nil
}

// client builds the Kafka client: a group consumer that commits nothing by itself
// and holds rebalances while polled records are handed out.
func (c *Consumer) client() (*kgo.Client, error) {
	cfg := c.cfg
	opts := []kgo.Opt{
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topics...),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(c.assigned),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.lost),
		kgo.WithLogger(kslog.New(cfg.Logger.With("component", "kafka", "group", cfg.Group))),
		kgo.ClientID("relaybox-consumer"),
		// Partitions are paused and resumed for back-pressure; a resumed partition waits
		// for the fetch in flight, which the broker may hold for FetchMaxWait when the
		// other partitions have nothing new. franz-go's 5s default stalls the pipeline.
		kgo.FetchMaxWait(250 * time.Millisecond),
		// A new group starts at the beginning (franz-go's default would skip all but
		// the last minute of records).
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// A dead-lettered record is the original plus the relaybox.dlq.* headers: it
		// may exceed franz-go's 1 MB default batch when the original was near the
		// broker's limit. The dead-letter topics the consumer creates accept it.
		kgo.ProducerBatchMaxBytes(deadLetterMaxBytes),
	}
	if !cfg.ReadUncommitted {
		// Records of aborted Kafka transactions (the relay's exactly-once mode) are
		// never handed to a handler.
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	if len(cfg.Brokers) > 0 {
		opts = append(opts, kgo.SeedBrokers(cfg.Brokers...))
	}
	opts = append(opts, cfg.KafkaOpts...)
	kc, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("consumer: kafka client: %w", err)
	}
	return kc, nil
}

// Run consumes until ctx is cancelled, then shuts down gracefully: the record in
// flight on each partition finishes (records fetched but not started are left for
// the next owner), the offsets of everything processed are committed, and the
// consumer leaves its group. It returns an error only if it cannot start (the
// schema is not migrated, the Kafka options are invalid, or Run was already
// called).
func (c *Consumer) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return errors.New("consumer: Run called twice")
	}
	c.started = true
	for t, r := range c.routes {
		for i := len(c.middleware) - 1; i >= 0; i-- {
			r.h = c.middleware[i](r.h)
		}
		c.routes[t] = r
	}
	c.mu.Unlock()
	// Postgres unreachable at start (a restart, a failover): wait for it, as for any
	// later outage. A schema that is not migrated is a configuration error: return it.
	for attempt := 1; ; attempt++ {
		err := migrations.Check(ctx, c.pool, &migrations.Options{Schema: c.cfg.Schema})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil // stopped before it started, as in the wait below
		}
		if errors.Is(err, migrations.ErrNotMigrated) {
			return fmt.Errorf("consumer: %w", err)
		}
		c.log.Warn("waiting for postgres", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.backoff(attempt)):
		}
	}
	c.runCtx = context.WithoutCancel(ctx)
	kc, err := c.client()
	if err != nil {
		return err
	}
	c.kc = kc
	c.log.Info("consumer starting", "topics", c.cfg.Topics, "batch_mode", c.cfg.BatchMode,
		"max_attempts", c.cfg.MaxAttempts, "unknown_type", c.cfg.UnknownType.String(), "dedup", !c.cfg.DisableDedup)

	var bg sync.WaitGroup
	bgCtx, bgCancel := context.WithCancel(context.Background())
	bg.Add(1)
	go func() { defer bg.Done(); c.commitLoop(bgCtx) }()
	if c.cfg.CleanAfter > 0 {
		bg.Add(1)
		go func() { defer bg.Done(); c.cleanLoop(bgCtx) }()
	}

	c.poll(ctx)

	// Shutdown: stop every partition (the record in flight finishes), commit, leave.
	bgCancel()
	bg.Wait()
	c.partsMu.Lock()
	all := make([]*partition, 0, len(c.parts))
	for _, p := range c.parts {
		all = append(all, p)
	}
	c.partsMu.Unlock()
	stopAll(all)
	cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	c.commit(cctx, kc, all, true)
	cancel()
	kc.Close() // leaves the group; the revoke callback finds nothing left to do
	c.log.Info("consumer stopped")
	return nil
}

// poll fetches until ctx is done and hands each partition's records to its
// goroutine. It never blocks on a partition: a partition with too much waiting is
// paused instead.
func (c *Consumer) poll(ctx context.Context) {
	for {
		fs := c.kc.PollRecords(ctx, c.cfg.MaxPollRecords)
		if fs.IsClientClosed() || ctx.Err() != nil {
			c.kc.AllowRebalance()
			return
		}
		fs.EachError(func(t string, p int32, err error) {
			c.log.Warn("fetch error", "topic", t, "partition", p, "err", err)
		})
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			if len(fp.Records) == 0 {
				return
			}
			c.partsMu.Lock()
			p := c.parts[topicPartition{fp.Topic, fp.Partition}]
			c.partsMu.Unlock()
			if p == nil { // not ours (any more): the next owner reads it from the commit
				return
			}
			p.hwm.Store(fp.HighWatermark)
			p.push(fp.Records, c.cfg.MaxBufferedPerPartition)
		})
		c.kc.AllowRebalance()
	}
}

func (c *Consumer) assigned(_ context.Context, cl *kgo.Client, assigned map[string][]int32) {
	c.partsMu.Lock()
	defer c.partsMu.Unlock()
	for topic, ps := range assigned {
		for _, n := range ps {
			tp := topicPartition{topic, n}
			if c.parts[tp] != nil {
				continue
			}
			p := newPartition(c, cl, topic, n)
			c.parts[tp] = p
			go p.run()
		}
	}
	c.log.Debug("partitions assigned", "assigned", assigned)
}

// revoked stops the revoked partitions' goroutines (each finishes its record in
// flight), commits what they processed and returns, letting the rebalance go on.
func (c *Consumer) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	ps := c.detachForCommit(revoked)
	stopAll(ps)
	c.hookRevoked(revoked, false)
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c.commit(cctx, cl, ps, true)
	cl.ResumeFetchPartitions(revoked) // pauses outlive assignment; a re-assigned partition starts unpaused
	if len(ps) > 0 {
		c.log.Debug("partitions revoked", "revoked", revoked)
	}
}

// lost stops the lost partitions' goroutines without committing: the group has
// moved on and a commit would be refused (or rewind the new owner's).
func (c *Consumer) lost(_ context.Context, cl *kgo.Client, lost map[string][]int32) {
	ps := c.detachForCommit(lost)
	stopAll(ps)
	c.hookRevoked(lost, true)
	cl.ResumeFetchPartitions(lost)
	if len(ps) > 0 {
		c.log.Warn("partitions lost; their processed offsets since the last commit will be redelivered (and deduplicated)", "lost", lost)
	}
}

// detachForCommit detaches the partitions of m under commitMu: once it returns, no
// periodic commit includes them (one in flight, for partitions still ours when it
// began, finishes first).
func (c *Consumer) detachForCommit(m map[string][]int32) []*partition {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	return c.detach(m)
}

func (c *Consumer) detach(m map[string][]int32) []*partition {
	c.partsMu.Lock()
	defer c.partsMu.Unlock()
	var ps []*partition
	for topic, ns := range m {
		for _, n := range ns {
			tp := topicPartition{topic, n}
			if p := c.parts[tp]; p != nil {
				ps = append(ps, p)
				delete(c.parts, tp)
			}
		}
	}
	return ps
}

func stopAll(ps []*partition) {
	for _, p := range ps {
		p.halt()
	}
	for _, p := range ps {
		<-p.done
	}
}

func (c *Consumer) commitLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.periodicCommit(ctx)
	}
}

// periodicCommit commits the processed offsets of the partitions attached now.
func (c *Consumer) periodicCommit(ctx context.Context) {
	c.partsMu.Lock()
	ps := make([]*partition, 0, len(c.parts))
	for _, p := range c.parts {
		ps = append(ps, p)
	}
	c.partsMu.Unlock()
	if c.afterSnapshot != nil {
		c.afterSnapshot()
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c.commit(cctx, c.kc, ps, false)
	cancel()
}

// commit commits the marked offsets of ps that are not committed yet. final says
// the partitions are stopped (revoke, shutdown): failures are logged louder.
// Otherwise (the periodic commit) only the partitions of ps still attached are
// committed: a snapshot taken before a revoke or a loss must not commit a partition
// that another member may own by now (rewinding its commits).
func (c *Consumer) commit(ctx context.Context, kc *kgo.Client, ps []*partition, final bool) {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	if !final {
		c.partsMu.Lock()
		attached := ps[:0:0]
		for _, p := range ps {
			if c.parts[topicPartition{p.topic, p.n}] == p {
				attached = append(attached, p)
			}
		}
		c.partsMu.Unlock()
		ps = attached
	}
	offsets := map[string]map[int32]kgo.EpochOffset{}
	marks := map[*partition]kgo.EpochOffset{}
	for _, p := range ps {
		if eo, ok := p.uncommitted(); ok {
			if offsets[p.topic] == nil {
				offsets[p.topic] = map[int32]kgo.EpochOffset{}
			}
			offsets[p.topic][p.n] = eo
			marks[p] = eo
		}
	}
	if len(offsets) == 0 {
		return
	}
	var failed error
	kc.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			failed = err
			return
		}
		for _, t := range resp.Topics {
			for _, pr := range t.Partitions {
				if err := kerr.ErrorForCode(pr.ErrorCode); err != nil && failed == nil {
					failed = fmt.Errorf("committing %s/%d: %w", t.Topic, pr.Partition, err)
				}
			}
		}
	})
	if failed != nil {
		c.hookErr(ErrorCommit, failed)
		lvl := slog.LevelDebug
		if final {
			lvl = slog.LevelWarn
		}
		c.log.Log(ctx, lvl, "offset commit failed; processed records will be redelivered and deduplicated", "err", failed)
		return
	}
	for p, eo := range marks {
		p.setCommitted(eo)
	}
}

func (c *Consumer) hookErr(kind ErrorKind, err error) {
	if c.cfg.Hooks.OnError != nil {
		c.cfg.Hooks.OnError(ErrorEvent{Kind: kind, Err: err})
	}
}

// hookRevoked reports that the partitions of m are no longer this consumer's.
func (c *Consumer) hookRevoked(m map[string][]int32, lost bool) {
	if h := c.cfg.Hooks.OnRevoked; h != nil && len(m) > 0 {
		h(RevokedEvent{Partitions: m, Lost: lost})
	}
}

// backoff returns the wait before attempt n+1 after n failures (n >= 1).
func (c *Consumer) backoff(n int) time.Duration {
	d := c.cfg.RetryBackoff
	for i := 1; i < n && d < c.cfg.MaxRetryBackoff; i++ {
		d *= 2
	}
	d = min(d, c.cfg.MaxRetryBackoff)
	jitter := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(d) * jitter)
}
