package relay_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

const (
	seqV1       = `{"type":"record","name":"Seq","fields":[{"name":"key","type":"string"},{"name":"seq","type":"long"},{"name":"pad","type":"string"}]}`
	seqBreaking = `{"type":"record","name":"Seq","fields":[{"name":"key","type":"string"},{"name":"seq","type":"long"},{"name":"pad","type":"string"},{"name":"must","type":"int"}]}`
)

func (e *env) writeOne(t *testing.T, topic, key string, seq int64, pad int, schema string) {
	t.Helper()
	ctx := context.Background()
	var v any = Seq{Key: key, Seq: seq, Pad: strings.Repeat("p", pad)}
	if schema == seqBreaking {
		v = map[string]any{"key": key, "seq": seq, "pad": strings.Repeat("p", pad), "must": 1}
	}
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		return e.w.Write(ctx, tx, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: v, Schema: schema})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// admin is an Admin over e's schema.
func (e *env) admin(t *testing.T) *relay.Admin {
	t.Helper()
	a, err := relay.NewAdmin(e.pool, &relay.AdminConfig{Schema: e.schema})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func waitParked(t *testing.T, e *env, f relay.ParkedFilter, n int) []relay.ParkedEvent {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := e.admin(t).ParkedList(context.Background(), &relay.ParkedListParams{ParkedFilter: f})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("parked %d events, want %d", len(got), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRelay_ParksIncompatibleSchemaBlocksItsKeyOnlyAndRetryPublishesInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 3)
	reg := registry.New(e.registry, registry.Options{Timeout: time.Minute})
	subject := topic + "-value"
	if err := reg.SetCompatibility(context.Background(), subject, "BACKWARD"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.ID(context.Background(), subject, seqV1, true); err != nil {
		t.Fatal(err)
	}
	e.writeOne(t, topic, "bad", 1, 0, "")          // v1: fine
	e.writeOne(t, topic, "bad", 2, 0, seqBreaking) // breaks BACKWARD: parks
	e.writeOne(t, topic, "bad", 3, 0, "")          // waits behind 2
	for s := int64(1); s <= 5; s++ {
		e.writeOne(t, topic, "good", s, 0, "")
	}
	var badReads atomic.Int64 // reads of the shard of key "bad"
	e.relay(t, func(c *relay.Config) {
		c.Hooks.OnRead = func(e relay.ReadEvent) {
			if e.Shard == outbox.Shard("bad") {
				badReads.Add(1)
			}
		}
	})
	got := readBack(t, topic, 6, 30*time.Second)
	parked := waitParked(t, e, relay.ParkedFilter{Reason: relay.ParkIncompatible}, 1)
	if len(parked) != 1 || parked[0].Key != "bad" || parked[0].Reason != relay.ParkIncompatible || parked[0].Detail == "" {
		t.Fatalf("parked = %+v", parked)
	}
	if len(got.byKey["good"]) != 5 || len(got.byKey["bad"]) != 1 {
		t.Fatalf("published %v; want good 1..5 and bad 1 only", got.byKey)
	}
	// The key stays blocked: seq 3 must not overtake 2, however often its shard is read.
	after := badReads.Load()
	waitFor(t, 20*time.Second, "three more reads of the parked key's shard", func() bool { return badReads.Load() >= after+3 })
	ends, err := kadm.NewClient(testenv.Client(t)).ListEndOffsets(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	var onTopic int64
	ends.Each(func(o kadm.ListedOffset) { onTopic += o.Offset })
	if onTopic != 6 {
		t.Fatalf("%d records on the topic after the park, want 6 (good 1..5, bad 1): bad 3 overtook the parked bad 2", onTopic)
	}
	st, err := e.admin(t).Status(context.Background())
	if err != nil || st.Parked != 1 || st.ParkedByReason[relay.ParkIncompatible] != 1 || st.Backlog != 1 {
		t.Fatalf("status %+v %v", st, err)
	}
	// The fix: the subject gets a rule the new schema meets (FORWARD: old readers
	// ignore the added field); Apicurio treats NONE as "no subject rule", so the global
	// BACKWARD rule would still apply. Then retry by key.
	if err := reg.SetCompatibility(context.Background(), subject, "FORWARD"); err != nil {
		t.Fatal(err)
	}
	if n, err := e.admin(t).ParkedRetry(context.Background(), &relay.ParkedFilter{Key: "bad"}); err != nil || n != 1 {
		t.Fatalf("retry: %d %v", n, err)
	}
	got = readBack(t, topic, 8, 30*time.Second)
	if b := got.byKey["bad"]; len(b) != 3 || b[0] != 1 || b[1] != 2 || b[2] != 3 || got.violations != 0 {
		t.Fatalf("after retry bad = %v, violations %d", b, got.violations)
	}
}

func TestRelay_ParksOversizedAndMissingTopicThenRetryAndSkip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 2)
	missing := testenv.Name(t, "missing")
	e.writeOne(t, topic, "big", 1, 5000, "") // over the 4 KiB limit below
	e.writeOne(t, topic, "big", 2, 10, "")
	e.writeOne(t, missing, "lost", 1, 10, "")
	e.writeOne(t, topic, "small", 1, 10, "")
	_, stop, _ := e.relay(t, func(c *relay.Config) { c.MaxRecordBytes = 4096 })
	got := readBack(t, topic, 1, 20*time.Second)
	if len(got.byKey["small"]) != 1 {
		t.Fatalf("small not published: %v", got.byKey)
	}
	big := waitParked(t, e, relay.ParkedFilter{Reason: relay.ParkTooLarge}, 1)
	if big[0].Key != "big" {
		t.Fatalf("parked too large: %+v", big)
	}
	lost := waitParked(t, e, relay.ParkedFilter{Reason: relay.ParkTopicMissing}, 1)
	if lost[0].Key != "lost" || lost[0].Reason != relay.ParkTopicMissing || !strings.Contains(lost[0].Detail, missing) {
		t.Fatalf("parked topic missing: %+v", lost)
	}
	if _, err := e.admin(t).ParkedRetry(context.Background(), &relay.ParkedFilter{}); err == nil {
		t.Fatal("an empty filter must be refused")
	}
	// Fix: a relay with the broker's real limit; the missing topic's event is skipped.
	stop()
	e.relay(t, nil)
	if n, _ := e.admin(t).ParkedSkip(context.Background(), &relay.ParkedFilter{Key: "lost"}); n != 1 {
		t.Fatalf("skip removed %d", n)
	}
	if n, _ := e.admin(t).ParkedRetry(context.Background(), &relay.ParkedFilter{Reason: relay.ParkTooLarge}); n != 1 {
		t.Fatalf("retry unparked %d", n)
	}
	got = readBack(t, topic, 3, 30*time.Second)
	if b := got.byKey["big"]; len(b) != 2 || b[0] != 1 || b[1] != 2 {
		t.Fatalf("big after retry = %v", b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if p, parked := e.backlog(t); p == 0 && parked == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("outbox not empty after retry and skip")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRelay_AutoCreatesMissingTopicWhenConfigured(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Name(t, "auto")
	t.Cleanup(func() { testenv.TopicNamed(t, topic+"-cleanup-probe", 1) })
	e.writeOne(t, topic, "k", 1, 0, "")
	e.relay(t, func(c *relay.Config) { c.AutoCreateTopics = true; c.TopicPartitions = 2 })
	got := readBack(t, topic, 1, 40*time.Second)
	if got.distinct != 1 {
		t.Fatal("event to a missing topic not published with AutoCreateTopics")
	}
	if _, parked := e.backlog(t); parked != 0 {
		t.Fatalf("parked %d with AutoCreateTopics", parked)
	}
}

const seqV2Defaulted = `{"type":"record","name":"Seq","fields":[{"name":"key","type":"string"},{"name":"seq","type":"long"},{"name":"pad","type":"string"},{"name":"note","type":"string","default":"none"}]}`

// A v2 that adds a field with a default is BACKWARD compatible: the stored and
// registered schema text must keep the default, or the registry refuses it.
func TestRelay_PublishesCompatibleSchemaEvolution(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 1)
	reg := registry.New(e.registry, registry.Options{Timeout: time.Minute})
	if err := reg.SetCompatibility(context.Background(), topic+"-value", "BACKWARD"); err != nil {
		t.Fatal(err)
	}
	e.writeOne(t, topic, "k", 1, 0, seqV1)
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		return e.w.Write(ctx, tx, outbox.Event{Topic: topic, Key: "k", Type: "Seq", Schema: seqV2Defaulted,
			Value: map[string]any{"key": "k", "seq": int64(2), "pad": "", "note": "v2"}})
	}); err != nil {
		t.Fatal(err)
	}
	e.relay(t, nil)
	got := readBack(t, topic, 2, 30*time.Second)
	if got.distinct != 2 {
		t.Fatalf("published %d of 2", got.distinct)
	}
	if _, parked := e.backlog(t); parked != 0 {
		t.Fatalf("%d parked", parked)
	}
}

// A plain-SQL writer's header with a non-string value neither fails the shard's read
// nor is dropped: it travels as its JSON text.
func TestRelay_NonStringHeaderFromPlainSQLDoesNotBlockShard(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testenv.Topic(t, 1)
	ctx := context.Background()
	sc := pgx.Identifier{e.schema}.Sanitize()
	if _, err := e.pool.Exec(ctx, `INSERT INTO `+sc+`.schemas VALUES (sha256(convert_to($1, 'UTF8')), $1) ON CONFLICT DO NOTHING`, seqV1); err != nil {
		t.Fatal(err)
	}
	e.writeOne(t, topic, "k", 1, 0, seqV1)
	if _, err := e.pool.Exec(ctx, `UPDATE `+sc+`.outbox SET headers = '{"n": 1, "s": "x"}'`); err != nil {
		t.Fatal(err)
	}
	e.relay(t, nil)
	got := readBack(t, topic, 1, 20*time.Second)
	if got.distinct != 1 || header(got.records[0], "n") != "1" || header(got.records[0], "s") != "x" {
		t.Fatalf("distinct %d headers %v", got.distinct, got.records)
	}
}

// A configured schema name that tries SQL injection is quoted everywhere: migrations,
// writer, relay and status all work inside the oddly named schema.
func TestRelay_HostileSchemaNameIsQuotedEndToEnd(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t)
	schema := `r"; DROP TABLE pg_catalog.pg_class; --` + testenv.Name(t, "")
	ctx := context.Background()
	t.Cleanup(func() { pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE") })
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema}); err != nil {
		t.Fatal(err)
	}
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema, Channel: `c"; NOTIFY x; --`})
	e := &env{pool: pool, schema: schema, w: w, brokers: testenv.Brokers(t), registry: testenv.RegistryURL(t)}
	topic := testenv.Topic(t, 1)
	// The relay polls only every 10 minutes: the event, written once every shard has
	// been read, reaches Kafka within the test only if LISTEN on the hostile channel works.
	e.quietRelay(t, func(c *relay.Config) { c.Channel = `c"; NOTIFY x; --` })
	e.writeOne(t, topic, "k", 1, 0, "")
	if got := readBack(t, topic, 1, 60*time.Second); got.distinct != 1 {
		t.Fatal("event not published from the hostile-named schema within 60s: the NOTIFY on the hostile channel did not wake the relay")
	}
	if _, err := e.admin(t).Status(ctx); err != nil {
		t.Fatal(err)
	}
}
