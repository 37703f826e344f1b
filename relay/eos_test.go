package relay_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// readCommitted reads topic as a read_committed consumer would.
func readCommitted(t *testing.T, topic string, want int, timeout time.Duration) *seen {
	t.Helper()
	return readBackFrom(t, "", testenv.RegistryURL(t), []string{topic}, want, timeout, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
}

func exact(t *testing.T, got *seen, want int) {
	t.Helper()
	if got.distinct != want || got.duplicates != 0 || got.violations != 0 || got.stale != 0 {
		t.Fatalf("read_committed: distinct %d/%d, duplicates %d, order violations %d, stale after newer %d",
			got.distinct, want, got.duplicates, got.violations, got.stale)
	}
}

func TestRelay_ExactlyOncePublishesEachEventOnceInKeyOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testEnvTopic(t, 6)
	var committed, staged atomic.Int64
	e.relay(t, func(c *relay.Config) {
		c.ExactlyOnce = true
		c.TransactionalIDPrefix = "test-" + e.schema
		c.Hooks.OnTransaction = func(ev relay.TransactionEvent) {
			if ev.Committed {
				committed.Add(1)
			}
		}
		c.Hooks.OnBatch = func(ev relay.BatchEvent) {
			if st := ev.Stages; ev.Published > 0 && st.Read > 0 && st.Produce > 0 && st.Record > 0 && st.Read+st.Build+st.Produce+st.Record <= ev.Duration {
				staged.Add(1)
			}
		}
	})
	e.write(t, topic, 50, 40, 0)
	exact(t, readCommitted(t, topic, 2000, 90*time.Second), 2000)
	waitFor(t, 30*time.Second, "outbox empty", func() bool { p, _ := e.backlog(t); return p == 0 })
	if committed.Load() == 0 {
		t.Fatal("no transaction reported committed")
	}
	if staged.Load() == 0 {
		t.Fatal("no batch reported its time by stage (read, produce, record within its duration)")
	}
}

// The crash window between Kafka's commit and Postgres's delete: the rows a
// committed transaction carried stay in the outbox (their delete fails), the replica
// goes away, and the next owner must not publish them again.
func TestRelay_ExactlyOnceNextOwnerDoesNotRepublishCommittedRows(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testEnvTopic(t, 3)
	prefix := "test-" + e.schema
	ctx := context.Background()
	ob := pgx.Identifier{e.schema, "outbox"}.Sanitize()
	fn := pgx.Identifier{e.schema, "refuse_delete"}.Sanitize()
	if _, err := e.pool.Exec(ctx, `CREATE FUNCTION `+fn+`() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'delete refused by the test'; END $$;
		CREATE TRIGGER refuse BEFORE DELETE ON `+ob+` FOR EACH ROW EXECUTE FUNCTION `+fn+`()`); err != nil {
		t.Fatal(err)
	}
	var committed atomic.Int64
	_, stop, _ := e.relay(t, func(c *relay.Config) {
		c.ExactlyOnce, c.TransactionalIDPrefix, c.ReplicaID = true, prefix, "first"
		c.Hooks.OnTransaction = func(ev relay.TransactionEvent) {
			if ev.Committed {
				committed.Add(int64(ev.Records))
			}
		}
	})
	e.write(t, topic, 20, 10, 0)
	exact(t, readCommitted(t, topic, 200, 60*time.Second), 200)
	if p, _ := e.backlog(t); p != 200 {
		t.Fatalf("%d rows pending, want all 200 (their deletes are refused)", p)
	}
	stop()
	if committed.Load() < 200 {
		t.Fatalf("first replica committed %d records, want at least 200", committed.Load())
	}
	if _, err := e.pool.Exec(ctx, `DROP TRIGGER refuse ON `+ob); err != nil {
		t.Fatal(err)
	}
	e.relay(t, func(c *relay.Config) { c.ExactlyOnce, c.TransactionalIDPrefix, c.ReplicaID = true, prefix, "second" })
	waitFor(t, 60*time.Second, "the next owner to delete the committed rows", func() bool { p, _ := e.backlog(t); return p == 0 })
	// One more event per key (seq 11): the second replica publishes, after the first's
	// records and without repeating them.
	evs := make([]outbox.Event, 0, 20)
	for k := range 20 {
		key := "key-" + strconv.Itoa(k)
		evs = append(evs, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: 11}})
	}
	if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return e.w.Write(ctx, tx, evs...) }); err != nil {
		t.Fatal(err)
	}
	exact(t, readCommitted(t, topic, 220, 60*time.Second), 220)
}

// Two relay processes in exactly-once mode; one is frozen (SIGSTOP) while it holds
// shards and events flow, past its lease, then resumed. A read_committed reader sees
// every event once, in key order, nothing stale; the zombie's transactions fail as
// fenced and its records never become visible.
func TestRelay_ExactlyOnceFrozenReplicaIsFencedAndTopicStaysExact(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testEnvTopic(t, 6)
	eos := []string{"--exactly-once", "--transactional-id-prefix", "test-" + e.schema}
	// r1 lingers 500 ms before each produce, so its transactions stay open most of the
	// time: the SIGSTOP below lands inside one (with group transactions of a few ms, a
	// freeze often caught r1 between them and the zombie had nothing to be fenced on).
	ps := []*proc{e.startRelayProcess(t, "r0", eos...), e.startRelayProcess(t, "r1", append(eos, "--linger", "500ms")...)}
	waitFor(t, 60*time.Second, "two replicas sharing the shards", func() bool { return balanced(e.owners(t), 2) })
	writing := make(chan struct{})
	go func() { defer close(writing); e.writeFlow(t, topic, 200, 60, 150*time.Millisecond) }() // ~9 s of flow
	// Frozen once r1's groups are past their first commits (a producer's start: a
	// freeze between producers finds no transaction to fence).
	waitFor(t, 30*time.Second, "events flowing", func() bool { return published(t, topic) > 5000 })
	if err := ps[1].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "r0 to hold every shard", func() bool { return e.owners(t)["r0"] == 64 })
	if err := ps[1].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	<-writing
	exact(t, readCommitted(t, topic, 12000, 120*time.Second), 12000)
	// The zombie learns it was fenced: its transaction fails, or its fenced writes.
	var fenced, aborted int64
	waitFor(t, 30*time.Second, "the zombie to report a fenced write or aborted transaction", func() bool {
		err := e.pool.QueryRow(context.Background(), `SELECT fenced_writes, aborted_txns FROM `+
			pgx.Identifier{e.schema, "replicas"}.Sanitize()+` WHERE id = 'r1'`).Scan(&fenced, &aborted)
		return err == nil && fenced+aborted > 0
	})
	t.Logf("zombie r1: fenced writes %d, aborted transactions %d", fenced, aborted)
}

// published is the number of records on topic (end offsets summed).
func published(t *testing.T, topic string) int64 {
	t.Helper()
	ends, err := kadm.NewClient(testenv.Client(t)).ListEndOffsets(context.Background(), topic)
	if err != nil {
		return 0
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// Broker kills while events flow, on a broker this test owns: after each restart an
// exactly-once relay publishes again without being restarted, and the read_committed
// topic stays exact.
//
// It runs in `make eos-kills`, not in `make test`: under load (load average 20-40 here)
// about one run in three ends with a batch lost or published twice (issue #14's open
// defect, docs/fault-suite.md), and `make test` must stay green while it is open.
func TestRelay_ExactlyOnceResumesAfterKafkaKills(t *testing.T) {
	if os.Getenv("RELAYBOX_EOS_KILLS") != "1" {
		t.Skip("run by `make eos-kills` (RELAYBOX_EOS_KILLS=1): three broker kills, about 100 s; see docs/fault-suite.md")
	}
	t.Parallel()
	e := newEnv(t)
	kafka, brokers, _ := testenv.OwnKafkaBehindProxy(t)
	e.brokers = []string{brokers}
	topic := "eos-kills"
	cl := testenv.Client(t, kgo.SeedBrokers(brokers))
	if _, err := kadm.NewClient(cl).CreateTopics(context.Background(), 6, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	e.relay(t, func(c *relay.Config) {
		c.ExactlyOnce, c.TransactionalIDPrefix = true, "test-"+e.schema
		c.LeaseTTL, c.MaxBackoff = 4*time.Second, 2*time.Second
	})
	endOffsets := func() int64 {
		ends, err := kadm.NewClient(cl).ListEndOffsets(context.Background(), topic)
		if err != nil {
			return -1
		}
		var n int64
		ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
		return n
	}
	stop := make(chan struct{})
	var written atomic.Int64
	go func() {
		for s := 1; ; s++ {
			select {
			case <-stop:
				return
			default:
			}
			evs := make([]outbox.Event, 0, 40)
			for k := range 40 {
				key := "key-" + strconv.Itoa(k)
				evs = append(evs, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: int64(s)}})
			}
			ctx := context.Background()
			if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return e.w.Write(ctx, tx, evs...) }); err != nil {
				t.Error(err)
				return
			}
			written.Add(40)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	waitFor(t, 60*time.Second, "events flowing", func() bool { return endOffsets() > 200 })
	for i := range 3 {
		kafka.Stop(true)
		time.Sleep(3 * time.Second)
		kafka.Start()
		back := time.Now()
		n0 := endOffsets()
		waitFor(t, 90*time.Second, "publishing to resume after the broker restart", func() bool { return endOffsets() > n0+200 })
		t.Logf("kill %d: publishing again %s after the broker was back", i+1, time.Since(back).Round(time.Millisecond))
	}
	close(stop)
	time.Sleep(200 * time.Millisecond)
	want := int(written.Load())
	last := time.Now()
	waitFor(t, 90*time.Second, "the outbox to empty", func() bool {
		p, _ := e.backlog(t)
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			t.Logf("backlog %d, on the topic %d (incl. aborted), written %d", p, endOffsets(), want)
		}
		return p == 0
	})
	// A broker restarting answers UNKNOWN_TOPIC_OR_PARTITION for partitions it has not
	// loaded: no row may be parked for it (the topic exists all along).
	if _, parked := e.backlog(t); parked > 0 {
		rows, _ := e.admin(t).ParkedList(context.Background(), &relay.ParkedListParams{Limit: 3})
		t.Errorf("%d rows parked while the topic existed, e.g. %+v", parked, rows)
	}
	got := readBackFrom(t, brokers, e.registry, []string{topic}, want, 120*time.Second, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if got.distinct != want {
		// Which events are missing, and whether a read_uncommitted reader sees them (in
		// an aborted or never-ended transaction) or not at all.
		un := readBackFrom(t, brokers, e.registry, []string{topic}, want, 60*time.Second)
		have := map[string]map[int64]bool{}
		for k, seqs := range un.byKey {
			have[k] = map[int64]bool{}
			for _, q := range seqs {
				have[k][q] = true
			}
		}
		var missing []string
		inUncommitted := 0
		for k := range 40 {
			key := "key-" + strconv.Itoa(k)
			got1 := map[int64]bool{}
			for _, q := range got.byKey[key] {
				got1[q] = true
			}
			for q := int64(1); q <= int64(want/40); q++ {
				if !got1[q] {
					if have[key][q] {
						inUncommitted++
					}
					if len(missing) < 20 {
						missing = append(missing, fmt.Sprintf("%s/%d", key, q))
					}
				}
			}
		}
		t.Logf("read_uncommitted: distinct %d; of the missing, %d seen uncommitted; first missing %v", un.distinct, inUncommitted, missing)
		if len(missing) > 0 { // the first record of the first missing key, and its transaction's fate
			key, _, _ := strings.Cut(missing[0], "/")
			for _, rec := range un.records {
				if string(rec.Key) == key {
					dumpPartition(t, brokers, topic, rec.Partition, max(0, rec.Offset-2), rec.Offset+600)
					break
				}
			}
		}
		adm := kadm.NewClient(cl)
		stable, _ := adm.ListCommittedOffsets(context.Background(), topic)
		ends, _ := adm.ListEndOffsets(context.Background(), topic)
		ends.Each(func(o kadm.ListedOffset) {
			s, _ := stable.Lookup(topic, o.Partition)
			t.Logf("partition %d: end %d, last stable %d", o.Partition, o.Offset, s.Offset)
		})
	}
	if got.duplicates > 0 {
		// Where the copies are: side by side (a produce retried inside one transaction)
		// or apart (a batch published twice).
		at := map[string][]string{}
		var dups []string
		seqAt := map[string]int{}
		for _, rec := range got.records {
			id := string(rec.Key) + "#" + header(rec, "relaybox.event_id")
			at[id] = append(at[id], fmt.Sprintf("p%d@%d(%s)", rec.Partition, rec.Offset, rec.Timestamp.Format("15:04:05.000")))
			seqAt[id]++
			if seqAt[id] == 2 && len(dups) < 8 {
				dups = append(dups, id)
			}
		}
		for _, id := range dups {
			t.Logf("duplicate %s at %v", id, at[id])
		}
		// Who wrote the first copy and what ended its transaction: every record and
		// marker of the partition from the first copy to past the second, read
		// uncommitted with control records (producer id, epoch, commit or abort).
		if len(dups) > 0 {
			var p int32
			var from, to int64 = -1, -1
			for _, rec := range got.records {
				if string(rec.Key)+"#"+header(rec, "relaybox.event_id") == dups[0] {
					if from < 0 {
						p, from = rec.Partition, rec.Offset
					}
					to = rec.Offset
				}
			}
			dumpPartition(t, brokers, topic, p, from, to+5)
		}
	}
	exact(t, got, want)
}

// leaseOwners maps each shard to its live owner ("" when free or expired).
func (e *env) leaseOwners(t *testing.T) map[int]string {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT shard, CASE WHEN expires_at > now() THEN coalesce(owner, '') ELSE '' END FROM `+
		pgx.Identifier{e.schema, "shard_leases"}.Sanitize())
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	var shard int
	var owner string
	if _, err := pgx.ForEachRow(rows, []any{&shard, &owner}, func() error { out[shard] = owner; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// In exactly-once mode a group of shards has one transactional id, so it is held
// whole or not at all: two replicas split the groups, never a group; a group found
// held in part is released, and claimed whole once it is free.
func TestRelay_ExactlyOnceLeasesWholeGroups(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	prefix := "test-" + e.schema
	for _, id := range []string{"a", "b"} {
		e.relay(t, func(c *relay.Config) { c.ExactlyOnce, c.TransactionalIDPrefix, c.ReplicaID = true, prefix, id })
	}
	whole := func(o map[int]string) bool {
		for s := range o {
			if o[s] != o[s-s%relay.ExactlyOnceGroupShards] {
				return false
			}
		}
		return true
	}
	waitFor(t, 60*time.Second, "two replicas holding 4 whole groups each", func() bool {
		o := e.leaseOwners(t)
		n := map[string]int{}
		for _, id := range o {
			n[id]++
		}
		return n["a"] == 32 && n["b"] == 32 && whole(o)
	})
	// One shard of a's first group passes to a replica that does not exist (as a
	// manual change would): a releases the rest of that group and keeps its others.
	o := e.leaseOwners(t)
	first := -1
	for s := 0; s < 64; s += relay.ExactlyOnceGroupShards {
		if o[s] == "a" {
			first = s
			break
		}
	}
	leases := pgx.Identifier{e.schema, "shard_leases"}.Sanitize()
	if _, err := e.pool.Exec(context.Background(), `UPDATE `+leases+` SET owner = 'thief', generation = generation + 1,
		expires_at = now() + interval '1 hour' WHERE shard = $1`, first+3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a to release the rest of the group it holds in part", func() bool {
		o := e.leaseOwners(t)
		for i := range relay.ExactlyOnceGroupShards {
			if i != 3 && o[first+i] != "" {
				return false
			}
		}
		return true
	})
	if _, err := e.pool.Exec(context.Background(), `UPDATE `+leases+` SET expires_at = now() - interval '1 second' WHERE shard = $1`, first+3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the group claimed whole again", func() bool {
		o := e.leaseOwners(t)
		return o[first] != "" && whole(o)
	})
	// And the group publishes: an event on each of its shards comes through.
	topic := testEnvTopic(t, 3)
	e.write(t, topic, 200, 1, 0)
	exact(t, readCommitted(t, topic, 200, 120*time.Second), 200)
}

// dumpPartition logs the records and transaction markers of topic's partition p in
// [from, to): offset, producer id and epoch, and for markers commit or abort.
func dumpPartition(t *testing.T, brokers, topic string, p int32, from, to int64) {
	cl := testenv.Client(t, kgo.SeedBrokers(brokers), kgo.KeepControlRecords(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {p: kgo.NewOffset().At(from)}}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var lines []string
	run := ""
	flush := func() {
		if run != "" {
			lines = append(lines, run)
			run = ""
		}
	}
	var lastKey string
	var runFrom int64
	for done := false; !done && ctx.Err() == nil; {
		cl.PollFetches(ctx).EachRecord(func(rec *kgo.Record) {
			if rec.Offset >= to {
				done = true
				return
			}
			if rec.Attrs.IsControl() {
				flush()
				kind := "abort"
				if len(rec.Key) >= 4 && rec.Key[3] == 1 {
					kind = "commit"
				}
				lines = append(lines, fmt.Sprintf("@%d %s pid %d epoch %d", rec.Offset, kind, rec.ProducerID, rec.ProducerEpoch))
				lastKey = ""
				return
			}
			k := fmt.Sprintf("pid %d epoch %d", rec.ProducerID, rec.ProducerEpoch)
			if k != lastKey {
				flush()
				lastKey, runFrom = k, rec.Offset
			}
			run = fmt.Sprintf("@%d-%d records %s (%s)", runFrom, rec.Offset, k, rec.Timestamp.Format("15:04:05.000"))
		})
	}
	flush()
	t.Logf("partition %d from %d to %d:\n%s", p, from, to, strings.Join(lines, "\n"))
}
