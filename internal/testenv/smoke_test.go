package testenv_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
)

// The canaries of the environment: if these fail, nothing else can be trusted.

func TestSmoke_PostgresConnects(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t)
	var v string
	if err := pool.QueryRow(context.Background(), "SHOW wal_level").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != "logical" {
		t.Fatalf("wal_level = %s, want logical", v)
	}
	testenv.Schema(t, pool) // all migrations apply
}

func TestSmoke_KafkaProducesAndConsumesKeyedRecord(t *testing.T) {
	t.Parallel()
	topic := testenv.Topic(t, 3)
	prod := testenv.Client(t, kgo.RequiredAcks(kgo.AllISRAcks()), kgo.DefaultProduceTopic(topic))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := &kgo.Record{Key: []byte("k-1"), Value: []byte("v-1"), Headers: []kgo.RecordHeader{{Key: "h", Value: []byte("x")}}}
	if err := prod.ProduceSync(ctx, r).FirstErr(); err != nil {
		t.Fatal(err)
	}
	cons := testenv.Client(t, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	fs := cons.PollFetches(ctx)
	if err := fs.Err(); err != nil {
		t.Fatal(err)
	}
	recs := fs.Records()
	if len(recs) != 1 || string(recs[0].Key) != "k-1" || string(recs[0].Value) != "v-1" || recs[0].Partition != r.Partition {
		t.Fatalf("consumed %+v", recs)
	}
	if recs[0].ProducerID < 0 {
		t.Fatalf("record not from an idempotent producer: %+v", recs[0])
	}
}

func TestSmoke_RegistryEnforcesBackwardCompatibility(t *testing.T) {
	t.Parallel()
	c := registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute})
	ctx := context.Background()
	subject := testenv.Name(t, "s") + "-value"
	if err := c.SetCompatibility(ctx, subject, "BACKWARD"); err != nil {
		t.Fatal(err)
	}
	v1 := `{"type":"record","name":"Smoke","fields":[{"name":"a","type":"string"}]}`
	id, err := c.ID(ctx, subject, v1, true)
	if err != nil {
		t.Fatal(err)
	}
	fresh := registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}) // no cache
	if got, err := fresh.ID(ctx, subject, v1, false); err != nil || got != id {
		t.Fatalf("lookup = %d %v, want %d", got, err, id)
	}
	if s, err := fresh.Schema(ctx, id); err != nil || s.Fingerprint() == [32]byte{} {
		t.Fatalf("schema by id: %v", err)
	}
	breaking := `{"type":"record","name":"Smoke","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"}]}`
	_, err = c.ID(ctx, subject, breaking, true)
	if !registry.IsIncompatible(err) {
		t.Fatalf("breaking schema: err = %v, want incompatible", err)
	}
	compatible := `{"type":"record","name":"Smoke","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}`
	if id2, err := c.ID(ctx, subject, compatible, true); err != nil || id2 == id {
		t.Fatalf("compatible schema: %d %v", id2, err)
	}
	if _, err := fresh.ID(ctx, testenv.Name(t, "missing")+"-value", v1, false); !registry.IsNotFound(err) {
		t.Fatalf("unknown subject: %v", err)
	}
}

func TestRegistry_UnreachableIsUnavailable(t *testing.T) {
	c := registry.New("http://127.0.0.1:1", registry.Options{Timeout: time.Second})
	err := c.Check(context.Background())
	if !errors.Is(err, registry.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}
