package consumer_test

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/avrotype"
	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
)

// Seq is the test event: the seq-th event of key.
type Seq struct {
	Key string `avro:"key"`
	Seq int64  `avro:"seq"`
}

// env is one test's isolated world: its own Postgres schema (with an effects
// table), and access to Kafka and the registry.
type env struct {
	pool     *pgxpool.Pool
	schema   string
	brokers  []string
	registry string
	reg      *registry.Client
}

func newEnv(t testing.TB) *env {
	t.Helper()
	pool := testenv.PoolWith(t, func(c *pgxpool.Config) { c.MaxConns = 24 })
	e := &env{pool: pool, schema: testenv.Schema(t, pool), brokers: testenv.Brokers(t), registry: testenv.RegistryURL(t)}
	e.reg = registry.New(e.registry, registry.Options{Timeout: time.Minute})
	if _, err := pool.Exec(context.Background(), `CREATE TABLE `+e.table("effects")+` (
		applied  bigserial PRIMARY KEY,
		consumer text NOT NULL,
		event_id text NOT NULL,
		key      text NOT NULL,
		seq      bigint NOT NULL,
		note     text NOT NULL DEFAULT '',
		txid     bigint NOT NULL DEFAULT txid_current())`); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) table(name string) string { return pgx.Identifier{e.schema, name}.Sanitize() }

// topic creates a topic and its dead-letter topic.
func (e *env) topic(t testing.TB, partitions int32) string {
	t.Helper()
	name := testenv.Topic(t, partitions)
	testenv.TopicNamed(t, name+".dlq", 1)
	return name
}

func testLogger(t testing.TB) *slog.Logger { return testenv.Logger(t) }

// config is a consumer config for the test: its schema, a fresh group, from the
// start of the topics, fast retries.
func (e *env) config(t testing.TB, topics ...string) *consumer.Config {
	return &consumer.Config{
		Group: testenv.Name(t, "g"), Topics: topics, Brokers: e.brokers, RegistryURL: e.registry,
		Schema: e.schema, Logger: testLogger(t), RetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond,
		CommitInterval: 200 * time.Millisecond,
		KafkaOpts: []kgo.Opt{kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.SessionTimeout(6 * time.Second), kgo.RebalanceTimeout(10 * time.Second), kgo.HeartbeatInterval(time.Second)},
	}
}

// counters counts hook calls.
type counters struct {
	processed, duplicate, skipped, retry, dead atomic.Int64
	mu                                         sync.Mutex
	reasons                                    []string
	deadEvents                                 []consumer.DeadLetterEvent
}

func (n *counters) hooks() consumer.Hooks {
	return consumer.Hooks{
		OnProcessed: func(consumer.RecordEvent) { n.processed.Add(1) },
		OnDuplicate: func(consumer.RecordEvent) { n.duplicate.Add(1) },
		OnSkipped:   func(consumer.RecordEvent) { n.skipped.Add(1) },
		OnRetry:     func(consumer.RetryEvent) { n.retry.Add(1) },
		OnDeadLetter: func(e consumer.DeadLetterEvent) {
			n.dead.Add(1)
			n.mu.Lock()
			n.reasons = append(n.reasons, e.Reason)
			n.deadEvents = append(n.deadEvents, e)
			n.mu.Unlock()
		},
	}
}

// run starts c.Run and returns a graceful stop, also registered as cleanup.
func run(t testing.TB, c *consumer.Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("consumer did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func (e *env) newConsumer(t testing.TB, cfg *consumer.Config) *consumer.Consumer {
	t.Helper()
	c, err := consumer.New(e.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// applySeq is the handler of the tests: it records the event in the effects table.
func (e *env) applySeq(name string, before func(ctx context.Context, ev consumer.Event[Seq]) error) func(context.Context, pgx.Tx, consumer.Event[Seq]) error {
	q := `INSERT INTO ` + e.table("effects") + ` (consumer, event_id, key, seq) VALUES ($1, $2, $3, $4)`
	return func(ctx context.Context, tx pgx.Tx, ev consumer.Event[Seq]) error {
		if before != nil {
			if err := before(ctx, ev); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, q, name, ev.ID, ev.Key, ev.Value.Seq)
		return err
	}
}

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

func (e *env) count(t testing.TB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// schemaID registers (or looks up) the schema text under subject.
func (e *env) schemaID(t testing.TB, subject, text string) (int, avro.Schema) {
	t.Helper()
	s, err := avro.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	id, err := e.reg.ID(context.Background(), subject, text, true)
	if err != nil {
		t.Fatalf("registering schema: %v", err)
	}
	return id, s
}

func schemaText[T any](t testing.TB) string {
	t.Helper()
	text, err := avrotype.Text(reflect.TypeFor[T]())
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// record frames v (Avro with schema s, registered as id) into a relay-like record.
func record(t testing.TB, topic string, id int, s avro.Schema, key, eventID, eventType string, v any, extra ...string) *kgo.Record {
	t.Helper()
	body, err := avro.Marshal(s, v)
	if err != nil {
		t.Fatal(err)
	}
	hs := []kgo.RecordHeader{
		{Key: envelope.EventID, Value: []byte(eventID)},
		{Key: envelope.EventType, Value: []byte(eventType)},
	}
	for i := 0; i+1 < len(extra); i += 2 {
		hs = append(hs, kgo.RecordHeader{Key: extra[i], Value: []byte(extra[i+1])})
	}
	return &kgo.Record{Topic: topic, Key: []byte(key), Value: wire.Frame(uint32(id), body), Headers: hs}
}

// produce produces recs, partitioned by key.
func produce(t testing.TB, recs ...*kgo.Record) {
	t.Helper()
	produceWith(t, kgo.StickyKeyPartitioner(nil), recs)
}

// produceTo produces recs to the partitions they name.
func produceTo(t testing.TB, recs ...*kgo.Record) {
	t.Helper()
	produceWith(t, kgo.ManualPartitioner(), recs)
}

func produceWith(t testing.TB, p kgo.Partitioner, recs []*kgo.Record) {
	t.Helper()
	cl := testenv.Client(t, kgo.RecordPartitioner(p))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("producing: %v", err)
	}
}

// readTopic reads want records of topic from the start (or fails after timeout).
func readTopic(t testing.TB, topic string, want int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	cl := testenv.Client(t, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []*kgo.Record
	for len(out) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records from %s within %s", len(out), want, topic, timeout)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

func header(rec *kgo.Record, k string) string {
	for _, h := range rec.Headers {
		if h.Key == k {
			return string(h.Value)
		}
	}
	return ""
}

func hasHeaderPrefix(rec *kgo.Record, prefix string) bool {
	for _, h := range rec.Headers {
		if len(h.Key) >= len(prefix) && h.Key[:len(prefix)] == prefix {
			return true
		}
	}
	return false
}

func seqRecords(t testing.TB, e *env, topic string, keys []string, n int) []*kgo.Record {
	t.Helper()
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	var out []*kgo.Record
	for i := 1; i <= n; i++ {
		for _, k := range keys {
			out = append(out, record(t, topic, id, s, k, fmt.Sprintf("%s-%d", k, i), "Seq", Seq{Key: k, Seq: int64(i)}))
		}
	}
	return out
}
