package relay

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
)

// Exactly-once mode: a commit Kafka acknowledged keeps its rows until its commit log
// record is visible (the partition's last stable offset has passed it). Here another
// producer's open transaction on the group's commit log partition holds that offset
// back: the relay's commits are acknowledged again and again, and no row may go
// meanwhile. Before, only a group's first 3 commits after start were confirmed and
// the rows of the next went on the acknowledgement (a fault run lost 757 events to a
// commit acknowledged and then lost by a restarted coordinator).
func TestExactlyOnce_RowsWaitForTheirCommitToBeVisible(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFenceEnv(t)
	prefix := "confirm-" + f.schema
	var shard int
	for seq := int64(1); seq <= 3; seq++ {
		shard = f.writeOne(t, "k", seq)
	}
	// The commit log topic as the relay creates it, and an open transaction on the
	// group's partition.
	logTopic := commitLogTopic(t, prefix)
	holder := testenv.Client(t, kgo.TransactionalID("holder-"+f.schema), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err := holder.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 60*time.Second)
	defer pcancel()
	if err := holder.ProduceSync(pctx, &kgo.Record{Topic: logTopic, Partition: int32(groupOf(shard) * ExactlyOnceGroupShards),
		Key: []byte("holder"), Value: []byte("x")}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	cfg := f.config(t, registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}))
	cfg.ExactlyOnce, cfg.TransactionalIDPrefix = true, prefix
	cfg.LeaseTTL, cfg.HeartbeatInterval = 20*time.Second, 2*time.Second
	var acked atomic.Int64
	cfg.Hooks.OnTransaction = func(e TransactionEvent) {
		if e.Committed {
			acked.Add(1)
		}
	}
	r, err := New(f.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	rows := func() int {
		var n int
		if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{f.schema, "outbox"}.Sanitize()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadline := time.Now().Add(90 * time.Second)
	for acked.Load() < 5 {
		if n := rows(); n != 3 {
			t.Fatalf("%d of 3 rows left after %d acknowledged commits, none of them visible", n, acked.Load())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d commits acknowledged in 90 s, want 5", acked.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := rows(); n != 3 {
		t.Fatalf("%d of 3 rows left after %d acknowledged commits, none of them visible", n, acked.Load())
	}
	// Once the offset moves, the next commit is visible and its rows go.
	if err := holder.EndTransaction(pctx, kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
	for rows() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d rows left 90 s after the start, the commit log's last stable offset free", rows())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// commitLogTopic creates the commit log topic of prefix as the relay would, for this
// test only.
func commitLogTopic(t *testing.T, prefix string) string {
	t.Helper()
	topic := topicSafe(prefix) + ".commits"
	adm := kadm.NewClient(testenv.Client(t))
	if _, err := adm.CreateTopic(context.Background(), 64, -1, map[string]*string{"cleanup.policy": strPtr("compact")}, topic); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = adm.DeleteTopics(context.Background(), topic) })
	return topic
}
