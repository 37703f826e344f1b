package main

import (
	"context"
	"encoding/binary"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
)

// TestConsumeVariants_ApplyEachEventOnceAndRedeliveriesNever runs every variant of
// the consume scenario in-process over the same events, in the relay's wire format
// (Confluent frame with a registered schema id, the envelope headers): each must
// leave one effect row per event, and the two that dedup (relaybox's batch mode and
// the hand-written consumer), run again after their group is reset, must count every
// event as a duplicate and apply nothing.
func TestConsumeVariants_ApplyEachEventOnceAndRedeliveriesNever(t *testing.T) {
	dbURL, brokers, regURL := testenv.DatabaseURL(t), testenv.Brokers(t), testenv.Var(t, "SCHEMA_REGISTRY_URL")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	tag := strconv.FormatInt(time.Now().UnixNano(), 36)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	kcl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer kcl.Close()
	h := &harness{pool: pool, adm: kadm.NewClient(kcl), cfg: config{Partitions: 3}, logf: t.Logf}
	schema, topic := "bench_consume_test_"+tag, "bench.consume.test."+tag
	if err := h.consumeSchema(ctx, schema); err != nil {
		t.Fatal(err)
	}
	defer h.exec(context.Background(), `DROP SCHEMA `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
	if err := h.createTopic(ctx, topic); err != nil {
		t.Fatal(err)
	}
	defer h.deleteTopic(context.Background(), topic)

	id, err := registry.New(regURL, registry.Options{}).ID(ctx, topic+"-value", benchSchemaText, true)
	if err != nil {
		t.Fatalf("registering the schema: %v", err)
	}
	const n = 600
	es := newEventSpace(50, 256)
	recs := make([]*kgo.Record, n)
	for i := range recs {
		eid := uuid.New()
		ev := es.event(int64(i), eid, time.Now())
		body, err := encodeEvent(&ev)
		if err != nil {
			t.Fatal(err)
		}
		v := binary.BigEndian.AppendUint32([]byte{0}, uint32(id))
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(ev.Key), Value: append(v, body...), Headers: []kgo.RecordHeader{
			{Key: "relaybox.event_id", Value: []byte(eid.String())}, {Key: "relaybox.event_type", Value: []byte("BenchEvent")}}}
	}
	if err := kcl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}

	s := childSettings{Topic: topic, Schema: schema, N: n, Conns: 4, Brokers: brokers, DB: dbURL, Registry: regURL}
	pass := func(variant, group string) *progress {
		t.Helper()
		s.Variant, s.Group = variant, group
		p := newProgress(n)
		if err := runChild(ctx, s, p); err != nil {
			t.Fatalf("%s: %v", variant, err)
		}
		var rows, distinct int64
		if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT event_id) FROM `+effectsTable(schema)).Scan(&rows, &distinct); err != nil {
			t.Fatal(err)
		}
		if rows != n || distinct != n {
			t.Errorf("%s (group %s): %d effect rows, %d distinct; want %d of each", variant, group, rows, distinct, n)
		}
		return p
	}
	for _, v := range []string{variantLimit, variantBatchNoDup, variantSingle, variantBatch, variantHandwritten} {
		if err := h.truncateConsume(ctx, schema, false); err != nil {
			t.Fatal(err)
		}
		group := "bench-consume-test-" + tag + "-" + v
		if p := pass(v, group); p.applied.Load() != n || p.duplicates.Load() != 0 {
			t.Errorf("%s: applied %d, duplicates %d; want %d, 0", v, p.applied.Load(), p.duplicates.Load(), n)
		}
		if v != variantBatch && v != variantHandwritten {
			continue
		}
		if err := h.resetGroup(ctx, group, topic); err != nil {
			t.Fatalf("%s: resetting the group: %v", v, err)
		}
		if p := pass(v, group); p.applied.Load() != 0 || p.duplicates.Load() != n {
			t.Errorf("%s redelivered: applied %d, duplicates %d; want 0, %d", v, p.applied.Load(), p.duplicates.Load(), n)
		}
	}
}
