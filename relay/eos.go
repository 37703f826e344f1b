package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/relaybox/relaybox/outbox"
)

// Exactly-once mode (Config.ExactlyOnce).
//
// Shards are leased and drained in groups of ExactlyOnceGroupShards (see the Groups
// section below). Each group has its own transactional id, <prefix>-g<group>, and so
// its own Kafka client (franz-go allows one transactional id, and one open
// transaction, per client), run by the group's first shard. When a replica starts
// draining a group it first initialises the producer id: Kafka bumps the id's epoch,
// which fences the previous owner's producer (its open transaction is aborted, its
// later produce or commit fails). Only then does it read the group's state.
//
// Every batch is one transaction holding the batch's records (of any shard of the
// group) and one record on the commit log topic (compacted; the partition of the
// group's first shard) listing the outbox ids the transaction carried, plus any ids
// committed before and not yet deleted from the outbox. After the commit the rows are
// deleted (fenced by the lease generations). A crash between Kafka's commit and
// Postgres's delete therefore cannot republish: the next owner reads the group's last
// committed commit-log record (read_committed) and deletes those rows before it
// drains. The ids are carried, not a high-water mark: outbox ids are not commit order.
//
// A transaction that fails in any way is aborted (or its outcome is unknown): the
// group's client is closed and the next batch starts with a new one, which reads the
// commit log again, so a commit whose answer was lost is not published twice.

// errCommitLogPartitions: the commit log topic exists with fewer than 64 partitions.
var errCommitLogPartitions = errors.New("needs 64 (one per shard)")

// errTxnAborted marks the records of an aborted transaction: they are retried.
var errTxnAborted = errors.New("kafka transaction aborted")

// errCommitToVerify: a commit Kafka acknowledged whose commit log record did not
// become visible in time is confirmed by the group's next producer (its commit log
// read) before its rows are deleted. Not a failure.
var errCommitToVerify = errors.New("commit to be confirmed by the commit log")

// A commit Kafka acknowledged is trusted, and its rows deleted, only once the group's
// commit log partition's last stable offset has passed the transaction's commit log
// record: the coordinator has then written the transaction's markers. The
// acknowledgement alone is not enough: the fault suite and the broker-kill test found
// commits acknowledged right before a broker kill that the restarted coordinator no
// longer knew (their records stayed open until the group's next producer ended them
// as hanging, aborted): their rows, deleted on the acknowledgement, were lost (757
// events in one exactly-once fault run). Until the last stable offset passes the
// record, the transaction is open or lost; once it passes, it ended, and it ended
// as a commit: after an acknowledged commit the coordinator writes commit markers
// only, and an abort by another producer of the group (a new owner's
// InitProducerID) comes after that owner's claim, which fences this replica's
// delete. A record not visible within commitConfirmWait is left to the next
// producer: the client is closed, and the next one's commit log read (after its
// InitProducerID, which completes or aborts what the coordinator holds) deletes the
// rows if the transaction committed; else they are published again.
//
// commitConfirmWait bounds that wait (also by the batch's lease).
const commitConfirmWait = 2 * time.Second

// eosMeta is resolved at Run: the transactional id prefix and the commit log topic.
type eosMeta struct {
	prefix, topic string
}

// shardTxn is a shard's transactional producer.
type shardTxn struct {
	cl        *kgo.Client
	pending   []int64      // committed to Kafka, not yet deleted from the outbox
	openSince atomic.Int64 // unix nanos of the open transaction's start, 0 if none
	// checked: the topics (and "" for the group's commit log partition) searched for
	// hanging transactions of this client's producer id (see endHanging).
	checked map[string]bool
}

// mode is this replica's mode (the metrics' label).
func (r *Relay) mode() string {
	if r.cfg.ExactlyOnce {
		return ModeExactlyOnce
	}
	return ModeAtLeastOnce
}

// storedMode is this replica's mode as the replicas table and status show it: in
// exactly-once mode with the group size ("exactly-once/16"). Replicas whose stored
// modes differ do not share the shards (heartbeat): releases grouping by 8 stored
// "exactly-once", and see this as another mode as well.
func (r *Relay) storedMode() string {
	if r.cfg.ExactlyOnce {
		return ModeExactlyOnce + "/" + strconv.Itoa(ExactlyOnceGroupShards)
	}
	return ModeAtLeastOnce
}

// txnID is the transactional id of shard's group: <prefix>-g<group>of<groups>,
// never one of the legacy groups' <prefix>-g<group>.
func (r *Relay) txnID(shard int) string {
	return r.txnMeta.prefix + "-g" + strconv.Itoa(groupOf(shard)) + "of" + strconv.Itoa(outbox.Shards/ExactlyOnceGroupShards)
}

// endLegacy ends, once per process and group, what releases grouping shards by
// legacyGroupShards left on shard's group's shards. It initialises their
// transactional ids: InitProducerID bumps the epoch, which aborts a transaction such
// a replica (a zombie frozen across the upgrade) still has open and fails its later
// produce or commit (its Postgres writes are fenced by the leases). Then it deletes
// the rows their last commits listed on the commit log partitions of their first
// shards; the group's own partition (its first legacy group's) is read by initTxn.
func (r *Relay) endLegacy(ctx context.Context, shard int, shards []int, gens []int64) error {
	g := groupOf(shard)
	r.commitLogMu.Lock()
	done := r.legacyDone[g]
	r.commitLogMu.Unlock()
	if done {
		return nil
	}
	var ids []int64
	for s := g * ExactlyOnceGroupShards; s < (g+1)*ExactlyOnceGroupShards; s += legacyGroupShards {
		cl, err := kgo.NewClient(append(slices.Clone(r.kopts),
			kgo.TransactionalID(r.txnMeta.prefix+"-g"+strconv.Itoa(s/legacyGroupShards)),
			kgo.TransactionTimeout(2*r.cfg.LeaseTTL))...)
		if err != nil {
			return err
		}
		_, _, err = cl.ProducerID(ctx)
		cl.Close()
		if err != nil {
			return fmt.Errorf("fencing the transactional id of legacy group %d: %w", s/legacyGroupShards, err)
		}
		if s == shard {
			continue
		}
		got, err := r.readCommitLog(ctx, s)
		if err != nil {
			return fmt.Errorf("reading the commit log of legacy group %d: %w", s/legacyGroupShards, err)
		}
		ids = append(ids, got...)
	}
	if len(ids) > 0 {
		if err := r.record(&batch{shards: shards, gens: gens}, ids); err != nil {
			return err
		}
		r.log.Info("exactly-once: rows of legacy groups' last committed transactions removed", "group", g, "rows", len(ids))
	}
	r.commitLogMu.Lock()
	if r.legacyDone == nil {
		r.legacyDone = map[int]bool{}
	}
	r.legacyDone[g] = true
	r.commitLogMu.Unlock()
	return nil
}

// txnOpenSince is the start of the oldest open transaction, or nil.
func (r *Relay) txnOpenSince() *time.Time {
	if !r.cfg.ExactlyOnce {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var oldest int64
	for _, m := range []map[int]*shardRun{r.shards, r.retired} {
		for _, s := range m {
			if t := s.txnRef(); t != nil {
				if v := t.openSince.Load(); v != 0 && (oldest == 0 || v < oldest) {
					oldest = v
				}
			}
		}
	}
	if oldest == 0 {
		return nil
	}
	t := time.Unix(0, oldest)
	return &t
}

var txnMu sync.Mutex // guards shardRun.txn between a drain and closeTxnClients

func (s *shardRun) txnRef() *shardTxn {
	txnMu.Lock()
	defer txnMu.Unlock()
	return s.txn
}

func (s *shardRun) setTxn(t *shardTxn) {
	txnMu.Lock()
	s.txn = t
	txnMu.Unlock()
}

// resolveExactlyOnce resolves the transactional id prefix (from Postgres's system
// identifier unless configured) and the commit log topic's name.
func (r *Relay) resolveExactlyOnce(ctx context.Context) error {
	prefix := r.cfg.TransactionalIDPrefix
	if prefix == "" {
		var sysid int64
		if err := r.pool.QueryRow(ctx, `SELECT system_identifier FROM pg_control_system()`).Scan(&sysid); err != nil {
			return fmt.Errorf("relay: exactly-once: reading the database's system identifier for the transactional id prefix "+
				"(set Config.TransactionalIDPrefix / --transactional-id-prefix instead): %w", err)
		}
		prefix = fmt.Sprintf("relaybox-%d-%s", sysid, r.cfg.Schema)
	}
	topic := r.cfg.CommitLogTopic
	if topic == "" {
		topic = topicSafe(prefix) + ".commits"
	}
	r.txnMeta = eosMeta{prefix: prefix, topic: topic}
	r.log.Info("exactly-once mode", "transactional_id_prefix", prefix, "commit_log_topic", topic)
	return nil
}

// ensureCommitLog makes sure the commit log topic exists with a partition per shard,
// once: at start if Kafka answers, else before the first group's producer starts.
func (r *Relay) ensureCommitLog(ctx context.Context) error {
	r.commitLogMu.Lock()
	defer r.commitLogMu.Unlock()
	if r.commitLogOK {
		return nil
	}
	topic := r.txnMeta.topic
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := r.adm.CreateTopic(cctx, 64, -1, map[string]*string{"cleanup.policy": strPtr("compact")}, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("relay: exactly-once: creating the commit log topic %q: %w", topic, err)
	}
	// A topic just created may not be in the metadata yet: ask until it is.
	for {
		td, err := r.adm.ListTopics(cctx, topic)
		if err == nil {
			err = td[topic].Err
		}
		n := len(td[topic].Partitions)
		if err == nil && n >= 64 {
			break
		}
		if err == nil && n > 0 {
			err := fmt.Errorf("relay: exactly-once: the commit log topic %q has %d partitions: %w", topic, n, errCommitLogPartitions)
			r.log.Error("exactly-once: configuration error", "err", err)
			return err
		}
		if cctx.Err() != nil {
			return fmt.Errorf("relay: exactly-once: describing the commit log topic %q: %w", topic, errors.Join(err, cctx.Err()))
		}
		sleep(cctx, 200*time.Millisecond)
	}
	r.commitLogOK = true
	return nil
}

func strPtr(s string) *string { return &s }

// topicSafe replaces the characters Kafka refuses in topic names.
func topicSafe(s string) string {
	return strings.Map(func(c rune) rune {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
			return c
		}
		return '_'
	}, s)
}

// logPartitioner sends commit log records to the partition they name (the shard) and
// every other record where the default partitioner (the at-least-once mode's) would.
type logPartitioner struct {
	topic string
	def   kgo.Partitioner
}

func (p logPartitioner) ForTopic(t string) kgo.TopicPartitioner {
	if t == p.topic {
		return kgo.ManualPartitioner().ForTopic(t)
	}
	return p.def.ForTopic(t)
}

// startTxn gives s its transactional producer before its first batch, retrying
// while the lease holds. It returns false if the drain should stop.
func (r *Relay) startTxn(s *shardRun) bool {
	for attempt := 1; ; attempt++ {
		group := r.group(s)
		if group == nil {
			r.log.Warn("exactly-once: the shard's group is not held whole; its drain stops", "shard", s.shard)
			return false
		}
		shards, gens := make([]int, len(group)), make([]int64, len(group))
		for i, g := range group {
			shards[i], gens[i] = g.shard, g.gen
		}
		if !time.Now().Before(groupDeadline(group)) {
			r.log.Warn("lease not renewed in time; shard drain stops until it is", "shard", s.shard)
			return false
		}
		ctx, cancel := leaseContext(group) // see drainLoop
		for _, g := range group {
			g.setBatch(cancel) // a lost lease ends the start
		}
		err := r.initTxn(ctx, s, shards, gens)
		for _, g := range group {
			g.setBatch(nil)
		}
		cancel()
		if err == nil {
			return true
		}
		if errors.Is(err, errFenced) {
			return false
		}
		r.fail(ErrorKafka, fmt.Errorf("exactly-once: starting shard %d's producer: %w", s.shard, err))
		t := time.NewTimer(r.txnBackoff(attempt))
		select {
		case <-s.stop:
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// txnBackoff is the backoff of exactly-once mode's failures, capped at a quarter of the
// lease: a transaction cannot wait for Kafka as an at-least-once produce does (it ends
// with its lease), so a broker that is back must be found again quickly, not after
// MaxBackoff (the fault suite's broker kills left shards asleep through every window
// in which the broker was up).
func (r *Relay) txnBackoff(attempt int) time.Duration {
	return min(r.backoff(attempt), max(r.cfg.LeaseTTL/4, 500*time.Millisecond))
}

// txnRetryBackoff is the transactional clients' retry backoff: 10 ms doubling to 250 ms.
func txnRetryBackoff(tries int) time.Duration {
	return min(10*time.Millisecond<<min(max(tries, 0), 5), 250*time.Millisecond)
}

// initTxn creates s's transactional client, initialises its producer id (fencing
// the previous owner's), then deletes the rows the shard's last committed
// transaction carried.
func (r *Relay) initTxn(ctx context.Context, s *shardRun, shards []int, gens []int64) error {
	if err := r.ensureCommitLog(ctx); err != nil {
		return err
	}
	opts := append(slices.Clone(r.kopts),
		kgo.TransactionalID(r.txnID(s.shard)),
		// Twice the lease: a batch produces within its lease (its deadline is at most
		// LeaseTTL after the renew that preceded the transaction's start), so the commit
		// is asked for before half the timeout has passed and its answer, bounded by
		// another LeaseTTL, arrives before the broker could abort the transaction as
		// timed out. With the timeout equal to the lease, a commit sent near the lease's
		// end raced the broker's timeout abort on a loaded machine. A frozen replica's
		// open transaction is still aborted by the next owner's producer (fencing), or
		// by the broker after 2×LeaseTTL if no one takes the group.
		kgo.TransactionTimeout(2*r.cfg.LeaseTTL),
		// A transaction's first produce right after the previous commit may be refused
		// while the coordinator writes that commit's markers; franz-go's default retry
		// backoff (250 ms doubling to 5 s) then holds the batch for seconds.
		kgo.RetryBackoffFn(txnRetryBackoff),
		// The same holds for CONCURRENT_TRANSACTIONS (the previous transaction's markers
		// still being written): franz-go waits 20 ms by default, growing if it lasts.
		kgo.ConcurrentTransactionsBackoff(5*time.Millisecond),
		kgo.RecordPartitioner(logPartitioner{topic: r.txnMeta.topic, def: kgo.UniformBytesPartitioner(64<<10, true, true, nil)}),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	if _, _, err := cl.ProducerID(ctx); err != nil {
		cl.Close()
		return fmt.Errorf("initialising the producer id: %w", err)
	}
	t := &shardTxn{cl: cl}
	// A hanging transaction of the group's producer on its commit log partition holds
	// the partition's last stable offset back: the read below would stop before the
	// group's last commits, and their rows (kept until a commit is visible, see
	// commitConfirmWait) would be published again. End it first.
	if err := r.endHanging(ctx, s, t, nil); err != nil {
		cl.Close()
		return err
	}
	if err := r.endLegacy(ctx, s.shard, shards, gens); err != nil {
		cl.Close()
		return err
	}
	ids, err := r.readCommitLog(ctx, s.shard)
	if err != nil {
		cl.Close()
		return fmt.Errorf("reading the commit log: %w", err)
	}
	if len(ids) > 0 {
		b := &batch{shards: shards, gens: gens}
		if err := r.record(b, ids); err != nil {
			cl.Close()
			return err
		}
		r.log.Info("exactly-once: rows of the group's last committed transaction removed", "group", groupOf(s.shard), "rows", len(ids), "first_id", ids[0])
	}
	s.setTxn(t)
	r.ok(ErrorKafka)
	return nil
}

// closeTxn closes s's transactional client, if any.
func (r *Relay) closeTxn(s *shardRun) {
	txnMu.Lock()
	t := s.txn
	s.txn = nil
	txnMu.Unlock()
	if t != nil {
		t.cl.Close()
	}
}

// closeTxnClients closes every shard's transactional client (shutdown grace over):
// what waits on them fails.
func (r *Relay) closeTxnClients() {
	r.mu.Lock()
	var ts []*shardTxn
	for _, m := range []map[int]*shardRun{r.shards, r.retired} {
		for _, s := range m {
			if t := s.txnRef(); t != nil {
				ts = append(ts, t)
			}
		}
	}
	r.mu.Unlock()
	for _, t := range ts {
		t.cl.Close()
	}
}

// drainTxn publishes one batch of s's group (shards, under gens) in one Kafka
// transaction.
func (r *Relay) drainTxn(ctx context.Context, s *shardRun, shards []int, gens []int64) (batchResult, error) {
	var res batchResult
	t := s.txnRef()
	if t == nil {
		if err := r.initTxn(ctx, s, shards, gens); err != nil {
			r.fail(ErrorKafka, fmt.Errorf("exactly-once: restarting group %d's producer: %w", groupOf(s.shard), err))
			return res, err
		}
		t = s.txnRef()
	}
	// produceTxn waits for every record's promise: once drainTxn returns, no record
	// built from b.mem is held by Kafka's client.
	b := &batch{shards: shards, gens: gens, mem: r.getMem()}
	defer r.putMem(b.mem)
	st := newStopwatch()
	if len(t.pending) > 0 {
		// Rows committed to Kafka whose delete failed: nothing is read (it would read
		// them again) until they are gone.
		if err := r.record(b, t.pending); err != nil {
			return res, err
		}
		t.pending = nil
	}
	if err := r.readBatch(ctx, b); err != nil {
		return res, err
	}
	res.read = len(b.rows)
	if len(b.rows) == 0 {
		return res, nil
	}
	st.lap(&res.stages.Read)
	r.buildBatch(ctx, b)
	st.lap(&res.stages.Build)
	if ctx.Err() != nil {
		return res, errLeaseDeadline
	}
	var recs []*pending
	for _, p := range b.items {
		if p.rec != nil {
			recs = append(recs, p)
		}
	}
	if len(recs) > 0 {
		if err := r.endHanging(ctx, s, t, recs); err != nil {
			r.fail(ErrorKafka, err)
			r.closeTxn(s)
			return res, err
		}
	}
	var logOff int64
	if len(recs) > 0 {
		var err error
		if logOff, err = r.produceTxn(ctx, s, shards, t, recs); err != nil {
			// Aborted, fenced or unknown: nothing of it counts as published; the
			// client is replaced and the next one reads the commit log.
			r.closeTxn(s)
			for _, p := range recs {
				if p.err == nil {
					p.err = fmt.Errorf("%w: %v", errTxnAborted, err)
				}
			}
			r.decide(ctx, b)
			res, rerr := r.finish(b, res, nil)
			if isFenced(err) || errors.Is(rerr, errFenced) {
				return res, errFenced
			}
			if rerr != nil {
				return res, rerr
			}
			return res, err
		}
	}
	if len(recs) > 0 && !r.commitVisible(ctx, s.shard, logOff) {
		// Confirmed by the next producer's commit log read (initTxn), which deletes the
		// rows if the transaction committed; else they are read and published again.
		// Rows not produced (parked, retried) are recorded now: the log does not list them.
		st.lap(&res.stages.Produce)
		b.keepDone = true
		r.decide(ctx, b)
		res, err := r.finish(b, res, nil)
		st.lap(&res.stages.Record)
		r.closeTxn(s)
		if err != nil {
			return res, err
		}
		return res, errCommitToVerify
	}
	st.lap(&res.stages.Produce)
	r.decide(ctx, b)
	res, err := r.finish(b, res, t.pending)
	st.lap(&res.stages.Record)
	if err != nil && !errors.Is(err, errFenced) {
		t.pending = append(t.pending, b.out.done...) // committed: carried by the next transaction's log record
		return res, err
	}
	t.pending = nil
	return res, err
}

// produceTxn produces recs and the commit log record in one transaction and commits
// it. A nil error means Kafka acknowledged the commit; the offset is the commit log
// record's (see commitVisible).
func (r *Relay) produceTxn(ctx context.Context, s *shardRun, shards []int, t *shardTxn, recs []*pending) (int64, error) {
	start := time.Now()
	if err := t.cl.BeginTransaction(); err != nil {
		return 0, err
	}
	t.openSince.Store(start.UnixNano())
	defer t.openSince.Store(0)
	ids := make([]int64, 0, len(t.pending)+len(recs))
	ids = append(ids, t.pending...)
	for _, p := range recs {
		ids = append(ids, p.row.id)
	}
	var wg sync.WaitGroup
	for _, p := range recs {
		wg.Add(1)
		p := p
		t.cl.Produce(ctx, p.rec, func(_ *kgo.Record, err error) {
			p.err = err
			wg.Done()
		})
	}
	var logErr error
	var logOff int64
	wg.Add(1)
	t.cl.Produce(ctx, &kgo.Record{Topic: r.txnMeta.topic, Partition: int32(s.shard), Key: []byte("group-" + strconv.Itoa(groupOf(s.shard))),
		Value: encodeCommitLog(s.gen, ids)}, func(rec *kgo.Record, err error) {
		logErr, logOff = err, rec.Offset
		wg.Done()
	})
	if r.cfg.Linger <= DefaultLinger {
		// Every record of the transaction is buffered: send them now. The linger
		// batches records across the at-least-once mode's concurrent batches; here it
		// only delays the commit (a longer Linger, set on purpose, still applies).
		t.cl.Flush(ctx)
	}
	wg.Wait()
	produced := time.Since(start)
	err := logErr
	for _, p := range recs {
		if err == nil && p.err != nil {
			err = p.err
		}
	}
	if err == nil && ctx.Err() != nil {
		err = errLeaseDeadline // the lease may be gone: the next owner publishes these
	}
	// Ending the transaction is not bounded by the lease: an abort must reach Kafka,
	// and a commit's answer must be known (if it is lost, the client is replaced and
	// the commit log tells the next one what committed).
	ectx, cancel := context.WithTimeout(context.Background(), r.cfg.LeaseTTL)
	defer cancel()
	commit := err == nil
	if commit {
		r.testPoint("commit")
	}
	endErr := t.cl.EndTransaction(ectx, kgo.TransactionEndTry(commit))
	if endErr != nil {
		// The outcome is unconfirmed (the broker may be gone mid-request): franz-go's
		// documented remedy is an abort retry, which re-initialises the producer id at
		// its current epoch, so that the coordinator ends whatever it still holds open
		// before this client is closed. Closing without it left transactions of the
		// group's producer id open on partitions (the broker-kill test: records of an
		// aborted batch later committed by the group's next commit, or rows deleted
		// whose records were aborted).
		actx, acancel := context.WithTimeout(context.Background(), r.cfg.LeaseTTL)
		if aerr := t.cl.EndTransaction(actx, kgo.TryAbort); aerr != nil {
			r.log.Warn("exactly-once: ending a transaction whose outcome is unknown failed; the group's next producer fences it",
				"group", groupOf(s.shard), "err", aerr)
		}
		acancel()
	}
	ev := TransactionEvent{Shard: s.shard, Shards: shards, Records: len(recs), Committed: commit && endErr == nil,
		Duration: time.Since(start), Produce: produced}
	r.log.Debug("exactly-once: transaction ended", "group", groupOf(s.shard), "records", len(recs), "committed", ev.Committed,
		"produce", produced, "end", ev.Duration-produced, "ids", len(ids), "first_id", ids[0], "err", errors.Join(err, endErr))
	if !ev.Committed {
		if err == nil {
			err = endErr
		}
		ev.Err, ev.Fenced = err, isFenced(err) || isFenced(endErr)
		r.aborted.Add(1)
		if ev.Fenced {
			r.fenced.Add(1)
			r.log.Warn("exactly-once: transaction fenced by the group's next owner; its records are not visible", "group", groupOf(s.shard), "records", len(recs), "err", err)
			if r.cfg.Hooks.OnFenced != nil {
				r.cfg.Hooks.OnFenced(FencedEvent{Shards: shards, Rows: len(recs), Op: "kafka transaction"})
			}
		} else {
			r.log.Warn("exactly-once: transaction aborted; its rows are retried", "group", groupOf(s.shard), "records", len(recs), "err", err)
		}
	}
	if r.cfg.Hooks.OnTransaction != nil {
		r.cfg.Hooks.OnTransaction(ev)
	}
	if !ev.Committed {
		return 0, err
	}
	return logOff, nil
}

// commitVisible reports whether the shard's commit log partition's last stable
// offset passes off (the record of the transaction just committed) within
// commitConfirmWait: the transaction's markers are written (see commitConfirmWait).
func (r *Relay) commitVisible(ctx context.Context, shard int, off int64) bool {
	ctx, cancel := context.WithTimeout(ctx, commitConfirmWait)
	defer cancel()
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		lso, err := r.logOffset(ctx, shard, offsetEnd, true)
		if err == nil && lso > off {
			return true
		}
		if sleep(ctx, wait); ctx.Err() != nil {
			r.log.Warn("exactly-once: a commit Kafka acknowledged is not visible in the commit log yet; the group's next producer confirms it",
				"group", groupOf(shard), "offset", off, "err", errors.Join(err, ctx.Err()))
			return false
		}
	}
}

// endHanging ends the hanging transactions of t's producer id on the partitions
// its next transaction will write: every partition of each topic of recs that t has
// not searched yet, and, once, the group's commit log partition.
//
// A transaction hangs when records of it were appended to a partition but the
// coordinator never writes that partition a marker: the broker-kill test found
// them after a broker was killed while a transaction's produce was in flight and
// the relay aborted it. Such records stay open until a marker of the same producer
// id lands on the partition, and the group's next commit is such a marker: it
// commits the abandoned records with its own, which the relay republishes (each a
// duplicate, and stale behind newer records of its key), and an abort marker
// aborts them (a hanging commit log record then committed lists rows whose records
// were aborted: they are deleted unpublished). So before the first
// transaction of a new producer (whose InitProducerID ended every transaction the
// coordinator knew), any open transaction of the same producer id at an older
// epoch is ended with WriteTxnMarkers (KIP-664, what kafka-transactions.sh abort
// sends; it needs the CLUSTER_ACTION permission: without it the group publishes
// nothing until an operator ends the transaction). It is committed if its commit
// log record committed (a commit the coordinator finished on some partitions only:
// the broker-kill test lost 20 events when such a transaction was aborted, its rows
// already deleted by the commit log read), and aborted otherwise (see logOutcome).
func (r *Relay) endHanging(ctx context.Context, s *shardRun, t *shardTxn, recs []*pending) error {
	pid, epoch, err := t.cl.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("exactly-once: producer id: %w", err)
	}
	set := kadm.TopicsSet{}
	if !t.checked[""] {
		set.Add(r.txnMeta.topic, int32(s.shard))
	}
	for _, p := range recs {
		if _, ok := set[p.rec.Topic]; !ok && !t.checked[p.rec.Topic] {
			set[p.rec.Topic] = map[int32]struct{}{} // every partition
		}
	}
	if len(set) == 0 {
		return nil
	}
	desc, err := r.adm.DescribeProducers(ctx, set)
	if err != nil {
		return fmt.Errorf("exactly-once: describing the producers of the group's partitions: %w", err)
	}
	type open struct {
		epoch int16
		coord int32
	}
	hanging := map[open]kadm.TopicsSet{}
	var perr error
	desc.EachPartition(func(p kadm.DescribedProducersPartition) {
		if p.Err != nil {
			perr = fmt.Errorf("exactly-once: describing the producers of %s/%d: %w", p.Topic, p.Partition, p.Err)
			return
		}
		for _, d := range p.ActiveProducers {
			if d.ProducerID == pid && d.ProducerEpoch < epoch && d.CurrentTxnStartOffset >= 0 {
				k := open{d.ProducerEpoch, d.CoordinatorEpoch}
				ts := hanging[k]
				if ts == nil {
					ts = kadm.TopicsSet{}
				}
				ts.Add(p.Topic, p.Partition)
				hanging[k] = ts
				r.log.Warn("exactly-once: a transaction of the group's producer hangs", "group", groupOf(s.shard),
					"topic", p.Topic, "partition", p.Partition, "producer_id", pid, "epoch", d.ProducerEpoch,
					"current_epoch", epoch, "open_since_offset", d.CurrentTxnStartOffset)
			}
		}
	})
	if perr != nil {
		return perr
	}
	markChecked := func() {
		if t.checked == nil {
			t.checked = map[string]bool{}
		}
		for topic := range set {
			if topic == r.txnMeta.topic {
				topic = ""
			}
			t.checked[topic] = true
		}
	}
	if len(hanging) == 0 {
		markChecked()
		return nil
	}
	markers := make([]kadm.TxnMarkers, 0, len(hanging))
	for k, ts := range hanging {
		// A hanging transaction may be an abort or a commit the coordinator did not
		// finish: the group's commit log says which. Its record there (every
		// transaction writes one) committed means the transaction committed (its rows
		// may already be deleted, as the commit log read allows): its hanging records
		// are committed. Aborted, hanging too, or not found: aborted.
		commit := false
		if _, logHangs := ts[r.txnMeta.topic]; !logHangs {
			commit, err = r.logOutcome(ctx, s.shard, pid, k.epoch)
			if err != nil {
				return fmt.Errorf("exactly-once: reading the outcome of producer id %d epoch %d in the commit log: %w", pid, k.epoch, err)
			}
		}
		r.log.Warn("exactly-once: ending a hanging transaction of the group's producer", "group", groupOf(s.shard),
			"producer_id", pid, "epoch", k.epoch, "commit", commit)
		markers = append(markers, kadm.TxnMarkers{ProducerID: pid, ProducerEpoch: k.epoch, CoordinatorEpoch: k.coord, Commit: commit, Topics: ts})
	}
	resp, err := r.adm.WriteTxnMarkers(ctx, markers...)
	if err == nil {
		resp.EachPartition(func(p kadm.TxnMarkersPartitionResponse) {
			if p.Err != nil && err == nil {
				err = fmt.Errorf("%s/%d: %w", p.Topic, p.Partition, p.Err)
			}
		})
	}
	if err != nil {
		return fmt.Errorf("exactly-once: aborting a hanging transaction of producer id %d (the relay's Kafka user needs CLUSTER_ACTION, "+
			"or abort it with kafka-transactions.sh abort): %w", pid, err)
	}
	markChecked()
	return nil
}

// logOutcome reports whether the commit log record that producer id pid wrote at
// epoch on the group's partition was committed: it reads the partition's last
// records uncommitted, with the transaction markers, and finds that record and the
// first marker of pid after it. No record found, or no marker after it: false.
func (r *Relay) logOutcome(ctx context.Context, shard int, pid int64, epoch int16) (bool, error) {
	end, err := r.logOffset(ctx, shard, offsetEnd, false)
	if err != nil {
		return false, err
	}
	found, committed := false, false
	err = r.scanLog(ctx, shard, max(0, end-256), end, kgo.ReadUncommitted(), 3, func(rec *kgo.Record) bool {
		if rec.ProducerID != pid {
			return false
		}
		switch {
		case !rec.Attrs.IsControl() && rec.ProducerEpoch == epoch:
			found, committed = true, false
		case rec.Attrs.IsControl() && found && len(rec.Key) >= 4:
			committed = rec.Key[3] == 1 // control record key: version, type (0 abort, 1 commit)
			found = false               // decided; a later record of the epoch would start again
			return committed
		}
		return false
	})
	return committed, err
}

// isFenced reports whether err says another producer took the transactional id.
func isFenced(err error) bool {
	return errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) ||
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed) || errors.Is(err, kerr.InvalidProducerIDMapping)
}

// The commit log record's value: version 1, the lease generation, the count, then
// the sorted ids as deltas (uvarints).
func encodeCommitLog(gen int64, ids []int64) []byte {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	b := make([]byte, 0, 16+3*len(ids))
	b = append(b, 1)
	b = binary.AppendVarint(b, gen)
	b = binary.AppendUvarint(b, uint64(len(ids)))
	prev := int64(0)
	for _, id := range ids {
		b = binary.AppendUvarint(b, uint64(id-prev))
		prev = id
	}
	return b
}

func decodeCommitLog(b []byte) (gen int64, ids []int64, err error) {
	bad := errors.New("relay: malformed commit log record")
	if len(b) == 0 || b[0] != 1 {
		return 0, nil, bad
	}
	b = b[1:]
	gen, n := binary.Varint(b)
	if n <= 0 {
		return 0, nil, bad
	}
	b = b[n:]
	count, n := binary.Uvarint(b)
	if n <= 0 || count > uint64(len(b)) {
		return 0, nil, bad
	}
	b = b[n:]
	ids = make([]int64, 0, count)
	prev := int64(0)
	for range count {
		d, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, nil, bad
		}
		b = b[n:]
		prev += int64(d)
		ids = append(ids, prev)
	}
	if len(b) != 0 {
		return 0, nil, bad
	}
	return gen, ids, nil
}

// readCommitLog returns the ids of the shard's last committed commit-log record
// (none if it has none). It reads read_committed, with control records kept, up to
// the partition's last stable offset: the last offset is a transaction marker or a
// committed record, so reading stops there even when no record follows.
func (r *Relay) readCommitLog(ctx context.Context, shard int) ([]int64, error) {
	end, err := r.logOffset(ctx, shard, offsetEnd, true)
	if err != nil {
		return nil, err
	}
	first, err := r.logOffset(ctx, shard, offsetStart, false)
	if err != nil {
		return nil, err
	}
	if end <= first {
		return nil, nil
	}
	window := int64(64)
	for {
		from := max(first, end-window)
		val, found, err := r.readLogRange(ctx, shard, from, end)
		if err != nil {
			return nil, err
		}
		if found {
			_, ids, err := decodeCommitLog(val)
			return ids, err
		}
		if from == first {
			return nil, nil
		}
		window *= 4
	}
}

// Offsets logOffset asks for (ListOffsets timestamps).
const (
	offsetStart = -2 // the log start offset
	offsetEnd   = -1 // the end offset, or at read_committed the last stable offset
)

// logOffset asks the leader of the shard's commit log partition for one offset of
// that partition alone: ts offsetStart or offsetEnd, read_committed if committed.
func (r *Relay) logOffset(ctx context.Context, shard int, ts int64, committed bool) (int64, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	if committed {
		req.IsolationLevel = 1
	}
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = r.txnMeta.topic
	rp := kmsg.NewListOffsetsRequestTopicPartition()
	rp.Partition, rp.Timestamp = int32(shard), ts
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, r.kc)
	if err != nil {
		return 0, err
	}
	if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
		return 0, fmt.Errorf("commit log topic %q: no answer for partition %d", r.txnMeta.topic, shard)
	}
	p := resp.Topics[0].Partitions[0]
	if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
		return 0, fmt.Errorf("commit log topic %q partition %d: %w", r.txnMeta.topic, shard, err)
	}
	return p.Offset, nil
}

// readLogRange reads [from, end) of the shard's commit log partition and returns the
// last committed record's value.
func (r *Relay) readLogRange(ctx context.Context, shard int, from, end int64) ([]byte, bool, error) {
	var last []byte
	found := false
	err := r.scanLog(ctx, shard, from, end, kgo.ReadCommitted(), 0, func(rec *kgo.Record) bool {
		if !rec.Attrs.IsControl() {
			last, found = rec.Value, true
		}
		return false
	})
	return last, found, err
}

// scanLog calls fn, in offset order, for each record and transaction marker of the
// shard's commit log partition in [from, end), read at level, until fn returns true,
// the record at end-1 has been seen, or (maxEmpty > 0) maxEmpty polls in a row
// returned nothing (compaction may leave the last offsets empty).
func (r *Relay) scanLog(ctx context.Context, shard int, from, end int64, level kgo.IsolationLevel, maxEmpty int, fn func(*kgo.Record) bool) error {
	topic := r.txnMeta.topic
	cl, err := kgo.NewClient(append(slices.Clone(r.kopts),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {int32(shard): kgo.NewOffset().At(from)}}),
		kgo.FetchIsolationLevel(level), kgo.KeepControlRecords(), kgo.FetchMaxWait(500*time.Millisecond))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	for empty := 0; maxEmpty == 0 || empty < maxEmpty; {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return ferr
		}
		if fs.NumRecords() == 0 {
			empty++
		}
		done := false
		fs.EachRecord(func(rec *kgo.Record) {
			if done || rec.Offset >= end {
				return
			}
			done = fn(rec) || rec.Offset >= end-1
		})
		if done {
			return nil
		}
	}
	return nil
}

// Groups (exactly-once mode): shards are leased and drained ExactlyOnceGroupShards at a
// time. The group's first shard (its leader) runs the drain and owns the transactional
// producer; the other shards' runs only hold their leases.

// groupOf is the group of shard.
func groupOf(shard int) int { return shard / ExactlyOnceGroupShards }

// isLeader reports whether shard is the first of its group.
func isLeader(shard int) bool { return shard%ExactlyOnceGroupShards == 0 }

// claimLockKey is the advisory lock that serialises exactly-once claims of schema.
func claimLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("relaybox group claim\x00" + schema))
	return int64(h.Sum64())
}

// claimGroups claims up to groups whole groups whose every shard is free, under an
// advisory lock: two claims never split a group between them.
func (r *Relay) claimGroups(ctx context.Context, groups int, collect func(pgx.Rows, error) error) error {
	if groups <= 0 {
		return nil
	}
	return r.lockedLeases(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, r.sql.claimGroups, r.cfg.ReplicaID, groups, interval(r.cfg.LeaseTTL), ExactlyOnceGroupShards)
		return collect(rows, err)
	})
}

// lockedLeases runs fn in a transaction holding the claim lock (exactly-once mode's
// renews and claims).
func (r *Relay) lockedLeases(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		// A replica frozen (SIGSTOP, a long pause) inside this transaction would hold
		// the claim lock, and so every replica's claims and renews, for as long as it
		// stays frozen: Postgres ends the session once it has been idle in the
		// transaction for a lease TTL (its leases are gone by then anyway). (One run of
		// TestRelay_ExactlyOnceFrozenReplicaIsFencedAndTopicStaysExact timed out waiting
		// for the other replica to take every group; 8 later runs, with and without
		// this, did not.)
		if _, err := tx.Exec(ctx, `SELECT set_config('idle_in_transaction_session_timeout', $1, true)`,
			strconv.FormatInt(r.cfg.LeaseTTL.Milliseconds(), 10)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, claimLockKey(r.cfg.Schema)); err != nil {
			return err
		}
		return fn(tx)
	})
}

// dropPartialGroups removes from held, in exactly-once mode, the shards of every group
// this replica holds only in part (a group is drained whole or not at all) and returns
// them, to be released.
func (r *Relay) dropPartialGroups(held map[int]lease) []heldShard {
	if !r.cfg.ExactlyOnce {
		return nil
	}
	count := map[int]int{}
	for s := range held {
		count[groupOf(s)]++
	}
	var out []heldShard
	for s, l := range held {
		if count[groupOf(s)] != ExactlyOnceGroupShards {
			out = append(out, heldShard{shard: s, gen: l.gen})
			delete(held, s)
		}
	}
	if len(out) > 0 {
		r.log.Warn("exactly-once: releasing the shards of groups held only in part", "shards", len(out))
	}
	return out
}

// heldShard is a lease by shard and generation.
type heldShard struct {
	shard int
	gen   int64
}

// releasePartial releases leases dropped by dropPartialGroups (their drains were
// stopped by apply; an outcome write of theirs still in flight is fenced).
func (r *Relay) releasePartial(ctx context.Context, ls []heldShard) {
	for _, l := range ls {
		if _, err := r.pool.Exec(ctx, r.sql.release, l.shard, r.cfg.ReplicaID, l.gen); err != nil {
			r.log.Warn("releasing a shard of a group held in part failed; it expires after the lease TTL", "shard", l.shard, "err", err)
		}
	}
}

// group is the runs of the shards of s's group (s first), each held and not stopped,
// or nil if this replica does not hold the whole group.
func (r *Relay) group(s *shardRun) []*shardRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := make([]*shardRun, 0, ExactlyOnceGroupShards)
	g = append(g, s)
	for i := 1; i < ExactlyOnceGroupShards; i++ {
		o := r.shards[s.shard+i]
		if o == nil || r.releasing[o.shard] {
			return nil
		}
		select {
		case <-o.stop:
			return nil
		default:
		}
		g = append(g, o)
	}
	return g
}
