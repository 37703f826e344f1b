package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
)

// One regression test per window through which a replica that lost its lease could
// still change its shard's rows or hand records to Kafka (issue 14, part 1).

type tick struct {
	Key string `avro:"key"`
	Seq int64  `avro:"seq"`
}

// gate is a Registry whose first call blocks, ignoring its context (as a process
// paused between read and produce would), until opened.
type gate struct {
	Registry
	once    sync.Once
	entered chan struct{}
	open    chan struct{}
}

func newGate(inner Registry) *gate {
	return &gate{Registry: inner, entered: make(chan struct{}), open: make(chan struct{})}
}

func (g *gate) ID(ctx context.Context, subject, schema string, register bool) (int, error) {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.open
	}
	return g.Registry.ID(ctx, subject, schema, register)
}

type fenceEnv struct {
	pool   *pgxpool.Pool
	schema string
	topic  string
	w      *outbox.Writer
	leases string
}

func newFenceEnv(t *testing.T) *fenceEnv {
	t.Helper()
	pool := testenv.PoolWith(t, func(c *pgxpool.Config) { c.MaxConns = 20 })
	f := &fenceEnv{pool: pool, schema: testenv.Schema(t, pool), topic: testenv.Topic(t, 3)}
	f.leases = pgx.Identifier{f.schema, "shard_leases"}.Sanitize()
	var err error
	if f.w, err = outbox.New(pool, &outbox.Config{Schema: f.schema}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fenceEnv) config(t *testing.T, reg Registry) *Config {
	return &Config{Schema: f.schema, Brokers: testenv.Brokers(t), Registry: reg,
		PollInterval: 100 * time.Millisecond, LeaseTTL: 2 * time.Second, HeartbeatInterval: 300 * time.Millisecond,
		ShutdownGrace: time.Minute, Logger: testenv.Logger(t), BatchSize: 100, ReplicaID: "me"}
}

// start runs r; stop cancels it and returns Run's error once it returned.
func start(t *testing.T, r *Relay) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(90 * time.Second):
				err = errors.New("Run did not return within 90s")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func (f *fenceEnv) writeOne(t *testing.T, key string, seq int64) int {
	t.Helper()
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		return f.w.Write(ctx, tx, outbox.Event{Topic: f.topic, Key: key, Type: "Tick", Value: tick{Key: key, Seq: seq}})
	}); err != nil {
		t.Fatal(err)
	}
	var shard int
	if err := f.pool.QueryRow(ctx, `SELECT shard FROM `+pgx.Identifier{f.schema, "outbox"}.Sanitize()+` WHERE key = $1 LIMIT 1`, key).Scan(&shard); err != nil {
		t.Fatal(err)
	}
	return shard
}

func (f *fenceEnv) onTopic(t *testing.T) int64 {
	t.Helper()
	ends, err := kadm.NewClient(testenv.Client(t)).ListEndOffsets(context.Background(), f.topic)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

func (f *fenceEnv) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := f.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pauseAt stops r the first time it reaches point: reached is closed then, and r goes
// on once resume is called.
func pauseAt(r *Relay, point string) (reached <-chan struct{}, resume func()) {
	at, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r.testHook = func(p string) {
		if p != point {
			return
		}
		first := false
		once.Do(func() { first = true })
		if first {
			close(at)
			<-release
		}
	}
	return at, sync.OnceFunc(func() { close(release) })
}

// noLeaks checks, after every other cleanup of t ran (the test's pools and clients
// closed), that no goroutine started during t is left.
func noLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	// Idle keep-alive connections of the test's registry client are the test's own.
	t.Cleanup(func() {
		goleak.VerifyNone(t, opt, goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"))
	})
}

func recv(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}

// Window 1: a batch paused between read and produce (here, in a registry call that
// ignores its context) while its lease passes to another owner produces nothing on
// waking, and changes none of the shard's rows.
func TestFence_BatchWhoseLeaseIsLostBeforeProduceDoesNotProduce(t *testing.T) {
	t.Parallel()
	f := newFenceEnv(t)
	cfg := f.config(t, nil)
	g := newGate(registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}))
	cfg.Registry = g
	lost := make(chan struct{})
	var lostOnce sync.Once
	var shard atomic.Int64
	shard.Store(-1)
	cfg.Hooks.OnLease = func(e LeaseEvent) {
		if !e.Acquired && int64(e.Shard) == shard.Load() {
			lostOnce.Do(func() { close(lost) })
		}
	}
	batches := make(chan struct{}, 10)
	cfg.Hooks.OnBatch = func(BatchEvent) { batches <- struct{}{} }
	r, err := New(f.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, r)
	s := f.writeOne(t, "k", 1)
	shard.Store(int64(s))
	recv(t, g.entered, 30*time.Second, "the batch to reach the registry")
	// Another replica takes the shard (a claim bumps the generation).
	f.exec(t, `UPDATE `+f.leases+` SET owner = 'thief', generation = generation + 1, expires_at = now() + interval '1 hour' WHERE shard = $1`, s)
	recv(t, lost, 30*time.Second, "the relay to see the lease lost")
	close(g.open)
	recv(t, batches, 30*time.Second, "the paused batch to end")
	if n := f.onTopic(t); n != 0 {
		t.Fatalf("the batch produced %d records after its lease was lost", n)
	}
	var attempts int
	if err := f.pool.QueryRow(context.Background(), `SELECT attempts FROM `+pgx.Identifier{f.schema, "outbox"}.Sanitize()).Scan(&attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 0 {
		t.Fatalf("the fenced replica changed the row: attempts %d", attempts)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// Window 2: a claim later in a heartbeat round must not lengthen the local deadline of
// the leases renewed earlier in the round.
func TestFence_ClaimDoesNotLengthenLeasesRenewedBeforeIt(t *testing.T) {
	t.Parallel()
	f := newFenceEnv(t)
	cfg := f.config(t, registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}))
	cfg.LeaseTTL, cfg.HeartbeatInterval = 10*time.Second, 3*time.Second
	r, err := New(f.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.kc.Close()
	defer r.shutdown()
	ctx := context.Background()
	r.heartbeat(ctx, true)
	if n := len(r.Owned()); n != 64 {
		t.Fatalf("first heartbeat holds %d shards, want 64", n)
	}
	f.exec(t, `UPDATE `+f.leases+` SET owner = NULL, expires_at = NULL WHERE shard = 0`)
	const slow = 2 * time.Second // a slow statement between the renew and the claim
	r.testHook = func(p string) {
		if p == "renewed" {
			time.Sleep(slow)
		}
	}
	t0 := time.Now()
	r.heartbeat(ctx, true)
	r.testHook = nil
	r.mu.Lock()
	renewed, claimed := r.shards[1], r.shards[0]
	r.mu.Unlock()
	if renewed == nil || claimed == nil {
		t.Fatal("shards 0 and 1 not held after the second heartbeat")
	}
	limit := t0.Add(cfg.LeaseTTL - cfg.LeaseTTL/10 + slow/2)
	if d := renewed.leaseDeadline(); d.After(limit) {
		t.Fatalf("a renewed lease's local deadline is %s after the renew's start + TTL - margin: it took the later claim's time",
			d.Sub(t0.Add(cfg.LeaseTTL-cfg.LeaseTTL/10)))
	}
	if d := claimed.leaseDeadline(); !d.After(limit) {
		t.Fatalf("the claimed lease's deadline %s does not follow its claim", d.Sub(t0))
	}
}

// Window 3: while a batch finishes at shutdown (its records acked, its outcome not
// yet written), the leases stay renewed: no other replica may take the shard under
// it, and its outcome write is not fenced.
func TestFence_ShutdownRenewsLeasesUntilItsBatchesEnd(t *testing.T) {
	t.Parallel()
	f := newFenceEnv(t)
	cfg := f.config(t, registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}))
	r, err := New(f.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	acked, finish := pauseAt(r, "acked")
	stop := start(t, r)
	s := f.writeOne(t, "k", 1)
	recv(t, acked, 30*time.Second, "the batch's records acked")
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	// Three lease TTLs into the shutdown the batch still runs: its lease must still be
	// ours and unexpired.
	time.Sleep(3 * cfg.LeaseTTL)
	var owner string
	var live bool
	if err := f.pool.QueryRow(context.Background(), `SELECT coalesce(owner, ''), coalesce(expires_at > now(), false) FROM `+f.leases+` WHERE shard = $1`, s).Scan(&owner, &live); err != nil {
		t.Fatal(err)
	}
	if owner != "me" || !live {
		t.Fatalf("during shutdown the shard's lease is owner %q, unexpired %v: another replica could take it under the batch", owner, live)
	}
	finish()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return after the batch ended")
	}
	if n := f.onTopic(t); n != 1 {
		t.Fatalf("the batch in flight at shutdown published %d records, want 1", n)
	}
	var left int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM `+pgx.Identifier{f.schema, "outbox"}.Sanitize()).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 || r.fenced.Load() != 0 {
		t.Fatalf("after shutdown %d rows left, %d fenced writes: the batch's outcome must be recorded", left, r.fenced.Load())
	}
}

// Window 4: a shard lost and claimed back while its old drain is still in a batch
// gets a new drain only after the old one ended: never two drains of one shard. And
// Run returns only after every goroutine it started ended (goleak).
func TestFence_ShardClaimedBackWaitsForItsOldDrainAndRunLeavesNoGoroutine(t *testing.T) {
	noLeaks(t)
	f := newFenceEnv(t)
	g := newGate(registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}))
	cfg := f.config(t, g)
	var shard atomic.Int64
	shard.Store(-1)
	var reads, otherReads atomic.Int64
	reacquired := make(chan struct{})
	var reOnce sync.Once
	var gens sync.Map
	cfg.Hooks.OnRead = func(e ReadEvent) {
		if int64(e.Shard) == shard.Load() {
			reads.Add(1)
		} else {
			otherReads.Add(1)
		}
	}
	cfg.Hooks.OnLease = func(e LeaseEvent) {
		if int64(e.Shard) != shard.Load() || !e.Acquired {
			return
		}
		if _, seen := gens.LoadOrStore(e.Generation, true); seen {
			return
		}
		if e.Generation > 2 {
			reOnce.Do(func() { close(reacquired) })
		}
	}
	r, err := New(f.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	s := f.writeOne(t, "k", 1)
	shard.Store(int64(s))
	recv(t, g.entered, 30*time.Second, "the batch to reach the registry")
	before := reads.Load()
	f.exec(t, `UPDATE `+f.leases+` SET owner = 'thief', generation = generation + 1, expires_at = now() + interval '1 hour' WHERE shard = $1`, s)
	waitFor(t, 30*time.Second, "the lease to be seen lost", func() bool { return !slices.Contains(r.Owned(), s) })
	f.exec(t, `UPDATE `+f.leases+` SET owner = NULL, expires_at = NULL WHERE shard = $1`, s)
	recv(t, reacquired, 30*time.Second, "the shard to be claimed back")
	others := otherReads.Load()
	waitFor(t, 30*time.Second, "the other shards to poll a few times", func() bool { return otherReads.Load() > others+3*63 })
	if n := reads.Load() - before; n != 0 {
		t.Fatalf("the shard claimed back was read %d times while its old drain was still in a batch", n)
	}
	close(g.open)
	waitFor(t, 30*time.Second, "the event published", func() bool { return f.onTopic(t) >= 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return")
	}
}

// Every return path of Run closes the Kafka client and leaves no goroutine: here, a
// schema that is not migrated.
func TestFence_RunOnUnmigratedSchemaLeavesNoGoroutine(t *testing.T) {
	noLeaks(t)
	pool := testenv.Pool(t)
	cfg := &Config{Schema: testenv.Name(t, "none"), Brokers: testenv.Brokers(t), RegistryURL: testenv.RegistryURL(t), Logger: testenv.Logger(t)}
	r, err := New(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background()); !errors.Is(err, migrations.ErrNotMigrated) {
		t.Fatalf("Run = %v, want ErrNotMigrated", err)
	}
}

// Exactly-once mode: a replica paused just before it commits, whose shard passed to a
// new owner meanwhile, fails to commit (the new owner's producer fenced it), and its
// records never become visible to a read_committed reader.
func TestFence_ExactlyOnceZombieCommitIsFencedByTheNextOwner(t *testing.T) {
	t.Parallel()
	f := newFenceEnv(t)
	prefix := "fence-" + f.schema
	reg := registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute})
	zcfg := f.config(t, reg)
	zcfg.ExactlyOnce, zcfg.TransactionalIDPrefix, zcfg.ReplicaID = true, prefix, "zombie"
	zcfg.LeaseTTL, zcfg.HeartbeatInterval = 20*time.Second, 2*time.Second // the transaction outlives the pause
	var zev atomic.Pointer[TransactionEvent]
	zcfg.Hooks.OnTransaction = func(e TransactionEvent) { zev.Store(&e) }
	z, err := New(f.pool, zcfg)
	if err != nil {
		t.Fatal(err)
	}
	paused, resume := pauseAt(z, "commit")
	stopZ := start(t, z)
	s := f.writeOne(t, "k", 1)
	recv(t, paused, 60*time.Second, "the zombie to reach its commit")
	// The shard's group passes to the next owner: freed, and claimed by a second replica.
	f.exec(t, `UPDATE `+f.leases+` SET owner = NULL, expires_at = NULL, generation = generation + 1 WHERE shard / $2 = $1 / $2`, s, ExactlyOnceGroupShards)
	ncfg := f.config(t, reg)
	ncfg.ExactlyOnce, ncfg.TransactionalIDPrefix, ncfg.ReplicaID = true, prefix, "next"
	n, err := New(f.pool, ncfg)
	if err != nil {
		t.Fatal(err)
	}
	start(t, n)
	cl := testenv.Client(t, kgo.ConsumeTopics(f.topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	var got []*kgo.Record
	pctx, pcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer pcancel()
	for len(got) < 1 && pctx.Err() == nil {
		got = append(got, cl.PollFetches(pctx).Records()...)
	}
	if len(got) != 1 {
		t.Fatalf("read_committed saw %d records from the next owner, want 1", len(got))
	}
	resume()
	waitFor(t, 60*time.Second, "the zombie's transaction to end", func() bool { return zev.Load() != nil })
	if e := zev.Load(); e.Committed || !e.Fenced {
		t.Fatalf("zombie transaction: committed %v, fenced %v, err %v; want fenced", e.Committed, e.Fenced, e.Err)
	}
	if err := stopZ(); err != nil {
		t.Fatal(err)
	}
	// Nothing more becomes visible: the topic's committed records stay one.
	f.writeOne(t, "k", 2)
	for len(got) < 2 && pctx.Err() == nil {
		got = append(got, cl.PollFetches(pctx).Records()...)
	}
	if len(got) != 2 || string(got[1].Key) != "k" {
		t.Fatalf("read_committed saw %d records, want the first and the new one (2)", len(got))
	}
	if dup := string(got[0].Value) == string(got[1].Value); dup {
		t.Fatal("the zombie's record became visible")
	}
}

// The outcome write itself is fenced: a batch whose records were acked while its
// lease passed to another owner (here, changed under it between the acks and the
// write) deletes nothing, and says so (OnFenced, the fenced counter).
func TestFence_OutcomeWriteOfALostLeaseChangesNoRow(t *testing.T) {
	t.Parallel()
	f := newFenceEnv(t)
	cfg := f.config(t, registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}))
	cfg.LeaseTTL, cfg.HeartbeatInterval = 20*time.Second, 5*time.Second // the heartbeat must not notice first
	var fenced atomic.Pointer[FencedEvent]
	cfg.Hooks.OnFenced = func(e FencedEvent) { fenced.Store(&e) }
	r, err := New(f.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	acked, finish := pauseAt(r, "acked")
	start(t, r)
	s := f.writeOne(t, "k", 1)
	recv(t, acked, 30*time.Second, "the batch's records acked")
	f.exec(t, `UPDATE `+f.leases+` SET owner = 'thief', generation = generation + 1, expires_at = now() + interval '1 hour' WHERE shard = $1`, s)
	finish()
	waitFor(t, 30*time.Second, "the fenced write reported", func() bool { return fenced.Load() != nil })
	if e := fenced.Load(); e.Rows != 1 || e.Op != "delete" || e.Shards[0] != s {
		t.Fatalf("fenced event %+v, want 1 row of shard %d on delete", *e, s)
	}
	var left int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM `+pgx.Identifier{f.schema, "outbox"}.Sanitize()).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 1 {
		t.Fatalf("%d rows left, want the fenced row still there for the lease's owner", left)
	}
}

// TestPark_UnknownTopicFromARestartingBrokerIsRetriedNotParked: a broker that is
// starting answers UNKNOWN_TOPIC_OR_PARTITION for a partition it has not loaded yet.
// The row is parked as topic_missing only when the metadata says the topic does not
// exist; for a topic that exists it is retried. (Before the fix every such error
// parked the row: the exactly-once broker-kill test lost 196-500 events that way.)
func TestPark_UnknownTopicFromARestartingBrokerIsRetriedNotParked(t *testing.T) {
	t.Parallel()
	f := newFenceEnv(t)
	r, err := New(f.pool, f.config(t, registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute})))
	if err != nil {
		t.Fatal(err)
	}
	defer r.kc.Close()
	ctx := context.Background()
	refused := fmt.Errorf("producing: %w", kerr.UnknownTopicOrPartition)
	if kind, detail := r.classifyProduce(ctx, &outboxRow{topic: f.topic}, refused); kind != "" {
		t.Errorf("existing topic %s: parked as %s (%s), want retried", f.topic, kind, detail)
	}
	missing := testenv.Name(t, "absent")
	if kind, _ := r.classifyProduce(ctx, &outboxRow{topic: missing}, refused); kind != ParkTopicMissing {
		t.Errorf("absent topic %s: got %q, want %s", missing, kind, ParkTopicMissing)
	}
}
