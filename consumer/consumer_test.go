package consumer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

func committedOffset(t *testing.T, group, topic string, partition int32) int64 {
	t.Helper()
	adm := kadm.NewClient(testenv.Client(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	os, err := adm.FetchOffsetsForTopics(ctx, group, topic)
	if err == nil {
		err = os.Error()
	}
	if err != nil {
		t.Fatalf("fetching committed offsets: %v", err)
	}
	o, ok := os.Lookup(topic, partition)
	if !ok {
		return -1
	}
	return o.At
}

func TestConsumer_AppliesAnEventOnceHoweverOftenItIsDelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	same := func() *kgo.Record { return record(t, topic, id, s, "k", "event-1", "Seq", Seq{Key: "k", Seq: 1}) }
	produce(t, same(), same(), same(), same(), same())
	group := testenv.Name(t, "g")

	// A first consumer, in its own process, applies the event and sees the four
	// redeliveries as duplicates; it never commits offsets (CommitInterval 1h) and
	// is killed: the crash between the transaction's commit and the offset commit.
	a := startChild(t, childSpec{schema: e.schema, topic: topic, group: group, name: "A", commitInterval: time.Hour})
	waitFor(t, 60*time.Second, "the child consumer to see the 5 deliveries", func() bool {
		return a.processed.Load()+a.duplicate.Load() >= 5
	})
	a.kill()
	if p, d := a.processed.Load(), a.duplicate.Load(); p != 1 || d != 4 {
		t.Fatalf("first consumer: processed %d, duplicates %d; want 1 and 4", p, d)
	}
	if off := committedOffset(t, group, topic, 0); off >= 0 {
		t.Fatalf("the killed consumer committed offset %d; the test needs it to have committed nothing", off)
	}

	// A second consumer in the same group gets all five again from Kafka.
	var n counters
	cfg := e.config(t, topic)
	cfg.Group, cfg.Hooks = group, n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("B", nil))
	stop := run(t, c)
	waitFor(t, 60*time.Second, "the 5 redeliveries", func() bool { return n.duplicate.Load() >= 5 })
	stop()

	if got := n.processed.Load(); got != 0 {
		t.Errorf("second consumer applied %d events; every delivery was a duplicate", got)
	}
	if got := n.duplicate.Load(); got != 5 {
		t.Errorf("second consumer counted %d duplicates, want 5", got)
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("effects")); got != 1 {
		t.Errorf("effects applied %d times, want exactly once", got)
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("processed_events")+` WHERE consumer_group = $1 AND event_id = 'event-1'`, group); got != 1 {
		t.Errorf("processed_events rows for the event: %d, want 1", got)
	}
	if off := committedOffset(t, group, topic, 0); off != 5 {
		t.Errorf("after a graceful stop the committed offset is %d, want 5 (all processed)", off)
	}
}

func TestConsumer_ExactlyOnceAndKeyOrderWhenAGroupMemberIsKilledMidStream(t *testing.T) {
	t.Parallel()
	const keys, perKey = 200, 50
	const total = keys * perKey
	e := newEnv(t)
	topic := e.topic(t, 6)
	group := testenv.Name(t, "g")

	// Member B runs in this process (batch mode); member A in a child process that
	// never commits offsets and gets killed.
	var n counters
	cfg := e.config(t, topic)
	cfg.Group, cfg.Hooks, cfg.BatchMode = group, n.hooks(), true
	b := e.newConsumer(t, cfg)
	consumer.Handle(b, "Seq", e.applySeq("B", nil))
	stopB := run(t, b)
	a := startChild(t, childSpec{schema: e.schema, topic: topic, group: group, name: "A", commitInterval: time.Hour})
	adm := kadm.NewClient(testenv.Client(t))
	waitFor(t, 60*time.Second, "both members in the group", func() bool {
		gs, err := adm.DescribeGroups(context.Background(), group)
		if err != nil {
			return false
		}
		g := gs[group]
		assigned := 0
		for _, m := range g.Members {
			if ca, ok := m.Assigned.AsConsumer(); ok && len(ca.Topics) > 0 {
				assigned++
			}
		}
		return g.State == "Stable" && assigned == 2
	})

	// The events flow through the outbox and the relay while both consume.
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan error, 1)
	r, err := relay.New(e.pool, &relay.Config{Schema: e.schema, Brokers: e.brokers, RegistryURL: e.registry,
		PollInterval: 100 * time.Millisecond, LeaseTTL: 3 * time.Second, HeartbeatInterval: 500 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	go func() { rdone <- r.Run(rctx) }()
	t.Cleanup(func() { rcancel(); <-rdone })
	w, err := outbox.New(e.pool, &outbox.Config{Schema: e.schema})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for s := 1; s <= perKey; s++ {
		evs := make([]outbox.Event, 0, keys)
		for k := range keys {
			key := "key-" + strconv.Itoa(k)
			evs = append(evs, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: int64(s)}})
		}
		if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return w.Write(ctx, tx, evs...) }); err != nil {
			t.Fatal(err)
		}
	}

	effects := e.table("effects")
	waitFor(t, 60*time.Second, "member A to apply 500 events", func() bool {
		return e.count(t, `SELECT count(*) FROM `+effects+` WHERE consumer = 'A'`) >= 500
	})
	a.kill()

	waitFor(t, 90*time.Second, fmt.Sprintf("all %d events applied", total), func() bool {
		return e.count(t, `SELECT count(DISTINCT event_id) FROM `+effects) >= total
	})
	stopB()
	// Counted now, not at the kill: a COMMIT A sent just before dying may still have
	// been applied by Postgres after the process was gone.
	appliedByA := e.count(t, `SELECT count(*) FROM `+effects+` WHERE consumer = 'A'`)

	if got := e.count(t, `SELECT count(*) FROM `+effects); got != total {
		t.Errorf("effects rows: %d, want exactly %d (one per event)", got, total)
	}
	if got := e.count(t, `SELECT count(DISTINCT (key, seq)) FROM `+effects); got != total {
		t.Errorf("distinct (key, seq) applied: %d, want %d", got, total)
	}
	if d := n.duplicate.Load(); d < int64(appliedByA) {
		t.Errorf("member B saw %d duplicates; A applied %d events without committing an offset, so B must have been redelivered (and skipped) at least those", d, appliedByA)
	}
	rows, err := e.pool.Query(ctx, `SELECT key, seq FROM `+effects+` ORDER BY applied`)
	if err != nil {
		t.Fatal(err)
	}
	last := map[string]int64{}
	violations := 0
	for rows.Next() {
		var key string
		var seq int64
		if err := rows.Scan(&key, &seq); err != nil {
			t.Fatal(err)
		}
		if seq != last[key]+1 {
			if violations++; violations <= 5 {
				t.Errorf("key %s: seq %d applied after seq %d", key, seq, last[key])
			}
		}
		last[key] = seq
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if violations > 0 {
		t.Errorf("%d per-key order violations", violations)
	}
	published := int64(0)
	if ends, err := adm.ListEndOffsets(ctx, topic); err == nil {
		ends.Each(func(o kadm.ListedOffset) { published += o.Offset })
	}
	t.Logf("A (killed) applied %d; B applied %d and skipped %d duplicates; records on the topic: %d",
		appliedByA, n.processed.Load(), n.duplicate.Load(), published)
}

func TestConsumer_RetriesDeadLettersAndMovesOn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	seq := func(key string) *kgo.Record {
		return record(t, topic, id, s, key, "e-"+key, "Seq", Seq{Key: key, Seq: 1}, envelope.TraceParent, "00-"+traceID+"-00f067aa0ba902b7-01")
	}
	raw := func(key string, value []byte) *kgo.Record {
		r := seq(key)
		r.Value = value
		return r
	}
	good := seq("truncated").Value
	recs := []*kgo.Record{
		seq("flaky"),  // fails twice, then succeeds
		seq("always"), // fails every time: dead-lettered after MaxAttempts
		raw("garbage", []byte("not avro at all")),                           // bad magic byte
		raw("short", []byte{0, 0, 1}),                                       // truncated header
		raw("unknown-schema", wire.Frame(2_000_000_000, []byte{2, 'x', 2})), // schema id unknown to the registry
		raw("truncated", good[:wire.HeaderLen+3]),                           // body cut short
		seq("permanent"), // handler says: don't retry
		seq("good"),      // applied: the partition moved on
	}
	produce(t, recs...)

	var n counters
	var flakyCalls atomic.Int32
	var gotTrace atomic.Value
	cfg := e.config(t, topic)
	cfg.MaxAttempts, cfg.Hooks = 3, n.hooks()
	var maxLag, lastLag, lagCalls atomic.Int64
	cfg.Hooks.OnLag = func(e consumer.LagEvent) {
		defer lagCalls.Add(1)
		lastLag.Store(e.Lag)
		if e.Lag > maxLag.Load() {
			maxLag.Store(e.Lag)
		}
	}
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", func(ctx context.Context, ev consumer.Event[Seq]) error {
		switch ev.Key {
		case "flaky":
			gotTrace.Store(trace.SpanContextFromContext(ctx).TraceID().String())
			if flakyCalls.Add(1) <= 2 {
				return errors.New("flaky failure")
			}
		case "always":
			return errors.New("boom")
		case "permanent":
			return consumer.Permanent(errors.New("order does not exist"))
		}
		return nil
	}))
	run(t, c)
	waitFor(t, 60*time.Second, "the last record applied", func() bool {
		return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'good'`) == 1
	})

	waitFor(t, 10*time.Second, "a lag report per record", func() bool { return lagCalls.Load() == int64(len(recs)) })
	if maxLag.Load() == 0 || lastLag.Load() != 0 {
		t.Errorf("lag reports: max %d, last %d; want a positive lag while behind and 0 at the end", maxLag.Load(), lastLag.Load())
	}
	if got := flakyCalls.Load(); got != 3 {
		t.Errorf("flaky handler called %d times, want 3", got)
	}
	if got := gotTrace.Load(); got != traceID {
		t.Errorf("handler context trace id %v, want %s from the traceparent header", got, traceID)
	}
	var applied []string
	rows, _ := e.pool.Query(context.Background(), `SELECT key FROM `+e.table("effects")+` ORDER BY applied`)
	applied, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(applied, ",") != "flaky,good" {
		t.Errorf("applied %v, want [flaky good]", applied)
	}
	if got := n.retry.Load(); got != 4 {
		t.Errorf("retries %d, want 4 (flaky 2, always 2)", got)
	}

	dlq := readTopic(t, topic+".dlq", 6, 30*time.Second)
	want := []struct{ key, reason, attempts, errText string }{
		{"always", consumer.ReasonExhausted, "3", "boom"},
		{"garbage", consumer.ReasonMalformed, "0", "magic"},
		{"short", consumer.ReasonMalformed, "0", "shorter"},
		{"unknown-schema", consumer.ReasonUnknownSchema, "0", "2000000000"},
		{"truncated", consumer.ReasonBadBody, "0", "EOF"},
		{"permanent", consumer.ReasonPermanent, "1", "order does not exist"},
	}
	if len(dlq) != len(want) {
		t.Fatalf("%d dead letters, want %d", len(dlq), len(want))
	}
	for i, w := range want {
		d := dlq[i]
		orig := recs[map[string]int{"always": 1, "garbage": 2, "short": 3, "unknown-schema": 4, "truncated": 5, "permanent": 6}[w.key]]
		if string(d.Key) != w.key || !bytes.Equal(d.Value, orig.Value) {
			t.Errorf("dead letter %d: key %q, want %q with the original value", i, d.Key, w.key)
		}
		for k, v := range map[string]string{
			consumer.HeaderDLQReason: w.reason, consumer.HeaderDLQAttempts: w.attempts, consumer.HeaderDLQGroup: cfg.Group,
			consumer.HeaderDLQTopic: topic, consumer.HeaderDLQPartition: "0", consumer.HeaderDLQOffset: strconv.Itoa(1 + i),
			envelope.EventID: "e-" + w.key,
		} {
			if got := header(d, k); got != v {
				t.Errorf("dead letter %s: header %s = %q, want %q", w.key, k, got, v)
			}
		}
		if e := header(d, consumer.HeaderDLQError); !strings.Contains(e, w.errText) {
			t.Errorf("dead letter %s: error header %q lacks %q", w.key, e, w.errText)
		}
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("processed_events")); got != 2 {
		t.Errorf("processed_events has %d rows, want 2: dead letters are not recorded (a redrive must apply them)", got)
	}
	if got := n.dead.Load(); got != 6 {
		t.Errorf("OnDeadLetter called %d times, want 6", got)
	}
	// The hook's event says what the headers say.
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, w := range want {
		var ev *consumer.DeadLetterEvent
		for j := range n.deadEvents {
			if n.deadEvents[j].EventID == "e-"+w.key {
				ev = &n.deadEvents[j]
			}
		}
		switch {
		case ev == nil:
			t.Errorf("OnDeadLetter: no event for e-%s", w.key)
		case ev.Reason != w.reason || strconv.Itoa(ev.Attempts) != w.attempts || ev.Topic != topic || ev.Partition != 0 ||
			ev.Offset != int64(1+i) || ev.DeadLetterTopic != topic+".dlq" || ev.Err == nil || !strings.Contains(ev.Err.Error(), w.errText):
			t.Errorf("OnDeadLetter for e-%s: %+v, want reason %s, attempts %s, %s/0 offset %d, to %s.dlq, an error with %q",
				w.key, *ev, w.reason, w.attempts, topic, 1+i, topic, w.errText)
		}
	}
}

// SeqNote is version 2 of Seq: a field with a default added.
type SeqNote struct {
	Key  string `avro:"key"`
	Seq  int64  `avro:"seq"`
	Note string `avro:"note"`
}

const seqNoteSchema = `{"type":"record","name":"Seq","fields":[{"name":"key","type":"string"},{"name":"seq","type":"long"},{"name":"note","type":"string","default":"n/a"}]}`

func (SeqNote) AvroSchema() string { return seqNoteSchema }

func TestConsumer_ResolvesWriterAndReaderSchemas(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	v1, s1 := e.schemaID(t, topic+"-v1", schemaText[Seq](t))
	v2, s2 := e.schemaID(t, topic+"-v2", seqNoteSchema)
	bad, sBad := e.schemaID(t, topic+"-bad", `{"type":"record","name":"Seq","fields":[{"name":"key","type":"string"},{"name":"seq","type":"string"}]}`)
	produce(t,
		record(t, topic, v2, s2, "a", "e-1", "Old", SeqNote{Key: "a", Seq: 1, Note: "new field"}),  // v2 data, v1 Go type
		record(t, topic, v1, s1, "b", "e-2", "New", Seq{Key: "b", Seq: 2}),                         // v1 data, v2 Go type: default
		record(t, topic, bad, sBad, "c", "e-3", "Old", map[string]any{"key": "c", "seq": "three"}), // not readable as Seq
		record(t, topic, v1, s1, "d", "e-4", "Old", Seq{Key: "d", Seq: 4}),
	)
	var n counters
	var mu sync.Mutex
	var old []Seq
	var newer []SeqNote
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Old", func(_ context.Context, _ pgx.Tx, ev consumer.Event[Seq]) error {
		mu.Lock()
		defer mu.Unlock()
		old = append(old, ev.Value)
		return nil
	})
	consumer.Handle(c, "New", func(_ context.Context, _ pgx.Tx, ev consumer.Event[SeqNote]) error {
		mu.Lock()
		defer mu.Unlock()
		newer = append(newer, ev.Value)
		return nil
	})
	run(t, c)
	waitFor(t, 60*time.Second, "3 events applied, 1 dead-lettered", func() bool { return n.processed.Load() == 3 && n.dead.Load() == 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(old) != 2 || old[0] != (Seq{Key: "a", Seq: 1}) || old[1] != (Seq{Key: "d", Seq: 4}) {
		t.Errorf("v1 handler got %+v, want [{a 1} {d 4}]", old)
	}
	if len(newer) != 1 || newer[0] != (SeqNote{Key: "b", Seq: 2, Note: "n/a"}) {
		t.Errorf("v2 handler got %+v, want [{b 2 n/a}] (the default filled in)", newer)
	}
	dlq := readTopic(t, topic+".dlq", 1, 30*time.Second)
	if r := header(dlq[0], consumer.HeaderDLQReason); r != consumer.ReasonIncompatibleSchema || string(dlq[0].Key) != "c" {
		t.Errorf("dead letter %q with reason %q, want c with %s", dlq[0].Key, r, consumer.ReasonIncompatibleSchema)
	}
}

func TestConsumer_UnknownEventTypeIsSkippedAndRecordedOrDeadLettered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	produce(t,
		record(t, topic, id, s, "x", "e-unknown", "NobodyHandlesThis", Seq{Key: "x", Seq: 1}),
		record(t, topic, id, s, "y", "e-known", "Seq", Seq{Key: "y", Seq: 2}),
	)
	start := func(name string, policy consumer.UnknownPolicy, n *counters) string {
		cfg := e.config(t, topic)
		cfg.UnknownType, cfg.Hooks = policy, n.hooks()
		c := e.newConsumer(t, cfg)
		consumer.Handle(c, "Seq", e.applySeq(name, nil))
		run(t, c)
		return cfg.Group
	}
	var skipN, dlqN counters
	skipGroup := start("skip", consumer.SkipUnknown, &skipN)
	dlqGroup := start("dlq", consumer.DeadLetterUnknown, &dlqN)
	waitFor(t, 60*time.Second, "both groups to apply the known event", func() bool {
		return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE event_id = 'e-known'`) == 2
	})
	pe := e.table("processed_events")
	if got := e.count(t, `SELECT count(*) FROM `+pe+` WHERE consumer_group = $1 AND event_id = 'e-unknown'`, skipGroup); got != 1 {
		t.Errorf("SkipUnknown: the unknown event is recorded %d times in processed_events, want 1", got)
	}
	if got := skipN.skipped.Load(); got != 1 || skipN.dead.Load() != 0 {
		t.Errorf("SkipUnknown: skipped %d, dead-lettered %d; want 1 and 0", got, skipN.dead.Load())
	}
	if got := e.count(t, `SELECT count(*) FROM `+pe+` WHERE consumer_group = $1 AND event_id = 'e-unknown'`, dlqGroup); got != 0 {
		t.Errorf("DeadLetterUnknown: the unknown event is in processed_events (%d rows); dead letters must not be", got)
	}
	dlq := readTopic(t, topic+".dlq", 1, 30*time.Second)
	if len(dlq) != 1 || header(dlq[0], consumer.HeaderDLQGroup) != dlqGroup || header(dlq[0], consumer.HeaderDLQReason) != consumer.ReasonUnknownType {
		t.Errorf("dead letters: %d, first from group %q reason %q; want one from %s with %s", len(dlq),
			header(dlq[0], consumer.HeaderDLQGroup), header(dlq[0], consumer.HeaderDLQReason), dlqGroup, consumer.ReasonUnknownType)
	}
}

func TestConsumer_BatchModeIsolatesAFailingRecordAndKeepsOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"k"}, 20)...)
	var n counters
	var twelve atomic.Int32
	cfg := e.config(t, topic)
	cfg.BatchMode, cfg.MaxAttempts, cfg.Hooks = true, 3, n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", func(_ context.Context, ev consumer.Event[Seq]) error {
		switch {
		case ev.Value.Seq == 7:
			return errors.New("seven always fails")
		case ev.Value.Seq == 12 && twelve.Add(1) == 1:
			return errors.New("twelve fails once")
		}
		return nil
	}))
	run(t, c)
	waitFor(t, 60*time.Second, "19 applied and 1 dead-lettered", func() bool {
		return n.processed.Load() == 19 && n.dead.Load() == 1
	})
	rows, _ := e.pool.Query(context.Background(), `SELECT seq FROM `+e.table("effects")+` ORDER BY applied`)
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	if fmt.Sprint(seqs) != fmt.Sprint(want) {
		t.Errorf("applied %v, want %v (all but 7, once each, in order)", seqs, want)
	}
	// The 20 records were on the topic before the consumer started: one fetch, one
	// batch, so one transaction; the failing records are isolated by savepoints in it.
	txs := e.count(t, `SELECT count(DISTINCT txid) FROM `+e.table("effects"))
	if txs != 1 {
		t.Errorf("the 19 records took %d transactions; batch mode should apply them in 1", txs)
	}
	t.Logf("19 records applied in %d transaction(s)", txs)
	if got := e.count(t, `SELECT count(*) FROM `+e.table("processed_events")+` WHERE event_id = 'k-7'`); got != 0 {
		t.Errorf("the dead-lettered record is in processed_events")
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("processed_events")); got != 19 {
		t.Errorf("processed_events: %d rows, want 19", got)
	}
	dlq := readTopic(t, topic+".dlq", 1, 30*time.Second)
	if header(dlq[0], envelope.EventID) != "k-7" || header(dlq[0], consumer.HeaderDLQAttempts) != "3" {
		t.Errorf("dead letter %s after %s attempts, want k-7 after 3", header(dlq[0], envelope.EventID), header(dlq[0], consumer.HeaderDLQAttempts))
	}
	if got := twelve.Load(); got != 2 {
		t.Errorf("seq 12 ran %d times, want 2 (one failure, one success)", got)
	}
}

func TestConsumer_SlowPartitionDoesNotHoldUpOthers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 2)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	var recs []*kgo.Record
	for i := 1; i <= 50; i++ {
		for p, key := range []string{"slow", "fast"} {
			if p == 0 && i > 5 {
				continue
			}
			r := record(t, topic, id, s, key, fmt.Sprintf("%s-%d", key, i), "Seq", Seq{Key: key, Seq: int64(i)})
			r.Partition = int32(p)
			recs = append(recs, r)
		}
	}
	produceTo(t, recs...)
	release := make(chan struct{})
	var blocked atomic.Bool
	cfg := e.config(t, topic)
	cfg.MaxBufferedPerPartition = 2 // pauses fetching the slow partition
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", func(ctx context.Context, ev consumer.Event[Seq]) error {
		if ev.Partition == 0 {
			blocked.Store(true)
			<-release
		}
		return nil
	}))
	run(t, c)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	waitFor(t, 60*time.Second, "the fast partition's 50 records while the slow one is stuck", func() bool {
		return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'fast'`) == 50
	})
	if !blocked.Load() {
		t.Fatal("the slow partition's handler never ran")
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'slow'`); got != 0 {
		t.Fatalf("slow partition applied %d records while its handler was blocked", got)
	}
	close(release)
	waitFor(t, 30*time.Second, "the slow partition to catch up", func() bool {
		return e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE key = 'slow'`) == 5
	})
}

func TestRedrive_MovesDeadLettersBackAndTheyAreAppliedOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"ok", "bad"}, 2)...) // ok-1 bad-1 ok-2 bad-2
	var broken atomic.Bool
	broken.Store(true)
	handler := e.applySeq("c", func(_ context.Context, ev consumer.Event[Seq]) error {
		if ev.Key == "bad" && broken.Load() {
			return consumer.Permanent(errors.New("downstream rejects it"))
		}
		return nil
	})
	var n counters
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", handler)
	stop := run(t, c)
	waitFor(t, 60*time.Second, "2 applied, 2 dead-lettered", func() bool { return n.processed.Load() == 2 && n.dead.Load() == 2 })
	stop()

	broken.Store(false) // the downstream problem is fixed
	ropts := &consumer.RedriveOptions{Brokers: e.brokers, Group: testenv.Name(t, "r"), Logger: testLogger(t), IdleTimeout: 5 * time.Second}
	ctx := context.Background()
	moved, err := consumer.Redrive(ctx, topic+".dlq", ropts)
	if err != nil || moved != 2 {
		t.Fatalf("Redrive = %d, %v; want 2", moved, err)
	}
	all := readTopic(t, topic, 6, 30*time.Second)
	for _, r := range all[4:] {
		if hasHeaderPrefix(r, consumer.HeaderDLQPrefix) || string(r.Key) != "bad" {
			t.Errorf("redriven record key %q headers %v: want key bad without dead-letter headers", r.Key, r.Headers)
		}
	}
	if got := header(all[4], envelope.EventID) + "," + header(all[5], envelope.EventID); got != "bad-1,bad-2" {
		t.Errorf("redriven event ids %s, want bad-1,bad-2 in order", got)
	}
	if again, err := consumer.Redrive(ctx, topic+".dlq", ropts); err != nil || again != 0 {
		t.Errorf("second Redrive = %d, %v; want 0 (nothing new)", again, err)
	}

	var n2 counters
	cfg.Hooks = n2.hooks()
	c2 := e.newConsumer(t, cfg) // same group, resumes after the dead-lettered originals
	consumer.Handle(c2, "Seq", handler)
	run(t, c2)
	waitFor(t, 60*time.Second, "the redriven events applied", func() bool { return n2.processed.Load() == 2 })
	if got := e.count(t, `SELECT count(*) FROM `+e.table("effects")); got != 4 {
		t.Errorf("effects: %d, want 4 (each event once)", got)
	}
	if got := e.count(t, `SELECT count(DISTINCT event_id) FROM `+e.table("effects")); got != 4 {
		t.Errorf("distinct events applied: %d, want 4", got)
	}
}

func TestConsumer_CleanDeletesOnlyOldRowsOfItsGroupInBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	cfg := e.config(t, topic)
	pe := e.table("processed_events")
	ins := `INSERT INTO ` + pe + ` (consumer_group, event_id, topic, "partition", "offset", processed_at)
		SELECT $1, $2 || g, 't', 0, g, now() - $3::interval FROM generate_series(1, $4) g`
	ctx := context.Background()
	for _, r := range []struct {
		group, prefix, age string
		n                  int
	}{{cfg.Group, "old-", "2 hours", 7}, {cfg.Group, "new-", "1 minute", 2}, {"other", "old-", "2 hours", 3}} {
		if _, err := e.pool.Exec(ctx, ins, r.group, r.prefix, r.age, r.n); err != nil {
			t.Fatal(err)
		}
	}
	c := e.newConsumer(t, cfg)
	deleted, err := c.Clean(ctx, time.Hour, 3)
	if err != nil || deleted != 7 {
		t.Fatalf("Clean = %d, %v; want 7", deleted, err)
	}
	if got := e.count(t, `SELECT count(*) FROM `+pe+` WHERE consumer_group = $1`, cfg.Group); got != 2 {
		t.Errorf("rows left for the group: %d, want the 2 recent ones", got)
	}
	if got := e.count(t, `SELECT count(*) FROM `+pe+` WHERE consumer_group = 'other'`); got != 3 {
		t.Errorf("rows left for another group: %d, want all 3", got)
	}

	// The cleaner in Run does the same on its own.
	if _, err := e.pool.Exec(ctx, ins, cfg.Group, "older-", "3 hours", 5); err != nil {
		t.Fatal(err)
	}
	cfg2 := *cfg
	cfg2.CleanAfter, cfg2.CleanInterval = time.Hour, 100*time.Millisecond
	c2 := e.newConsumer(t, &cfg2)
	run(t, c2)
	waitFor(t, 30*time.Second, "the cleaner to delete the old rows", func() bool {
		return e.count(t, `SELECT count(*) FROM `+pe+` WHERE consumer_group = $1`, cfg.Group) == 2
	})
}

func TestNew_RejectsIncompleteConfigNamingTheField(t *testing.T) {
	t.Parallel()
	base := consumer.Config{Group: "g", Topics: []string{"t"}, Brokers: []string{"localhost:1"}, RegistryURL: "http://localhost:1"}
	for field, mod := range map[string]func(*consumer.Config){
		"Group":           func(c *consumer.Config) { c.Group = "" },
		"Topics":          func(c *consumer.Config) { c.Topics = nil },
		"Brokers":         func(c *consumer.Config) { c.Brokers = nil },
		"RegistryURL":     func(c *consumer.Config) { c.RegistryURL = "" },
		"MaxAttempts":     func(c *consumer.Config) { c.MaxAttempts = -1 },
		"DeadLetterTopic": func(c *consumer.Config) { c.DeadLetterTopic = func(t string) string { return t } },
	} {
		cfg := base
		mod(&cfg)
		_, err := consumer.New(nopPool, &cfg)
		if err == nil || !strings.Contains(err.Error(), "Config."+field) {
			t.Errorf("%s: New error %v, want one naming Config.%s", field, err, field)
		}
	}
}

// nopPool is a pool that is never used (New does not connect).
var nopPool, _ = pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none")

func TestConsumer_DeadLetterProduceFailureBlocksThePartitionInsteadOfDropping(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"bad", "good"}, 1)...)
	var kafkaErrs atomic.Int32
	var n counters
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	cfg.Hooks.OnError = func(e consumer.ErrorEvent) {
		if e.Kind == consumer.ErrorKafka {
			kafkaErrs.Add(1)
		}
	}
	// The dead-letter topic exists but refuses the record (max.message.bytes 64), until
	// an operator raises its limit.
	dlqTopic := topic + ".later"
	adm := kadm.NewClient(testenv.Client(t))
	small, big := "64", "1048588"
	if _, err := adm.CreateTopic(context.Background(), 1, 1, map[string]*string{"max.message.bytes": &small}, dlqTopic); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adm.DeleteTopics(context.Background(), dlqTopic) })
	cfg.DeadLetterTopic = func(t string) string { return t + ".later" }
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", func(_ context.Context, ev consumer.Event[Seq]) error {
		if ev.Key == "bad" {
			return consumer.Permanent(errors.New("rejected"))
		}
		return nil
	}))
	run(t, c)
	// Five failed produces: the partition has waited through four retries of the dead
	// letter (a consumer that dropped it or moved on would have applied "good" by then).
	waitFor(t, 30*time.Second, "five failed dead-letter produces", func() bool { return kafkaErrs.Load() >= 5 })
	if got := e.count(t, `SELECT count(*) FROM `+e.table("effects")); got != 0 || n.dead.Load() != 0 {
		t.Fatalf("with the dead-letter topic refusing the record, %d later records were applied and %d dead-lettered; the partition must wait", got, n.dead.Load())
	}
	if _, err := adm.AlterTopicConfigs(context.Background(), []kadm.AlterConfig{{Name: "max.message.bytes", Value: &big}}, dlqTopic); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the dead letter produced and the next record applied", func() bool {
		return n.dead.Load() == 1 && n.processed.Load() == 1
	})
	if dlq := readTopic(t, topic+".later", 1, 30*time.Second); header(dlq[0], envelope.EventID) != "bad-1" {
		t.Errorf("dead letter %s, want bad-1", header(dlq[0], envelope.EventID))
	}
}

func TestConsumer_RecordWithoutEnvelopeIsRoutedBySchemaNameAndDedupedByOffset(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	bare := record(t, topic, id, s, "k", "", "", Seq{Key: "k", Seq: 1})
	bare.Headers = nil
	produce(t, bare, &kgo.Record{Topic: topic, Key: bare.Key, Value: bare.Value})
	var n counters
	var mu sync.Mutex
	var types, ids []string
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", func(_ context.Context, _ pgx.Tx, ev consumer.Event[Seq]) error {
		mu.Lock()
		defer mu.Unlock()
		types, ids = append(types, ev.Type), append(ids, ev.ID)
		return nil
	})
	run(t, c)
	waitFor(t, 30*time.Second, "both records applied", func() bool { return n.processed.Load() == 2 })
	mu.Lock()
	defer mu.Unlock()
	if want := []string{topic + "/0/0", topic + "/0/1"}; fmt.Sprint(ids) != fmt.Sprint(want) || fmt.Sprint(types) != "[Seq Seq]" {
		t.Errorf("ids %v types %v; want ids %v (topic/partition/offset) and type Seq (the schema's name)", ids, types, want)
	}
}

// Middleware given to Use runs around the handler of every record the consumer
// applies, the first given outermost, and sees the handler's error.
func TestConsumer_MiddlewareWrapsEveryHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"k"}, 3)...)
	var mu sync.Mutex
	var trace []string
	mw := func(name string) consumer.Middleware {
		return func(next consumer.Handler) consumer.Handler {
			return consumer.HandlerFunc(func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
				mu.Lock()
				trace = append(trace, name+">"+m.ID)
				mu.Unlock()
				err := next.Handle(ctx, tx, m)
				mu.Lock()
				trace = append(trace, fmt.Sprintf("%s<%s:%v", name, m.ID, err))
				mu.Unlock()
				return err
			})
		}
	}
	var n counters
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	c := e.newConsumer(t, cfg)
	c.Use(mw("outer"), mw("inner"))
	consumer.Handle(c, "Seq", e.applySeq("mw", func(_ context.Context, ev consumer.Event[Seq]) error {
		if ev.Value.Seq == 2 {
			return consumer.Permanent(errors.New("two"))
		}
		return nil
	}))
	run(t, c)
	waitFor(t, 30*time.Second, "2 applied and 1 dead-lettered", func() bool { return n.processed.Load() == 2 && n.dead.Load() == 1 })
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		"outer>k-1", "inner>k-1", "inner<k-1:<nil>", "outer<k-1:<nil>",
		"outer>k-2", "inner>k-2", "inner<k-2:two", "outer<k-2:two",
		"outer>k-3", "inner>k-3", "inner<k-3:<nil>", "outer<k-3:<nil>",
	}
	if fmt.Sprint(trace) != fmt.Sprint(want) {
		t.Errorf("middleware calls\n%v\nwant\n%v", trace, want)
	}
}

// A hostile event id header (NUL byte, invalid UTF-8, oversized) is dead-lettered as
// malformed; it does not stall the partition on the processed_events insert.
func TestConsumer_HostileEventIDIsDeadLetteredNotRetriedForever(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1) // and its .dlq
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	produce(t,
		record(t, topic, id, s, "k", "bad\x00id", "Seq", Seq{Key: "k", Seq: 1}),
		record(t, topic, id, s, "k", "\xff\xfe", "Seq", Seq{Key: "k", Seq: 2}),
		record(t, topic, id, s, "k", strings.Repeat("x", 600), "Seq", Seq{Key: "k", Seq: 3}),
		// an oversized record of garbage with hostile header values
		&kgo.Record{Topic: topic, Key: []byte("k"), Value: bytes.Repeat([]byte{0xff}, 900<<10),
			Headers: []kgo.RecordHeader{{Key: "relaybox.event_type", Value: []byte("Seq\r\nX-Injected: 1")}, {Key: "", Value: []byte{0}}}},
		record(t, topic, id, s, "k", "good-1", "Seq", Seq{Key: "k", Seq: 4}),
	)
	var n counters
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("hostile", nil))
	run(t, c)
	waitFor(t, 30*time.Second, "4 dead-lettered and the good record applied", func() bool {
		return n.dead.Load() == 4 && n.processed.Load() == 1
	})
	// Dead-lettered as malformed before the handler ran, not retried and given up.
	n.mu.Lock()
	reasons := fmt.Sprint(n.reasons)
	n.mu.Unlock()
	if want := fmt.Sprint([]string{consumer.ReasonMalformed, consumer.ReasonMalformed, consumer.ReasonMalformed, consumer.ReasonMalformed}); reasons != want || n.retry.Load() != 0 {
		t.Errorf("dead-letter reasons %s after %d retries; want %s after none", reasons, n.retry.Load(), want)
	}
	for _, rec := range readTopic(t, topic+".dlq", 4, 30*time.Second) {
		if r, a := header(rec, consumer.HeaderDLQReason), header(rec, consumer.HeaderDLQAttempts); r != consumer.ReasonMalformed || a != "0" {
			t.Errorf("dead letter at offset %s: reason %q after %s attempts, want %q after 0", header(rec, consumer.HeaderDLQOffset), r, a, consumer.ReasonMalformed)
		}
	}
	if got := e.count(t, `SELECT count(*) FROM `+e.table("effects")+` WHERE event_id = 'good-1' AND seq = 4`); got != 1 {
		t.Errorf("the good record applied %d times, want once", got)
	}
}

// A record near the broker's 1 MiB limit that must be dead-lettered: with the
// dead-letter headers it no longer fits a default topic. The consumer creates its
// dead-letter topic with room for it, so the record is kept whole and the partition
// moves on (before, the partition retried the produce forever).
func TestConsumer_NearLimitRecordIsDeadLetteredWhole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 1) // no .dlq: the consumer creates it
	dlq := topic + ".dlq"
	adm := kadm.NewClient(testenv.Client(t))
	t.Cleanup(func() { adm.DeleteTopics(context.Background(), dlq) })
	id, s := e.schemaID(t, topic+"-value", schemaText[Seq](t))
	// Garbage value plus a header: just under the broker's message.max.bytes (1048588
	// for the record batch, with about 100 bytes of batch and record framing).
	big := &kgo.Record{Topic: topic, Key: []byte("k"), Value: bytes.Repeat([]byte{0xfe}, 1047000),
		Headers: []kgo.RecordHeader{{Key: "x-pad", Value: bytes.Repeat([]byte("h"), 1300)}}}
	cl := testenv.Client(t, kgo.ProducerBatchMaxBytes(2<<20), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, big, record(t, topic, id, s, "k", "good-1", "Seq", Seq{Key: "k", Seq: 1})).FirstErr(); err != nil {
		t.Fatalf("producing the near-limit record: %v", err)
	}
	var n counters
	cfg := e.config(t, topic)
	cfg.Hooks = n.hooks()
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("nearlimit", nil))
	run(t, c)
	waitFor(t, 60*time.Second, "the near-limit record dead-lettered and the next one applied", func() bool {
		return n.dead.Load() == 1 && n.processed.Load() == 1
	})
	recs := readTopic(t, dlq, 1, 30*time.Second)
	if len(recs[0].Value) != len(big.Value) || !bytes.Equal(recs[0].Value, big.Value) {
		t.Fatalf("dead-lettered value is %d bytes, want the original %d", len(recs[0].Value), len(big.Value))
	}
	size := len(recs[0].Key) + len(recs[0].Value)
	for _, h := range recs[0].Headers {
		size += len(h.Key) + len(h.Value)
	}
	if size <= 1048588 {
		t.Fatalf("dead-letter record is %d bytes: the test must exceed the default limit to mean anything", size)
	}
}

// The hooks describe each record (topic, partition, offset, event id and type), the
// batches of batch mode and the lag; and when the consumer stops, the partitions it
// gives up (so that metrics drop their lag).
func TestConsumer_HooksDescribeRecordsBatchesLagAndRevokedPartitions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := e.topic(t, 1)
	produce(t, seqRecords(t, e, topic, []string{"k"}, 3)...) // event ids k-1, k-2, k-3

	var mu sync.Mutex
	var applied []consumer.RecordEvent
	batched, lastLag := 0, int64(-1)
	var revoked []consumer.RevokedEvent
	cfg := e.config(t, topic)
	cfg.BatchMode = true
	cfg.Hooks = consumer.Hooks{
		OnProcessed: func(ev consumer.RecordEvent) { mu.Lock(); applied = append(applied, ev); mu.Unlock() },
		OnBatch: func(ev consumer.BatchEvent) {
			mu.Lock()
			if ev.Topic == topic && ev.Partition == 0 {
				batched += ev.Records
			}
			mu.Unlock()
		},
		OnLag:     func(ev consumer.LagEvent) { mu.Lock(); lastLag = ev.Lag; mu.Unlock() },
		OnRevoked: func(ev consumer.RevokedEvent) { mu.Lock(); revoked = append(revoked, ev); mu.Unlock() },
	}
	c := e.newConsumer(t, cfg)
	consumer.Handle(c, "Seq", e.applySeq("c", nil))
	stop := run(t, c)
	waitFor(t, 60*time.Second, "3 records applied", func() bool { mu.Lock(); defer mu.Unlock(); return len(applied) == 3 })
	stop()

	mu.Lock()
	defer mu.Unlock()
	for i, ev := range applied {
		want := consumer.RecordEvent{Topic: topic, Partition: 0, Offset: int64(i), EventID: fmt.Sprintf("k-%d", i+1), EventType: "Seq"}
		if ev != want {
			t.Errorf("OnProcessed %d: %+v, want %+v", i, ev, want)
		}
	}
	if batched != 3 {
		t.Errorf("OnBatch counted %d records, want 3", batched)
	}
	if lastLag != 0 {
		t.Errorf("last OnLag: %d, want 0 (all processed)", lastLag)
	}
	gaveUp := false
	for _, ev := range revoked {
		gaveUp = gaveUp || slices.Contains(ev.Partitions[topic], 0)
	}
	if !gaveUp {
		t.Errorf("OnRevoked: %+v, want %s partition 0 given up at shutdown", revoked, topic)
	}
}
