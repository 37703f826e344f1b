package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
)

// Relay publishes the outbox to Kafka. Create it with New and run it with Run.
type Relay struct {
	cfg  Config
	pool *pgxpool.Pool
	kc   *kgo.Client
	adm  *kadm.Client
	log  *slog.Logger
	sql  statements

	mu        sync.Mutex
	shards    map[int]*shardRun
	inflight  chan struct{} // one slot per shard batch being read and published
	releasing map[int]bool

	schemaMu sync.RWMutex
	schemas  map[[32]byte]string

	healthMu   sync.Mutex
	failing    map[string]time.Time // component -> failing since
	lastErr    map[string]error
	running    bool
	topicsMade sync.Map
	closeKafka sync.Once
}

type shardRun struct {
	shard    int
	mu       sync.Mutex
	deadline time.Time // local lease deadline (monotonic)
	stop     chan struct{}
	done     chan struct{}
	wake     chan struct{}
	stopOnce sync.Once
	busy     sync.Mutex  // held while a batch drains this shard (its own or a group's)
	sparse   atomic.Bool // its last batch was small: it may join another shard's batch
	news     atomic.Bool // a NOTIFY named it and it has not drained since
	draining atomic.Bool // a batch is draining it
	failing  atomic.Bool // its drain is backing off after a failure (a wake waits)
}

// poke wakes the shard's drain (a no-op if a wake is already pending).
func (s *shardRun) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *shardRun) leaseDeadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadline
}

func (s *shardRun) extend(d time.Time) {
	s.mu.Lock()
	if d.After(s.deadline) {
		s.deadline = d
	}
	s.mu.Unlock()
}

func (s *shardRun) halt() { s.stopOnce.Do(func() { close(s.stop) }) }

func (s *shardRun) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

type statements struct {
	upsertReplica, renew, live, claim, release, releaseAll, deleteReplica, purgeReplicas, readMany string
	read, schemas, delete, markPublished, park, attempt, purgePublished                            string
}

func newStatements(schema string) statements {
	q := func(t string) string { return pgx.Identifier{schema, t}.Sanitize() }
	o, l, rp := q("outbox"), q("shard_leases"), q("replicas")
	return statements{
		upsertReplica: `INSERT INTO ` + rp + ` (id, hostname, expires_at) VALUES ($1, $2, now() + $3::interval)
			ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), expires_at = excluded.expires_at`,
		renew: `UPDATE ` + l + ` SET expires_at = now() + $2::interval WHERE owner = $1 RETURNING shard`,
		live:  `SELECT id FROM ` + rp + ` WHERE expires_at > now() ORDER BY id`,
		claim: `UPDATE ` + l + ` SET owner = $1, acquired_at = now(), expires_at = now() + $3::interval
			WHERE shard IN (SELECT shard FROM ` + l + ` WHERE owner IS NULL OR expires_at IS NULL OR expires_at < now()
			ORDER BY shard LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING shard`,
		release:       `UPDATE ` + l + ` SET owner = NULL, expires_at = NULL WHERE shard = $1 AND owner = $2`,
		releaseAll:    `UPDATE ` + l + ` SET owner = NULL, expires_at = NULL WHERE owner = $1`,
		deleteReplica: `DELETE FROM ` + rp + ` WHERE id = $1`,
		purgeReplicas: `DELETE FROM ` + rp + ` WHERE expires_at < now() - interval '10 minutes'`,
		read:          readSQL(o, "o.shard = $1", "p.shard = $1", "o.id"),
		// Several shards at once: ordered by shard then id, which keeps each key's order
		// (a key lives in one shard) and follows the (shard, id) index.
		readMany:       readSQL(o, "o.shard = ANY($1::int[])", "p.shard = o.shard", "o.shard, o.id"),
		schemas:        `SELECT fingerprint, schema FROM ` + q("schemas") + ` WHERE fingerprint = ANY($1)`,
		delete:         `DELETE FROM ` + o + ` WHERE id = ANY($1::bigint[])`,
		markPublished:  `UPDATE ` + o + ` SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1::bigint[])`,
		park:           `UPDATE ` + o + ` o SET parked_at = now(), last_error = u.reason, attempts = o.attempts + 1 FROM unnest($1::bigint[], $2::text[]) u(id, reason) WHERE o.id = u.id`,
		attempt:        `UPDATE ` + o + ` o SET last_error = u.reason, attempts = o.attempts + 1 FROM unnest($1::bigint[], $2::text[]) u(id, reason) WHERE o.id = u.id`,
		purgePublished: `DELETE FROM ` + o + ` WHERE id IN (SELECT id FROM ` + o + ` WHERE published_at < now() - $1::interval LIMIT 10000)`,
	}
}

// ClaimSQL is the statement a batch of one shard reads its rows with, for the outbox
// in schema: $1 is the shard, $2 the most rows (Config.BatchSize). It is exported for
// EXPLAIN on a real database and for benchmarks that time it; the relay prepares it
// itself.
func ClaimSQL(schema string) string {
	return newStatements(schema).read
}

// readSQL is a batch's claim: the oldest pending rows of the shards in where, skipping
// keys blocked behind a parked row, LIMIT $2.
func readSQL(outbox, where, parkedShard, order string) string {
	return `SELECT o.id, o.event_id, o.topic, o.key, o.event_type, o.aggregate_type, o.subject, o.schema_fingerprint,
			o.payload, o.headers, o.occurred_at, o.created_at, o.correlation_id, o.causation_id, o.source, o.traceparent, o.tracestate
			FROM ` + outbox + ` o WHERE ` + where + ` AND o.published_at IS NULL AND o.parked_at IS NULL
			AND NOT EXISTS (SELECT 1 FROM ` + outbox + ` p WHERE ` + parkedShard + ` AND p.key = o.key AND p.parked_at IS NOT NULL)
			ORDER BY ` + order + ` LIMIT $2`
}

// New returns a Relay over pool (the database holding the outbox). It builds its
// Kafka client but does not connect until Run.
func New(pool *pgxpool.Pool, cfg *Config) (*Relay, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
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
		sql: newStatements(c.Schema), shards: map[int]*shardRun{}, inflight: make(chan struct{}, c.MaxInFlightBatches), releasing: map[int]bool{},
		schemas: map[[32]byte]string{}, failing: map[string]time.Time{}, lastErr: map[string]error{},
	}, nil
}

// ReplicaID is this replica's name in the lease tables.
func (r *Relay) ReplicaID() string { return r.cfg.ReplicaID }

// Check verifies, once, everything the relay needs: the schema is migrated, Kafka
// answers, the registry answers. Each failure is one line naming what failed.
func (r *Relay) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := r.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres unreachable: %w", err)
	}
	if err := migrations.Check(ctx, r.pool, r.cfg.Schema); err != nil {
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

// Run publishes until ctx is cancelled, then drains the batches in flight, releases
// its leases and returns. It first waits for Postgres, Kafka and the registry to
// answer; it returns an error only if the schema is not migrated.
func (r *Relay) Run(ctx context.Context) error {
	// A dependency that does not answer at start (a restart during an outage) is waited
	// for, readiness false meanwhile. A schema that is not migrated is a configuration
	// error: return it.
	for attempt := 1; ; attempt++ {
		err := r.Check(ctx)
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
		sleep(ctx, r.backoff(attempt))
	}
	r.healthMu.Lock()
	r.running = true
	r.healthMu.Unlock()
	r.log.Info("relay starting", "schema", r.cfg.Schema, "batch_size", r.cfg.BatchSize, "lease_ttl", r.cfg.LeaseTTL,
		"poll_interval", r.cfg.PollInterval, "retention", r.cfg.Retention, "auto_register", r.cfg.AutoRegister)
	var bg sync.WaitGroup
	lctx, lcancel := context.WithCancel(context.Background())
	bg.Add(1)
	go func() { defer bg.Done(); r.listen(lctx) }()

	tick := time.NewTicker(r.cfg.HeartbeatInterval)
	defer tick.Stop()
	lastPurge := time.Now()
	for {
		r.heartbeat(ctx)
		if r.cfg.Retention > 0 && time.Since(lastPurge) > time.Minute {
			lastPurge = time.Now()
			r.purge(ctx)
		}
		select {
		case <-ctx.Done():
			r.shutdown()
			lcancel()
			bg.Wait()
			r.closeKafka.Do(r.kc.Close)
			r.healthMu.Lock()
			r.running = false
			r.healthMu.Unlock()
			return nil
		case <-tick.C:
		}
	}
}

func (r *Relay) shutdown() {
	r.mu.Lock()
	runs := make([]*shardRun, 0, len(r.shards))
	for _, s := range r.shards {
		s.halt()
		runs = append(runs, s)
	}
	r.mu.Unlock()
	// A batch in flight finishes first. One waiting on a broker that is down is
	// released after a grace period by closing the client: its records fail and its
	// rows stay for the next owner.
	grace := time.After(20 * time.Second)
	for _, s := range runs {
		select {
		case <-s.done:
		case <-grace:
			r.log.Warn("batches still waiting for Kafka at shutdown; closing the Kafka client")
			r.closeKafka.Do(r.kc.Close)
			<-s.done
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.pool.Exec(ctx, r.sql.releaseAll, r.cfg.ReplicaID); err != nil {
		r.log.Warn("releasing leases on stop failed; they expire after the lease TTL", "err", err)
	}
	_, _ = r.pool.Exec(ctx, r.sql.deleteReplica, r.cfg.ReplicaID)
	r.log.Info("relay stopped; leases released", "shards", len(runs))
}

func interval(d time.Duration) string { return fmt.Sprintf("%d microseconds", d.Microseconds()) }

// heartbeat runs one round of the lease protocol (see the package doc).
func (r *Relay) heartbeat(ctx context.Context) {
	ttl := r.cfg.LeaseTTL
	margin := ttl / 10
	t0 := time.Now()
	hctx, cancel := context.WithTimeout(ctx, r.cfg.HeartbeatInterval)
	defer cancel()
	host, _ := os.Hostname()
	if _, err := r.pool.Exec(hctx, r.sql.upsertReplica, r.cfg.ReplicaID, host, interval(ttl)); err != nil {
		r.fail("postgres", fmt.Errorf("heartbeat: %w", err))
		return
	}
	rows, err := r.pool.Query(hctx, r.sql.renew, r.cfg.ReplicaID, interval(ttl))
	var owned []int
	if err == nil {
		owned, err = pgx.CollectRows(rows, pgx.RowTo[int])
	}
	if err != nil {
		r.fail("postgres", fmt.Errorf("renewing leases: %w", err))
		return
	}
	r.ok("postgres")
	r.apply(owned, t0.Add(ttl-margin))

	rows, err = r.pool.Query(hctx, r.sql.live)
	var live []string
	if err == nil {
		live, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		r.fail("postgres", fmt.Errorf("reading replicas: %w", err))
		return
	}
	target := fairShare(live, r.cfg.ReplicaID)
	r.mu.Lock()
	held := 0
	for s := range r.shards {
		if !r.releasing[s] {
			held++
		}
	}
	r.mu.Unlock()
	switch {
	case held < target:
		t1 := time.Now()
		rows, err := r.pool.Query(hctx, r.sql.claim, r.cfg.ReplicaID, target-held, interval(ttl))
		var claimed []int
		if err == nil {
			claimed, err = pgx.CollectRows(rows, pgx.RowTo[int])
		}
		if err != nil {
			r.fail("postgres", fmt.Errorf("claiming shards: %w", err))
			return
		}
		if len(claimed) > 0 {
			r.log.Info("claimed shards", "shards", claimed, "target", target, "replicas", len(live))
			r.apply(append(owned, claimed...), t1.Add(ttl-margin))
		}
	case held > target:
		r.releaseExcess(held - target)
	}
	r.checkDependencies(hctx)
	if rand.IntN(20) == 0 {
		_, _ = r.pool.Exec(hctx, r.sql.purgeReplicas)
	}
}

// fairShare is how many of the 64 shards replica me should hold among live.
func fairShare(live []string, me string) int {
	i := slices.Index(live, me)
	if i < 0 {
		live = append(live, me)
		slices.Sort(live)
		i = slices.Index(live, me)
	}
	n := len(live)
	t := outbox.Shards / n
	if i < outbox.Shards%n {
		t++
	}
	return t
}

// apply makes the running drains match owned: extends deadlines, starts drains for
// newly held shards, stops drains for shards no longer held.
func (r *Relay) apply(owned []int, deadline time.Time) {
	set := map[int]bool{}
	for _, s := range owned {
		set[s] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := false
	for s, run := range r.shards {
		if !set[s] {
			if !r.releasing[s] {
				r.log.Warn("lease lost; stopping shard", "shard", s)
				r.hookErr("lease", fmt.Errorf("lease on shard %d lost", s))
			}
			run.halt()
			delete(r.shards, s)
			changed = true
		}
	}
	for s := range set {
		if r.releasing[s] {
			continue
		}
		run := r.shards[s]
		if run != nil && run.exited() {
			delete(r.shards, s)
			run = nil
		}
		if run == nil {
			run = &shardRun{shard: s, deadline: deadline, stop: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}, 1)}
			r.shards[s] = run
			changed = true
			go r.drainLoop(run)
			continue
		}
		run.extend(deadline)
	}
	if changed && r.cfg.Hooks.OnShards != nil {
		r.cfg.Hooks.OnShards(r.ownedLocked())
	}
}

func (r *Relay) ownedLocked() []int {
	out := make([]int, 0, len(r.shards))
	for s := range r.shards {
		if !r.releasing[s] {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// Owned returns the shards this replica currently drains.
func (r *Relay) Owned() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ownedLocked()
}

func (r *Relay) releaseExcess(n int) {
	r.mu.Lock()
	var cand []int
	for s := range r.shards {
		if !r.releasing[s] {
			cand = append(cand, s)
		}
	}
	slices.Sort(cand)
	slices.Reverse(cand)
	cand = cand[:min(n, len(cand))]
	runs := make([]*shardRun, 0, len(cand))
	for _, s := range cand {
		r.releasing[s] = true
		runs = append(runs, r.shards[s])
		r.shards[s].halt()
	}
	r.mu.Unlock()
	r.log.Info("releasing shards for rebalance", "shards", cand)
	go func() {
		for _, run := range runs {
			<-run.done // the batch in flight finishes first
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := r.pool.Exec(ctx, r.sql.release, run.shard, r.cfg.ReplicaID)
			cancel()
			r.mu.Lock()
			if r.shards[run.shard] == run {
				delete(r.shards, run.shard)
			}
			delete(r.releasing, run.shard)
			if r.cfg.Hooks.OnShards != nil {
				r.cfg.Hooks.OnShards(r.ownedLocked())
			}
			r.mu.Unlock()
			if err != nil {
				r.log.Warn("releasing shard failed; it expires after the lease TTL", "shard", run.shard, "err", err)
			}
		}
	}()
}

// wake wakes the drains of the shards a NOTIFY payload lists ("3,17,40", what the
// writer sends), or all of them when the payload is empty or not such a list.
func (r *Relay) wake(payload string) {
	if payload == "" {
		r.wakeAll()
		return
	}
	var shards []int
	for f := range strings.SplitSeq(payload, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 || n >= outbox.Shards {
			r.wakeAll()
			return
		}
		shards = append(shards, n)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Shards that keep up get the news and one idle one of them (the leader) is
	// woken: it drains them all in one batch (see steal). The others are woken.
	var leader *shardRun
	for _, n := range shards {
		s := r.shards[n]
		switch {
		case s == nil:
		case s.sparse.Load():
			s.news.Store(true)
			if leader == nil && !s.draining.Load() && !s.failing.Load() {
				leader = s
			}
		default:
			s.poke()
		}
	}
	if leader != nil {
		leader.poke()
		return
	}
	for _, n := range shards { // all busy: each looks after its own
		if s := r.shards[n]; s != nil && s.news.Load() {
			s.poke()
		}
	}
}

func (r *Relay) wakeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.shards {
		s.poke()
	}
}

// listen wakes the drains on every NOTIFY (those of the shards it names), reconnecting
// as needed.
func (r *Relay) listen(ctx context.Context) {
	backoff := 0
	for ctx.Err() == nil {
		err := func() error {
			conn, err := pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{r.cfg.Channel}.Sanitize()); err != nil {
				return err
			}
			backoff = 0
			r.wakeAll() // whatever committed while we were not listening
			for {
				n, err := conn.WaitForNotification(ctx)
				if err != nil {
					return err
				}
				r.wake(n.Payload)
			}
		}()
		if ctx.Err() != nil {
			return
		}
		backoff++
		r.log.Warn("LISTEN connection lost; polling until it is back", "err", err)
		sleep(ctx, r.backoff(backoff))
	}
}

func (r *Relay) backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt, 10)
	d = min(d, r.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1) // jitter
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

func (r *Relay) checkDependencies(ctx context.Context) {
	if err := r.kc.Ping(ctx); err != nil {
		r.fail("kafka", fmt.Errorf("kafka ping: %w", err))
	} else {
		r.ok("kafka")
	}
}

func (r *Relay) hookErr(kind string, err error) {
	if r.cfg.Hooks.OnError != nil {
		r.cfg.Hooks.OnError(kind, err)
	}
}

func (r *Relay) fail(component string, err error) {
	r.hookErr(component, err)
	r.healthMu.Lock()
	if _, ok := r.failing[component]; !ok {
		r.failing[component] = time.Now()
		r.log.Warn("failing", "component", component, "err", err)
	}
	r.lastErr[component] = err
	r.healthMu.Unlock()
}

func (r *Relay) ok(component string) {
	r.healthMu.Lock()
	if since, ok := r.failing[component]; ok {
		r.log.Info("recovered", "component", component, "after", time.Since(since).Round(time.Millisecond))
		delete(r.failing, component)
		delete(r.lastErr, component)
	}
	r.healthMu.Unlock()
}

// ErrNotReady is wrapped by Ready's errors.
var ErrNotReady = errors.New("relay not ready")

// Ready returns nil while the relay runs and no dependency (postgres, kafka,
// registry) has been failing for longer than UnreadyAfter.
func (r *Relay) Ready() error {
	r.healthMu.Lock()
	defer r.healthMu.Unlock()
	if !r.running {
		return fmt.Errorf("%w: not running", ErrNotReady)
	}
	for c, since := range r.failing {
		if d := time.Since(since); d > r.cfg.UnreadyAfter {
			return fmt.Errorf("%w: %s failing for %s: %v", ErrNotReady, c, d.Round(time.Second), r.lastErr[c])
		}
	}
	return nil
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
