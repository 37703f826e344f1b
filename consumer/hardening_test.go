package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
)

// appliedKeys returns the keys in the effects table, in the order applied.
func (e *env) appliedKeys(t *testing.T) []string {
	t.Helper()
	rows, _ := e.pool.Query(context.Background(), `SELECT key FROM `+e.table("effects")+` ORDER BY applied`)
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// keyed returns one Seq record per key, in order, all on partition 0.
func keyed(t *testing.T, e *env, topic string, keys ...string) []*kgo.Record {
	t.Helper()
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	var out []*kgo.Record
	for i, k := range keys {
		r := record(t, topic, id, s, k, "e-"+k, "Seq", Seq{Key: k, Seq: int64(i + 1)})
		r.Partition = 0
		out = append(out, r)
	}
	return out
}

// A handler whose own context times out makes pgx close the connection; that is the
// handler's failure (like a statement timeout), dead-lettered after MaxAttempts, not
// an infrastructure failure retried for ever. In both modes.
func TestConsumer_HandlerTimeoutIsDeadLetteredNotRetriedForever(t *testing.T) {
	t.Parallel()
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			topic := e.topic(t, 1)
			produceTo(t, keyed(t, e, topic, "a", "slow", "b")...)
			var n counters
			cfg := e.config(t, topic)
			cfg.MaxAttempts, cfg.BatchMode, cfg.Hooks = 2, batch, n.hooks()
			c := e.newConsumer(t, cfg)
			consumer.Handle(c, "Seq", e.applySeq("c", func(ctx context.Context, ev consumer.Event[Seq]) error {
				return nil
			}))
			c.Use(func(next consumer.Handler) consumer.Handler {
				return consumer.HandlerFunc(func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
					if m.Key == "slow" {
						tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
						defer cancel()
						_, err := tx.Exec(tctx, `SELECT pg_sleep(30)`)
						return err
					}
					return next.Handle(ctx, tx, m)
				})
			})
			run(t, c)
			waitFor(t, 60*time.Second, "b applied and slow dead-lettered", func() bool {
				return n.dead.Load() == 1 && e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'b'`) == 1
			})
			if got := strings.Join(e.appliedKeys(t), ","); got != "a,b" {
				t.Errorf("applied %s, want a,b", got)
			}
			dlq := readTopic(t, topic+".dlq", 1, 30*time.Second)
			if header(dlq[0], envelope.EventID) != "e-slow" || header(dlq[0], consumer.HeaderDLQReason) != consumer.ReasonExhausted {
				t.Errorf("dead letter %s (%s), want e-slow (%s)", header(dlq[0], envelope.EventID), header(dlq[0], consumer.HeaderDLQReason), consumer.ReasonExhausted)
			}
		})
	}
}

// In batch mode, failures that doom the batch's transaction and show only at COMMIT
// or at the next RELEASE SAVEPOINT (a deferred constraint; a handler that swallows a
// SQL error and returns nil) are isolated to their record, as single mode does: the
// culprit is dead-lettered after MaxAttempts, every other record applied once, in
// order, instead of the batch being retried for ever.
func TestConsumer_BatchModeIsolatesFailuresAtCommitAndRelease(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, `CREATE TABLE `+e.table("parents")+` (id int PRIMARY KEY);
		CREATE TABLE `+e.table("refs")+` (parent int REFERENCES `+e.table("parents")+` (id) DEFERRABLE INITIALLY DEFERRED)`); err != nil {
		t.Fatal(err)
	}
	topic := e.topic(t, 1)
	keys := []string{"k1", "k2", "orphan", "k3", "swallow", "k4", "k5"}
	produceTo(t, keyed(t, e, topic, keys...)...)
	var n counters
	cfg := e.config(t, topic)
	cfg.BatchMode, cfg.MaxAttempts, cfg.Hooks = true, 2, n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", func(ctx context.Context, ev consumer.Event[Seq]) error {
		return nil
	}))
	c.Use(func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
			switch m.Key {
			case "orphan": // fails only at COMMIT
				if _, err := tx.Exec(ctx, `INSERT INTO `+e.table("refs")+` VALUES (42)`); err != nil {
					return err
				}
			case "swallow": // the transaction is aborted, the handler says nil
				_, _ = tx.Exec(ctx, `SELECT 1/0`)
				return nil
			}
			return next.Handle(ctx, tx, m)
		})
	})
	run(t, c)
	waitFor(t, 60*time.Second, "5 applied, 2 dead-lettered", func() bool {
		return n.dead.Load() == 2 && e.count(t, `SELECT count(*) FROM `+e.table("effects")) == 5
	})
	if got := strings.Join(e.appliedKeys(t), ","); got != "k1,k2,k3,k4,k5" {
		t.Errorf("applied %s, want k1,k2,k3,k4,k5 once each, in order", got)
	}
	dlq := readTopic(t, topic+".dlq", 2, 30*time.Second)
	var got []string
	for _, d := range dlq {
		got = append(got, header(d, envelope.EventID)+"/"+header(d, consumer.HeaderDLQReason))
	}
	if want := []string{"e-orphan/" + consumer.ReasonExhausted, "e-swallow/" + consumer.ReasonExhausted}; !slices.Equal(got, want) {
		t.Errorf("dead letters %v, want %v", got, want)
	}
}

// Batch mode: R1 fails until it is dead-lettered inside the open batch; a later
// record's connection dies, so the batch rolls back. R1 must not then run again and
// be applied: a record is dead-lettered or applied, never both.
func TestConsumer_BatchModeNeverDeadLettersAndAppliesTheSameRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produceTo(t, keyed(t, e, topic, "k1", "r1", "k2", "killer", "k3")...)
	var n counters
	var sent, killed atomic.Bool
	cfg := e.config(t, topic)
	cfg.BatchMode, cfg.MaxAttempts, cfg.Hooks = true, 2, n.hooks()
	onDead := cfg.Hooks.OnDeadLetter
	cfg.Hooks.OnDeadLetter = func(e consumer.DeadLetterEvent) { sent.Store(true); onDead(e) }
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", func(ctx context.Context, ev consumer.Event[Seq]) error {
		return nil
	}))
	c.Use(func(next consumer.Handler) consumer.Handler {
		return consumer.HandlerFunc(func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
			switch {
			case m.Key == "r1" && !sent.Load():
				return errors.New("r1 fails until it is dead-lettered")
			case m.Key == "killer" && sent.Load() && killed.CompareAndSwap(false, true):
				// The batch's connection dies under it: an infrastructure failure.
				_, err := tx.Exec(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
				if err == nil {
					err = errors.New("backend not terminated")
				}
				return err
			}
			return next.Handle(ctx, tx, m)
		})
	})
	run(t, c)
	waitFor(t, 60*time.Second, "k3 applied", func() bool {
		return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'k3'`) == 1
	})
	if !killed.Load() {
		t.Fatal("the connection was never killed: the test did not exercise the rollback")
	}
	if got := strings.Join(e.appliedKeys(t), ","); got != "k1,k2,killer,k3" {
		t.Errorf("applied %s, want k1,k2,killer,k3 (r1 is dead-lettered, so never applied)", got)
	}
	dlq := readTopic(t, topic+".dlq", 1, 30*time.Second)
	if len(dlq) != 1 || header(dlq[0], envelope.EventID) != "e-r1" {
		t.Fatalf("dead letters: %d, first %s; want only e-r1", len(dlq), header(dlq[0], envelope.EventID))
	}
	if got := n.dead.Load(); got != 1 {
		t.Errorf("OnDeadLetter called %d times, want 1", got)
	}
}

// laggingRegistry answers "not found" for the first misses lookups, as a registry
// that has not made a just-registered schema visible yet (Apicurio's lag, a replica).
type laggingRegistry struct {
	inner  consumer.Registry
	misses atomic.Int32
}

func (l *laggingRegistry) Schema(ctx context.Context, id int) (avro.Schema, error) {
	if l.misses.Add(-1) >= 0 {
		return nil, fmt.Errorf("%w: 404 schema %d (not visible yet)", consumer.ErrSchemaNotFound, id)
	}
	return l.inner.Schema(ctx, id)
}

// A 404 for a schema id the registry has just registered gets a bounded grace of
// retries: the record is applied, not dead-lettered while later events of its key
// are applied.
func TestConsumer_SchemaNotFoundJustAfterRegistrationIsRetriedWithinTheGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produceTo(t, keyed(t, e, topic, "first", "second")...)
	var n counters
	reg := &laggingRegistry{inner: e.reg}
	reg.misses.Store(3)
	cfg := e.config(t, topic)
	cfg.Registry, cfg.Hooks = reg, n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", nil))
	run(t, c)
	waitFor(t, 60*time.Second, "second applied", func() bool {
		return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'second'`) == 1
	})
	if got := strings.Join(e.appliedKeys(t), ","); got != "first,second" || n.dead.Load() != 0 {
		t.Errorf("applied %s with %d dead letters, want first,second and none", got, n.dead.Load())
	}
}

// A topic whose name is too long for "<topic>.dlq" (Kafka's 249-character limit)
// gets a derived dead-letter topic instead of a partition stalled for ever.
func TestConsumer_LongTopicNameGetsAValidDeadLetterTopic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Name(t, "t")
	topic += strings.Repeat("x", 249-len(topic))
	testenv.TopicNamed(t, topic, 1)
	dlqTopic := consumer.DeadLetterTopicName(topic, ".dlq")
	if len(dlqTopic) > 249 || !strings.HasSuffix(dlqTopic, ".dlq") || dlqTopic == consumer.DeadLetterTopicName(topic[:248]+"y", ".dlq") {
		t.Fatalf("derived dead-letter topic %q (%d chars)", dlqTopic, len(dlqTopic))
	}
	produceTo(t, keyed(t, e, topic, "poison", "good")...)
	var n counters
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", func(ctx context.Context, ev consumer.Event[Seq]) error {
		if ev.Key == "poison" {
			return consumer.Permanent(errors.New("poison"))
		}
		return nil
	}))
	run(t, c)
	t.Cleanup(func() { deleteTopic(t, dlqTopic) })
	waitFor(t, 60*time.Second, "good applied", func() bool {
		return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'good'`) == 1
	})
	dlq := readTopic(t, dlqTopic, 1, 30*time.Second)
	if header(dlq[0], envelope.EventID) != "e-poison" {
		t.Errorf("dead letter %s, want e-poison", header(dlq[0], envelope.EventID))
	}

	// A DeadLetterTopic that names an invalid topic is refused at New.
	bad := e.config(t, topic)
	bad.DeadLetterTopic = func(t string) string { return t + ".dead-letters" }
	if _, err := consumer.New(e.pool, bad); err == nil || !strings.Contains(err.Error(), "DeadLetterTopic") {
		t.Errorf("New with a dead-letter topic name over 249 characters: %v, want an error naming DeadLetterTopic", err)
	}
}

func deleteTopic(t *testing.T, name string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(testenv.Brokers(t)...))
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = kadm.NewClient(cl).DeleteTopics(ctx, name)
}

// By default the consumer reads read_committed: a record of an aborted Kafka
// transaction (the relay's exactly-once mode, fenced mid-batch) is never applied.
// ReadUncommitted opts out.
func TestConsumer_ReadsCommittedRecordsOnlyByDefault(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	recs := keyed(t, e, topic, "aborted", "committed")
	tx := testenv.Client(t, kgo.TransactionalID(testenv.Name(t, "tx")), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, r := range recs {
		if err := tx.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := tx.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
		commit := kgo.TryCommit
		if string(r.Key) == "aborted" {
			commit = kgo.TryAbort
		}
		if err := tx.EndTransaction(ctx, commit); err != nil {
			t.Fatal(err)
		}
	}
	for _, uncommitted := range []bool{false, true} {
		name := fmt.Sprintf("c%v", uncommitted)
		cfg := e.config(t, topic)
		cfg.ReadUncommitted = uncommitted
		c := e.newConsumer(t, cfg)
		consumer.Handle(c, "Seq", e.applySeq(name, nil))
		stop := run(t, c)
		waitFor(t, 60*time.Second, "the committed record applied", func() bool {
			return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'committed' AND consumer = $1`, name) == 1
		})
		stop()
		got := e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'aborted' AND consumer = $1`, name)
		if want := map[bool]int{false: 0, true: 1}[uncommitted]; got != want {
			t.Errorf("ReadUncommitted %v: the aborted record applied %d times, want %d", uncommitted, got, want)
		}
	}
}

// Anyone who can write to a dead-letter topic can forge the header naming where a
// redrive sends a record: Redrive produces only to the topic(s) the dead-letter topic
// belongs to, refuses and reports the rest, and sends everything to To when told.
func TestRedrive_RefusesRecordsNamingAnotherTopic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	victim := testenv.Topic(t, 1)
	recs := keyed(t, e, topic, "genuine", "forged")
	recs[0].Headers = append(recs[0].Headers, kgo.RecordHeader{Key: consumer.HeaderDLQTopic, Value: []byte(topic)})
	recs[1].Headers = append(recs[1].Headers, kgo.RecordHeader{Key: consumer.HeaderDLQTopic, Value: []byte(victim)})
	for _, r := range recs {
		r.Topic = topic + ".dlq"
	}
	produceTo(t, recs...)

	ctx := context.Background()
	ropts := &consumer.RedriveOptions{Brokers: e.brokers, Group: testenv.Name(t, "r"), Logger: testLogger(t), IdleTimeout: 5 * time.Second}
	moved, err := consumer.Redrive(ctx, topic+".dlq", ropts)
	var refused *consumer.RedriveRefusedError
	if moved != 1 || !errors.As(err, &refused) || refused.Refused[victim] != 1 || len(refused.Refused) != 1 {
		t.Fatalf("Redrive = %d, %v; want 1 moved and the record naming %s refused", moved, err, victim)
	}
	if got := readTopic(t, topic, 1, 30*time.Second); string(got[0].Key) != "genuine" {
		t.Errorf("redriven %q, want genuine", got[0].Key)
	}
	ends, err := kadm.NewClient(testenv.Client(t)).ListEndOffsets(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	if o, _ := ends.Lookup(victim, 0); o.Offset != 0 {
		t.Errorf("the victim topic got %d record(s) from the redrive", o.Offset)
	}

	// An explicit destination takes every record.
	ropts.Group, ropts.To = testenv.Name(t, "r2"), topic
	if moved, err := consumer.Redrive(ctx, topic+".dlq", ropts); moved != 2 || err != nil {
		t.Errorf("Redrive with To = %d, %v; want 2", moved, err)
	}
}

// CleanCommitted deletes a row only when it is old enough AND the group's committed
// offset of its partition is past the row's record: a record processed but not
// committed (or a group rewound) keeps its row, so its redelivery is still a
// duplicate. Plain Clean deletes by age alone.
func TestConsumer_CleanCommittedKeepsRowsKafkaCanStillRedeliver(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produceTo(t, keyed(t, e, topic, "a", "b", "c", "d", "e", "f")...)
	var n counters
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", nil))
	stop := run(t, c)
	waitFor(t, 60*time.Second, "6 applied", func() bool { return n.processed.Load() == 6 })
	stop() // commits offset 6
	ctx := context.Background()
	adm := kadm.NewClient(testenv.Client(t))
	// The group's commit stands at 3 (its last commits lost, or the group rewound):
	// records 3, 4 and 5 will be delivered again.
	back := kadm.Offsets{}
	back.Add(kadm.Offset{Topic: topic, Partition: 0, At: 3, LeaderEpoch: -1})
	if resp, err := adm.CommitOffsets(ctx, cfg.Group, back); err != nil || resp.Error() != nil {
		t.Fatalf("rewinding the group: %v %v", err, resp.Error())
	}
	pe := e.table("processed_events")
	if _, err := e.pool.Exec(ctx, `UPDATE `+pe+` SET processed_at = now() - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, `INSERT INTO `+pe+` (consumer_group, event_id, topic, "partition", "offset", processed_at)
		VALUES ($1, 'uncommitted-topic', 'never-committed', 0, 0, now() - interval '2 hours')`, cfg.Group); err != nil {
		t.Fatal(err)
	}
	deleted, err := c.CleanCommitted(ctx, time.Hour, 2)
	if err != nil || deleted != 3 {
		t.Fatalf("CleanCommitted = %d, %v; want the 3 rows below the committed offset", deleted, err)
	}
	rows, _ := e.pool.Query(ctx, `SELECT event_id FROM `+pe+` ORDER BY event_id`)
	left, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	if want := []string{"e-d", "e-e", "e-f", "uncommitted-topic"}; !slices.Equal(left, want) {
		t.Errorf("rows left %v, want %v", left, want)
	}
	if deleted, err := c.Clean(ctx, time.Hour, 2); err != nil || deleted != 4 {
		t.Errorf("plain Clean = %d, %v; want all 4 old rows (age alone)", deleted, err)
	}
}

// Under load, members join and leave (cooperative rebalances revoke partitions while
// the periodic committer runs): the group's committed offsets never move backwards,
// and every event is applied exactly once. Graceful revocations commit before they
// return, so this is a guard: the lost-partition rewind it was written for goes red
// in TestConsumer_LostPartitionsUnderLoadNeverRewindCommittedOffsets.
func TestConsumer_CommittedOffsetsNeverRewindAcrossRebalancesUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 4)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	cfg := e.config(t, topic)
	cfg.CommitInterval = 20 * time.Millisecond // commits race the revocations
	newMember := func(name string) *consumer.Consumer {
		c := e.newConsumer(t, cfg)
		consumer.Handle(c, "Seq", e.applySeq(name, nil))
		return c
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Watch the group's commits.
	adm := kadm.NewClient(testenv.Client(t))
	rewinds := make(chan string, 100)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		last := map[int32]int64{}
		for ctx.Err() == nil {
			offs, err := adm.FetchOffsets(ctx, cfg.Group)
			if err == nil {
				offs.Each(func(o kadm.OffsetResponse) {
					if o.Topic == topic && o.At >= 0 {
						if o.At < last[o.Partition] {
							rewinds <- fmt.Sprintf("partition %d: %d after %d", o.Partition, o.At, last[o.Partition])
						}
						last[o.Partition] = max(last[o.Partition], o.At)
					}
				})
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	// Produce under load while members come and go.
	const total = 3000
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		cl := testenv.Client(t)
		for i := range total {
			k := fmt.Sprintf("k%d", i%64)
			r := record(t, topic, id, s, k, fmt.Sprintf("ev-%d", i), "Seq", Seq{Key: k, Seq: int64(i)})
			cl.Produce(ctx, r, nil)
			if i%100 == 0 {
				time.Sleep(20 * time.Millisecond)
			}
		}
		_ = cl.Flush(ctx)
	}()
	stopA := run(t, newMember("a"))
	for round := range 3 {
		stopB := run(t, newMember(fmt.Sprintf("b%d", round)))
		waitFor(t, 60*time.Second, "progress with two members", func() bool {
			return e.count(t, `SELECT count(*) FROM `+e.table("effects")) >= (round+1)*total/5
		})
		stopB() // revokes its partitions: A takes them back
	}
	<-produced
	waitFor(t, 120*time.Second, "every event applied", func() bool {
		return e.count(t, `SELECT count(DISTINCT event_id) FROM `+e.table("effects")) == total
	})
	stopA()
	cancel()
	<-watchDone
	close(rewinds)
	for r := range rewinds {
		t.Errorf("committed offset moved backwards: %s", r)
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("effects")); got != total {
		t.Errorf("effects: %d rows for %d events; each must be applied once", got, total)
	}
}

// A record whose event id was already applied is a duplicate whatever its body: it
// is never decoded (a redelivery costs no Avro decode), so a body that would not
// decode is not dead-lettered either. A fresh record whose body does not decode is
// still dead-lettered, with no processed_events row. In both modes.
func TestConsumer_DuplicatesAreNotDecoded(t *testing.T) {
	t.Parallel()
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			topic := e.topic(t, 1)
			recs := keyed(t, e, topic, "a", "bad-dup", "bad", "b")
			id, _ := e.schemaID(t, topic+"-value", schemaText[Seq](t))
			undecodable := wire.Frame(uint32(id), []byte{0x80}) // a string length cut short
			recs[1].Value, recs[1].Headers[0].Value = undecodable, []byte("e-a")
			recs[2].Value = undecodable
			produceTo(t, recs...)
			var n counters
			cfg := e.config(t, topic)
			cfg.BatchMode, cfg.Hooks = batch, n.hooks()
			c := e.newConsumer(t, cfg)
			consumer.Handle(c, "Seq", e.applySeq("c", nil))
			run(t, c)
			waitFor(t, 60*time.Second, "b applied", func() bool {
				return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'b'`) == 1
			})
			if got := strings.Join(e.appliedKeys(t), ","); got != "a,b" {
				t.Errorf("applied %s, want a,b", got)
			}
			if d, dl := n.duplicate.Load(), n.dead.Load(); d != 1 || dl != 1 {
				t.Errorf("%d duplicates and %d dead letters, want 1 (e-a again) and 1 (e-bad)", d, dl)
			}
			n.mu.Lock()
			for _, ev := range n.deadEvents {
				if ev.EventID != "e-bad" || ev.Reason != consumer.ReasonBadBody {
					t.Errorf("dead letter %s (%s), want e-bad (%s)", ev.EventID, ev.Reason, consumer.ReasonBadBody)
				}
			}
			n.mu.Unlock()
			if k := e.count(t, `SELECT count(*) FROM `+e.table("processed_events")+` WHERE event_id = 'e-bad'`); k != 0 {
				t.Errorf("%d processed_events rows for the dead-lettered e-bad, want 0", k)
			}
		})
	}
}

// After a batch of new events only, the next batch is recorded with a plain INSERT;
// an event redelivered in it (the relay published it again, at a later offset) makes
// the batch start again with ON CONFLICT ... RETURNING: the redelivery is a duplicate,
// the rest applied, and no failure is reported. So is an event repeated within a
// batch recorded as new.
func TestConsumer_RedeliveryInABatchRecordedAsNew(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	var n counters
	var failures atomic.Int64
	cfg := e.config(t, topic)
	cfg.BatchMode, cfg.Hooks = true, n.hooks()
	cfg.Hooks.OnError = func(ev consumer.ErrorEvent) {
		failures.Add(1)
		t.Logf("OnError %s: %v", ev.Kind, ev.Err)
	}
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", nil))
	run(t, c)
	applied := func(k string) func() bool {
		return func() bool {
			return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = '`+k+`'`) == 1
		}
	}
	produceTo(t, keyed(t, e, topic, "a", "b")...)
	waitFor(t, 60*time.Second, "b applied", applied("b"))
	// The second batch: c, a again (its event id e-a), d; the third: e twice.
	second := keyed(t, e, topic, "c", "a", "d")
	produceTo(t, second...)
	waitFor(t, 60*time.Second, "d applied", applied("d"))
	produceTo(t, keyed(t, e, topic, "e", "e")...)
	waitFor(t, 60*time.Second, "e applied", applied("e"))
	if got := strings.Join(e.appliedKeys(t), ","); got != "a,b,c,d,e" {
		t.Errorf("applied %s, want a,b,c,d,e", got)
	}
	if p, d, dl := n.processed.Load(), n.duplicate.Load(), n.dead.Load(); p != 5 || d != 2 || dl != 0 {
		t.Errorf("%d processed, %d duplicates, %d dead letters; want 5, 2 (e-a, e-e again) and 0", p, d, dl)
	}
	if f := failures.Load(); f != 0 {
		t.Errorf("%d failures reported, want 0: a redelivery is not a failure", f)
	}
	if k := e.count(t, `SELECT count(*) FROM `+e.table("processed_events")); k != 5 {
		t.Errorf("%d processed_events rows, want 5", k)
	}
}
