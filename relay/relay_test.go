package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

type Seq struct {
	Key string `avro:"key"`
	Seq int64  `avro:"seq"`
	Pad string `avro:"pad"`
}

type env struct {
	pool     *pgxpool.Pool
	schema   string
	w        *outbox.Writer
	brokers  []string
	registry string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pool := testenv.PoolWith(t, func(c *pgxpool.Config) { c.MaxConns = 20 })
	e := &env{pool: pool, schema: testenv.Schema(t, pool), brokers: testenv.Brokers(t), registry: testenv.RegistryURL(t)}
	var err error
	e.w, err = outbox.New(pool, &outbox.Config{Schema: e.schema})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func testLogger(t testing.TB) *slog.Logger { return testenv.Logger(t) }

func (e *env) relay(t *testing.T, mod func(*relay.Config)) (*relay.Relay, context.CancelFunc, <-chan error) {
	t.Helper()
	cfg := &relay.Config{
		Schema: e.schema, Brokers: e.brokers, RegistryURL: e.registry,
		PollInterval: 200 * time.Millisecond, LeaseTTL: 3 * time.Second, HeartbeatInterval: 500 * time.Millisecond,
		Logger: testLogger(t), BatchSize: 500,
	}
	if mod != nil {
		mod(cfg)
	}
	r, err := relay.New(e.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ExactlyOnce && cfg.CommitLogTopic == "" && cfg.TransactionalIDPrefix != "" && len(e.brokers) > 0 {
		// The commit log topic (64 partitions) is the test's: thousands of partitions
		// left on the shared broker slow every later test and benchmark.
		log := cfg.TransactionalIDPrefix + ".commits"
		t.Cleanup(func() {
			cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
			if err != nil {
				return
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = kadm.NewClient(cl).DeleteTopics(ctx, log)
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("relay.Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("relay did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return r, stop, done
}

// write commits n events per key for keys, seq 1..n, in per-key order.
func (e *env) write(t *testing.T, topic string, keys, n int, pad int) {
	t.Helper()
	ctx := context.Background()
	padding := string(make([]byte, pad))
	for s := 1; s <= n; s++ {
		evs := make([]outbox.Event, 0, keys)
		for k := 0; k < keys; k++ {
			key := "key-" + strconv.Itoa(k)
			evs = append(evs, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: int64(s), Pad: padding}})
		}
		if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return e.w.Write(ctx, tx, evs...) }); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) backlog(t *testing.T) (pending, parked int) {
	t.Helper()
	err := e.pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE parked_at IS NULL), count(*) FILTER (WHERE parked_at IS NOT NULL) FROM `+
		pgx.Identifier{e.schema, "outbox"}.Sanitize()).Scan(&pending, &parked)
	if err != nil {
		t.Fatal(err)
	}
	return
}

// readBack consumes topic from the start until want distinct (key, seq) pairs are seen
// or timeout, returning every record in partition order.
type seen struct {
	records    []*kgo.Record
	distinct   int
	duplicates int
	violations int
	stale      int // records (first or not) that landed after a newer record of their key
	byKey      map[string][]int64
}

func readBack(t *testing.T, topic string, want int, timeout time.Duration) *seen {
	t.Helper()
	return readBackFrom(t, "", testenv.RegistryURL(t), []string{topic}, want, timeout)
}

// readBackFrom is readBack on the given brokers ("" for KAFKA_BROKERS) and registry;
// order is checked per topic and key.
func readBackFrom(t *testing.T, brokers, registryURL string, topics []string, want int, timeout time.Duration, extra ...kgo.Opt) *seen {
	t.Helper()
	opts := append([]kgo.Opt{kgo.ConsumeTopics(topics...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, extra...)
	if brokers != "" {
		opts = append(opts, kgo.SeedBrokers(brokers))
	}
	cl := testenv.Client(t, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s := &seen{byKey: map[string][]int64{}}
	first := map[string]bool{}
	last := map[string]int64{}
	newest := map[string]int64{}
	reg := registry.New(registryURL, registry.Options{Timeout: time.Minute})
	for s.distinct < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			break
		}
		fs.EachRecord(func(rec *kgo.Record) {
			s.records = append(s.records, rec)
			id, body, err := wire.Parse(rec.Value)
			if err != nil {
				t.Fatalf("record not in wire format: %v", err)
			}
			sch, err := reg.Schema(ctx, int(id))
			if err != nil {
				t.Fatalf("schema id %d: %v", id, err)
			}
			var v Seq
			if err := avro.Unmarshal(sch, body, &v); err != nil {
				t.Fatal(err)
			}
			if v.Key != string(rec.Key) {
				t.Fatalf("record key %q carries value key %q", rec.Key, v.Key)
			}
			k := fmt.Sprintf("%s/%s/%d", rec.Topic, v.Key, v.Seq)
			nk := rec.Topic + "/" + v.Key
			if v.Seq < newest[nk] {
				s.stale++
			}
			newest[nk] = max(newest[nk], v.Seq)
			if first[k] {
				s.duplicates++
				return
			}
			first[k] = true
			s.distinct++
			tk := v.Key
			if len(topics) > 1 {
				tk = rec.Topic + "/" + v.Key
			}
			if v.Seq <= last[tk] {
				s.violations++
			}
			last[tk] = v.Seq
			s.byKey[tk] = append(s.byKey[tk], v.Seq)
		})
	}
	return s
}

// quietRelay starts a relay whose idle shards poll only every 10 minutes, with leases
// that outlast the test (no shard is lost and claimed again, which would read it at
// once), and returns once the relay owns all 64 shards and each has finished its first
// read: from then on an event reaches Kafka within the test only if a NOTIFY woke its
// shard. mod may set further fields (an OnRead hook is kept).
func (e *env) quietRelay(t *testing.T, mod func(*relay.Config)) *relay.Relay {
	t.Helper()
	var mu sync.Mutex
	read := map[int]bool{}
	r, _, _ := e.relay(t, func(c *relay.Config) {
		c.PollInterval = 10 * time.Minute
		c.LeaseTTL, c.HeartbeatInterval = 5*time.Minute, time.Second
		if mod != nil {
			mod(c)
		}
		next := c.Hooks.OnRead
		c.Hooks.OnRead = func(e relay.ReadEvent) {
			mu.Lock()
			read[e.Shard] = true
			mu.Unlock()
			if next != nil {
				next(e)
			}
		}
	})
	waitFor(t, 60*time.Second, "the relay owning all 64 shards, each read once", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(read) == 64 && len(r.Owned()) == 64
	})
	return r
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func header(rec *kgo.Record, k string) string {
	for _, h := range rec.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

func TestRelay_PublishesEverythingInKeyOrderAndEmptiesOutbox(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 6)
	e.write(t, topic, 50, 40, 100) // 2000 events
	r, _, _ := e.relay(t, nil)
	got := readBack(t, topic, 2000, 60*time.Second)
	if got.distinct != 2000 || got.violations != 0 {
		t.Fatalf("distinct %d (want 2000), order violations %d, duplicates %d", got.distinct, got.violations, got.duplicates)
	}
	if got.duplicates != 0 {
		t.Fatalf("duplicates without any fault: %d", got.duplicates)
	}
	rec := got.records[0]
	for _, h := range []string{envelope.EventID, envelope.EventType, envelope.OccurredAt, envelope.Subject} {
		if header(rec, h) == "" {
			t.Errorf("header %s missing: %v", h, rec.Headers)
		}
	}
	if header(rec, envelope.EventType) != "Seq" || header(rec, envelope.Subject) != topic+"-value" {
		t.Errorf("headers %v", rec.Headers)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		p, parked := e.backlog(t)
		if p == 0 && parked == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("outbox not emptied: %d pending %d parked", p, parked)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(r.Owned()); n != 64 {
		t.Fatalf("a lone replica owns %d shards, want 64", n)
	}
	if err := r.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
}

// In retention mode published rows are marked, not deleted, and the relay's purge
// (once a minute) deletes those published longer ago than Retention and keeps the
// others.
func TestRelay_RetentionModeMarksThenPurges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 1)
	outboxTable := pgx.Identifier{e.schema, "outbox"}.Sanitize()
	counts := func() (published, total int) {
		t.Helper()
		if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE published_at IS NOT NULL), count(*) FROM `+outboxTable).
			Scan(&published, &total); err != nil {
			t.Fatal(err)
		}
		return published, total
	}
	e.write(t, topic, 3, 3, 0)
	e.relay(t, func(c *relay.Config) { c.Retention = time.Hour })
	readBack(t, topic, 9, 30*time.Second)
	waitFor(t, 20*time.Second, "the 9 published rows marked, none deleted", func() bool {
		published, total := counts()
		if total != 9 {
			t.Fatalf("retention mode: %d rows left of 9; published rows must be kept until they are old", total)
		}
		return published == 9
	})
	// Those 9 were published two hours ago (past the 1 h retention); 9 more, published
	// now, must outlive the purge.
	if _, err := e.pool.Exec(context.Background(), `UPDATE `+outboxTable+` SET published_at = now() - interval '2 hours' WHERE published_at IS NOT NULL`); err != nil {
		t.Fatal(err)
	}
	e.write(t, topic, 3, 6, 0) // seq 1..6 per key: 1..3 again (new rows) and 4..6
	readBack(t, topic, 18, 30*time.Second)
	waitFor(t, 20*time.Second, "the 18 new rows marked", func() bool { p, _ := counts(); return p == 27 })
	var old int
	waitFor(t, 100*time.Second, "the purge of the 9 rows published 2 h ago (it runs a minute after start)", func() bool {
		if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM `+outboxTable+` WHERE published_at < now() - interval '1 hour'`).Scan(&old); err != nil {
			t.Fatal(err)
		}
		return old == 0
	})
	if published, total := counts(); published != 18 || total != 18 {
		t.Fatalf("after the purge: %d marked of %d rows, want the 18 recent ones kept", published, total)
	}
}

func TestRelay_NotifyWakesIdleRelayDespiteLongPoll(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 1)
	e.quietRelay(t, nil)
	start := time.Now()
	e.write(t, topic, 1, 1, 0)
	got := readBack(t, topic, 1, 60*time.Second)
	if got.distinct != 1 {
		t.Fatalf("event committed on an idle relay (poll 10 min) not on Kafka within 60s")
	}
	t.Logf("idle wake-up to Kafka: %s (poll interval 10 min)", time.Since(start).Round(time.Millisecond))

	// The writer's payload names the shards; a plain-SQL writer's empty payload, or
	// one that is not a shard list, must still wake the relay (every shard).
	quiet, _ := outbox.New(e.pool, &outbox.Config{Schema: e.schema, DisableNotify: true})
	for i, payload := range []string{"", "not-a-shard-list", "99"} {
		ctx := context.Background()
		key := "other-key-" + strconv.Itoa(i)
		err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			if err := quiet.Write(ctx, tx, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: 1}}); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, outbox.DefaultChannel, payload)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := readBack(t, topic, 2+i, 60*time.Second); got.distinct != 2+i {
			t.Fatalf("event notified with payload %q not on Kafka within 60s (poll 10 min)", payload)
		}
	}
}

// A transaction that touches many shards of an idle relay is drained in a few
// batches spanning several shards, not one claim per shard: the writer's NOTIFY names
// the shards, one drain takes the others that keep up into its batch. Every event is
// published, in key order.
func TestRelay_CommitOnManyShardsIsDrainedInFewBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 3)
	var reads, rowsRead atomic.Int64
	e.quietRelay(t, func(c *relay.Config) {
		c.Hooks.OnRead = func(e relay.ReadEvent) {
			if rows := e.Rows; rows > 0 {
				reads.Add(1)
				rowsRead.Add(int64(rows))
			}
		}
	}) // every shard's first (empty) batch is done: all keep up

	// 3 events on each of 64 keys, one key per shard, in 3 transactions.
	keys := map[int]string{}
	for i := 0; len(keys) < 64; i++ {
		k := "k-" + strconv.Itoa(i)
		if _, ok := keys[outbox.Shard(k)]; !ok {
			keys[outbox.Shard(k)] = k
		}
	}
	ctx := context.Background()
	for seq := int64(1); seq <= 3; seq++ {
		var evs []outbox.Event
		for _, k := range keys {
			evs = append(evs, outbox.Event{Topic: topic, Key: k, Type: "Seq", Value: Seq{Key: k, Seq: seq}})
		}
		if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return e.w.Write(ctx, tx, evs...) }); err != nil {
			t.Fatal(err)
		}
	}
	got := readBack(t, topic, 192, 60*time.Second)
	if got.distinct != 192 || got.violations != 0 {
		t.Fatalf("distinct %d of 192, order violations %d", got.distinct, got.violations)
	}
	t.Logf("192 events on 64 shards in %d batches (%d rows read)", reads.Load(), rowsRead.Load())
	if n := reads.Load(); n > 48 {
		t.Fatalf("%d batches for 3 commits on 64 shards: shards that keep up should share batches (64 per commit without)", n)
	}
}

// Under a steady stream of commits on many shards, batches of shards that keep up
// grow with the rate instead of multiplying: at most a few run at once, and the
// news that comes meanwhile waits for the next of them, which takes it all along.
// Unbounded, 20,000 events/s ran ~1,500 reads a second of ~13 rows each and the
// latency was the machine's CPU queue.
func TestRelay_SteadyStreamIsReadInBatchesThatGrowWithTheRate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 3)
	var reads, rows atomic.Int64
	e.quietRelay(t, func(c *relay.Config) {
		c.Hooks.OnRead = func(e relay.ReadEvent) {
			reads.Add(1)
			rows.Add(int64(e.Rows))
		}
	}) // idle shards poll every 10 minutes: every read below follows a NOTIFY
	reads.Store(0)
	rows.Store(0)
	// 8 writers, each committing 100 transactions of 16 events every 2 ms, each event
	// on a key of its own (each transaction on about 14 shards).
	const writers, txs, perTx = 8, 100, 16
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range txs {
				evs := make([]outbox.Event, 0, perTx)
				for k := range perTx {
					key := "w" + strconv.Itoa(w) + "-t" + strconv.Itoa(seq) + "-k" + strconv.Itoa(k)
					evs = append(evs, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: 1}})
				}
				if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return e.w.Write(ctx, tx, evs...) }); err != nil {
					errs <- err
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	const n = writers * txs * perTx
	got := readBack(t, topic, n, 60*time.Second)
	if got.distinct != n || got.violations != 0 {
		t.Fatalf("distinct %d of %d, order violations %d", got.distinct, n, got.violations)
	}
	r, k := reads.Load(), rows.Load()
	t.Logf("%d events (%d rows read) in %d reads: %.1f rows a read", n, k, r, float64(k)/float64(r))
	if r*8 > k {
		t.Fatalf("%d reads for %d rows (fewer than 8 a read): batches multiplied instead of growing", r, k)
	}
}
