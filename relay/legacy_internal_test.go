package relay

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
)

// An upgrade from the releases that grouped shards by 8: the group of 16 that now
// holds their shards honours the last commit of the legacy group of its second half
// (its rows were published: they are deleted, not published again) and fences the
// legacy group's transactional id (a replica of that release frozen across the
// upgrade, its transaction open, cannot commit it). Without the legacy read the row
// is published twice; without the fencing the zombie's commit succeeds.
func TestExactlyOnce_UpgradeFromGroupsOf8(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFenceEnv(t)
	prefix := "legacy-" + f.schema
	// A key in the second half of its group of 16: a legacy group of its own.
	var key string
	var shard int
	for i := 0; ; i++ {
		key = "k" + strconv.Itoa(i)
		if shard = f.writeOne(t, key, 1); shard%ExactlyOnceGroupShards >= legacyGroupShards {
			break
		}
		f.exec(t, `DELETE FROM `+pgx.Identifier{f.schema, "outbox"}.Sanitize())
	}
	var id int64
	if err := f.pool.QueryRow(ctx, `SELECT id FROM `+pgx.Identifier{f.schema, "outbox"}.Sanitize()).Scan(&id); err != nil {
		t.Fatal(err)
	}
	logTopic := commitLogTopic(t, prefix)
	legacy := shard / legacyGroupShards
	zombie := testenv.Client(t, kgo.TransactionalID(prefix+"-g"+strconv.Itoa(legacy)), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	pctx, pcancel := context.WithTimeout(ctx, 60*time.Second)
	defer pcancel()
	// The legacy group's last commit: the row's record (not written here: the topic
	// is checked for duplicates below) and its commit log record.
	if err := zombie.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := zombie.ProduceSync(pctx, &kgo.Record{Topic: logTopic, Partition: int32(legacy * legacyGroupShards),
		Key: []byte("group-" + strconv.Itoa(legacy)), Value: encodeCommitLog(1, []int64{id})}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := zombie.EndTransaction(pctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	// Then it froze inside its next transaction, holding a stale record.
	if err := zombie.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := zombie.ProduceSync(pctx, &kgo.Record{Topic: f.topic, Partition: 0, Key: []byte(key), Value: []byte("stale")}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	cfg := f.config(t, registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}))
	cfg.ExactlyOnce, cfg.TransactionalIDPrefix = true, prefix
	r, err := New(f.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	// A newer event of the key: the relay publishes it once its group runs.
	f.writeOne(t, key, 2)
	waitFor(t, 60*time.Second, "the outbox to be empty", func() bool {
		var n int
		return f.pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{f.schema, "outbox"}.Sanitize()).Scan(&n) == nil && n == 0
	})
	if err := zombie.EndTransaction(pctx, kgo.TryCommit); err == nil {
		t.Fatal("the legacy group's zombie committed its open transaction after the upgrade: want it fenced")
	}
	cl := testenv.Client(t, kgo.ConsumeTopics(f.topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	var got []string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(fctx)
		fcancel()
		fs.EachRecord(func(rec *kgo.Record) { got = append(got, string(rec.Key)+"@"+strconv.FormatInt(rec.Offset, 10)) })
		if len(got) > 0 && fs.NumRecords() == 0 {
			break
		}
	}
	if len(got) != 1 {
		t.Fatalf("records on the topic (read_committed): %v; want only the newer event: the legacy commit's row published again, or the zombie's record visible", got)
	}
}

// A live replica of a release that grouped shards by 8 (it stores its mode as plain
// "exactly-once") and a replica grouping by 16 never share the shards: the new one
// claims nothing until the old one is gone. Without the group size in the stored
// mode, both would claim groups of their own size from the same shards' leases.
func TestExactlyOnce_NoClaimsWhileALegacyReplicaIsLive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFenceEnv(t)
	replicas := pgx.Identifier{f.schema, "replicas"}.Sanitize()
	f.exec(t, `INSERT INTO `+replicas+` (id, hostname, expires_at, mode) VALUES ('old', 'h', now() + interval '1 hour', $1)`, ModeExactlyOnce)
	cfg := f.config(t, registry.New(testenv.RegistryURL(t), registry.Options{Timeout: time.Minute}))
	cfg.ExactlyOnce, cfg.TransactionalIDPrefix = true, "nolegacy-"+f.schema
	r, err := New(f.pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	held := func() int {
		var n int
		if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM `+f.leases+` WHERE owner = 'me' AND expires_at > now()`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var mode string
	waitFor(t, 20*time.Second, "the replica's heartbeat", func() bool {
		return f.pool.QueryRow(ctx, `SELECT mode FROM `+replicas+` WHERE id = 'me'`).Scan(&mode) == nil
	})
	if want := ModeExactlyOnce + "/" + strconv.Itoa(ExactlyOnceGroupShards); mode != want {
		t.Fatalf("stored mode %q, want %q", mode, want)
	}
	time.Sleep(3 * time.Second) // 10 heartbeats
	if n := held(); n != 0 {
		t.Fatalf("%d shards claimed while a replica grouping shards by %d is live", n, legacyGroupShards)
	}
	f.exec(t, `DELETE FROM `+replicas+` WHERE id = 'old'`)
	waitFor(t, 30*time.Second, "every shard claimed once the legacy replica is gone", func() bool { return held() == 64 })
}
