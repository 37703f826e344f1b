package consumer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
)

// The periodic committer snapshots the partitions, then commits. A partition lost
// in between (its session expired: another member may own it by now) must not be
// committed by that commit: it would rewind the new owner's offsets. The window is
// widened with the afterSnapshot hook, and the loss delivered as franz-go delivers
// it, through the OnPartitionsLost callback.
func TestConsumer_PeriodicCommitNeverCommitsALostPartition(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	topic := testenv.Topic(t, 1)
	group := testenv.Name(t, "g")
	c, err := New(pool, &Config{Group: group, Topics: []string{topic}, Brokers: testenv.Brokers(t),
		RegistryURL: testenv.RegistryURL(t), Schema: schema, Logger: testenv.Logger(t),
		CommitInterval: time.Hour}) // the test runs the periodic commit itself
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Five records of a type without a handler: recorded and skipped, marked done.
	cl := testenv.Client(t, kgo.DefaultProduceTopic(topic))
	for i := range 5 {
		r := &kgo.Record{Value: wire.Frame(1, []byte{0}), Headers: []kgo.RecordHeader{
			{Key: envelope.EventID, Value: []byte(fmt.Sprint("e-", i))}, {Key: envelope.EventType, Value: []byte("Other")}}}
		if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	tp := topicPartition{topic, 0}
	deadline := time.Now().Add(60 * time.Second)
	for {
		c.partsMu.Lock()
		p := c.parts[tp]
		c.partsMu.Unlock()
		if p != nil {
			if eo, ok := p.uncommitted(); ok && eo.Offset == 5 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the 5 records were not processed within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	snapped, release := make(chan struct{}), make(chan struct{})
	c.afterSnapshot = func() { close(snapped); <-release }
	committed := make(chan struct{})
	go func() { c.periodicCommit(context.Background()); close(committed) }()
	<-snapped
	c.lost(context.Background(), c.kc, map[string][]int32{topic: {0}})
	close(release)
	<-committed

	offs, err := kadm.NewClient(cl).FetchOffsets(context.Background(), group)
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := offs.Lookup(topic, 0); ok && o.At >= 0 {
		t.Fatalf("the periodic commit committed offset %d of a partition lost after its snapshot", o.At)
	}
}
