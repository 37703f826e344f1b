package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/relaysql"
)

// A batch goes through five steps, each a method below: read (the oldest pending rows
// of its shards), build (frame each row into a record, or decide to park it), produce
// (hand the records to Kafka and wait for the acks; in exactly-once mode inside a
// transaction), decide (per row: published, parked or retried) and record (the
// outcome in Postgres, fenced by the leases the batch ran under).

var (
	// errFenced: a write matched rows of a lease this replica no longer holds.
	errFenced = errors.New("lease lost: write fenced")
	// errLeaseDeadline: the batch's lease deadline passed before it produced.
	errLeaseDeadline = errors.New("lease deadline passed before produce")
)

// pending is one row of a batch on its way.
type pending struct {
	row    *outboxRow
	rec    *kgo.Record
	err    error
	parked ParkReason // set if parked before producing
	reason string     // the park's detail
}

// batch is what the steps pass on: the leases it runs under, its rows, and what
// became of each.
type batch struct {
	shards []int
	gens   []int64
	rows   []outboxRow
	mem    *batchMem  // where rows and their payloads live (nil: memory of their own)
	items  []*pending // the rows considered, in order (a key behind a failure is left out)
	depErr error      // the registry failed while building
	// keepDone: the record step leaves the acked rows in place (exactly-once mode,
	// a commit the next producer's commit log read confirms: see commitConfirmWait).
	keepDone bool
	out      outcome
	span     trace.Span // from the read to the outcome's record (see trace.go)
}

// outcome is the decide step's verdict, written by the record step.
type outcome struct {
	done                      []int64 // acked: delete (or mark published)
	parkIDs, retryIDs         []int64
	parkReasons               []string // ParkReason values, as the statement takes them
	parkDetails, retryReasons []string
	kafkaErr                  error
}

// drainOnce publishes one batch of shards (usually one; several that keep up are
// drained together, see steal) in at-least-once mode. It returns an error when the
// batch could not run at all (Postgres), a dependency failed (Kafka, registry) so
// the caller backs off, or the batch was fenced.
func (r *Relay) drainOnce(ctx context.Context, shards []int, gens []int64) (batchResult, error) {
	// Every record of the batch is done with when drainOnce returns: produceBatch
	// waits for each one's promise; a batch that stops before it produced nothing.
	b := &batch{shards: shards, gens: gens, mem: r.getMem()}
	defer r.putMem(b.mem)
	var res batchResult
	st := newStopwatch()
	if err := r.readBatch(ctx, b); err != nil || len(b.rows) == 0 {
		return res, err
	}
	st.lap(&res.stages.Read)
	res.read = len(b.rows)
	r.buildBatch(ctx, b)
	st.lap(&res.stages.Build)
	if ctx.Err() != nil {
		// Past the lease deadline nothing is handed to Kafka: the rows stay as they are.
		return res, errLeaseDeadline
	}
	r.produceBatch(ctx, b)
	st.lap(&res.stages.Produce)
	r.testPoint("acked")
	r.decide(ctx, b)
	res, err := r.finish(b, res, nil)
	st.lap(&res.stages.Record)
	return res, err
}

// stopwatch times a batch's steps.
type stopwatch struct{ last time.Time }

func newStopwatch() *stopwatch { return &stopwatch{last: time.Now()} }

// lap sets *d to the time since the previous lap.
func (w *stopwatch) lap(d *time.Duration) {
	now := time.Now()
	*d = now.Sub(w.last)
	w.last = now
}

// finish records b's outcome and fills res; extra are ids committed to Kafka earlier
// and not yet deleted (exactly-once mode).
func (r *Relay) finish(b *batch, res batchResult, extra []int64) (batchResult, error) {
	if err := r.record(b, extra); err != nil {
		r.endBatchSpan(b, err)
		return res, err
	}
	res.published, res.parked, res.retry = len(b.out.done), len(b.out.parkIDs), len(b.out.retryIDs)
	if b.out.kafkaErr == nil && len(b.out.done) > 0 {
		r.ok(ErrorKafka)
	}
	err := b.depErr
	if err == nil {
		err = b.out.kafkaErr
	}
	r.endBatchSpan(b, err)
	return res, err
}

// readBatch reads the oldest pending rows of b's shards and the schemas they need.
func (r *Relay) readBatch(ctx context.Context, b *batch) error {
	start := time.Now()
	rows, err := r.read(ctx, b.shards, b.mem)
	if err != nil {
		r.fail(ErrorPostgres, err)
		return err
	}
	b.rows = rows
	if len(rows) == 0 {
		r.ok(ErrorPostgres)
		return nil
	}
	r.log.Debug("batch start", "shards", b.shards, "generations", b.gens, "rows", len(rows), "first_id", rows[0].id)
	r.startBatchSpan(b, start)
	if err := r.loadSchemas(ctx, rows); err != nil {
		r.fail(ErrorPostgres, err)
		r.endBatchSpan(b, err)
		return err
	}
	return nil
}

// buildBatch frames each row. A row that must park, or that the registry could not
// resolve, blocks the later rows of its key; once the registry fails, the rest of the
// batch waits for the next attempt.
func (r *Relay) buildBatch(ctx context.Context, b *batch) {
	blocked := map[string]bool{} // keys with an earlier row not published in this batch
	b.items = make([]*pending, 0, len(b.rows))
	for i := range b.rows {
		row := &b.rows[i]
		if blocked[row.key] {
			continue
		}
		if b.depErr != nil { // a dependency is down: leave the rest for the next attempt
			break
		}
		p := &pending{row: row}
		b.items = append(b.items, p)
		rec, kind, reason, err := r.build(ctx, row)
		switch {
		case err != nil:
			b.depErr = err
			p.err = err
			blocked[row.key] = true
		case kind != "":
			p.parked, p.reason = kind, reason
			blocked[row.key] = true
		default:
			p.rec = rec
		}
	}
	if b.depErr != nil {
		r.fail(ErrorRegistry, b.depErr)
	} else {
		r.ok(ErrorRegistry)
	}
	if ctx.Err() != nil {
		// Both drains return errLeaseDeadline now, without producing or recording.
		r.endBatchSpan(b, errLeaseDeadline)
	}
}

// produceBatch hands b's records to Kafka and waits for every ack or failure. Records
// still buffered when ctx (the lease deadline) ends fail with its error.
func (r *Relay) produceBatch(ctx context.Context, b *batch) {
	var wg sync.WaitGroup
	for _, p := range b.items {
		if p.rec == nil {
			continue
		}
		wg.Add(1)
		p := p
		r.kc.Produce(ctx, p.rec, func(_ *kgo.Record, err error) {
			p.err = err
			wg.Done()
		})
	}
	wg.Wait()
}

// decide sorts b's rows into published, parked and retried. A failure blocks the
// later rows of its key even if Kafka acked them: they are published again, in
// order, after the failed one.
func (r *Relay) decide(ctx context.Context, b *batch) {
	o := &b.out
	failedKey := map[string]bool{}
	now := time.Now()
	for _, p := range b.items {
		switch {
		case failedKey[p.row.key]:
			// stays
		case p.parked != "":
			o.park(p.row.id, p.parked, p.reason)
			failedKey[p.row.key] = true
		case p.rec == nil: // dependency error before producing
			o.retryIDs, o.retryReasons = append(o.retryIDs, p.row.id), append(o.retryReasons, p.err.Error())
			failedKey[p.row.key] = true
		case p.err != nil:
			failedKey[p.row.key] = true
			if kind, reason := r.classifyProduce(ctx, p.row, p.err); kind != "" {
				o.park(p.row.id, kind, reason)
				continue
			}
			err := p.err
			if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
				// franz-go fails a record whose context ended with the partition's last
				// error (a broker's closed connection), not the context's: say that the
				// lease's deadline is what ended the wait.
				err = fmt.Errorf("%w (waiting for Kafka past the batch's lease deadline): %w", ctx.Err(), err)
			}
			o.kafkaErr = err
			o.retryIDs, o.retryReasons = append(o.retryIDs, p.row.id), append(o.retryReasons, "kafka: "+err.Error())
		default:
			o.done = append(o.done, p.row.id)
			if r.cfg.Hooks.OnPublished != nil {
				r.cfg.Hooks.OnPublished(PublishedEvent{Latency: now.Sub(p.row.created)})
			}
		}
	}
	if o.kafkaErr != nil {
		r.fail(ErrorKafka, o.kafkaErr)
	}
}

// park adds row id to the rows to park, with its reason and detail.
func (o *outcome) park(id int64, reason ParkReason, detail string) {
	o.parkIDs = append(o.parkIDs, id)
	o.parkReasons = append(o.parkReasons, string(reason))
	o.parkDetails = append(o.parkDetails, detail)
}

// record writes b's outcome in one transaction, every statement fenced by the
// leases the batch ran under (see fence in sql.go); extra are more ids to delete
// (exactly-once mode: committed to Kafka by an earlier transaction). Rows a
// statement did not change belong to a lease this replica lost: they are counted,
// logged and left to the new owner, and errFenced is returned.
func (r *Relay) record(b *batch, extra []int64) error {
	o := &b.out
	done := o.done
	if b.keepDone {
		done = nil
	}
	if len(extra) > 0 {
		done = append(append(make([]int64, 0, len(extra)+len(done)), extra...), done...)
	}
	if len(done)+len(o.parkIDs)+len(o.retryIDs) == 0 {
		return nil
	}
	// A fresh context: acked rows must be removed even if the lease deadline passed
	// while waiting for Kafka (the fence decides whether they are still ours).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The outcome is committed without waiting for the WAL flush: losing it in a
	// Postgres crash only publishes those rows again (duplicates, in order; in
	// exactly-once mode the commit log says they were published), and not waiting
	// frees the shard (and the WAL) for the next batch at once.
	//
	// No BEGIN and COMMIT: a batch's statements run in one implicit transaction, up
	// to the Sync pgx sends after the last (as in the read, two statements fewer per
	// batch for Postgres to run); set_config(..., true) lasts until its commit.
	pb := &pgx.Batch{}
	pb.Queue(relaysql.AsyncCommit)
	type write struct {
		op   string
		rows int
	}
	var writes []write
	me := r.cfg.ReplicaID
	if len(done) > 0 {
		if r.cfg.Retention > 0 {
			pb.Queue(r.sql.markPublished, done, b.shards, b.gens, me)
			writes = append(writes, write{"mark published", len(done)})
		} else {
			pb.Queue(r.sql.delete, done, b.shards, b.gens, me)
			writes = append(writes, write{"delete", len(done)})
		}
	}
	if len(o.parkIDs) > 0 {
		pb.Queue(r.sql.park, o.parkIDs, b.shards, b.gens, me, o.parkDetails, o.parkReasons)
		writes = append(writes, write{"park", len(o.parkIDs)})
	}
	if len(o.retryIDs) > 0 {
		pb.Queue(r.sql.attempt, o.retryIDs, b.shards, b.gens, me, o.retryReasons)
		writes = append(writes, write{"attempts", len(o.retryIDs)})
	}
	br := r.pool.SendBatch(ctx, pb)
	fenced := 0
	var ops []string
	err := func() error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		for _, w := range writes {
			tag, err := br.Exec()
			if err != nil {
				return err
			}
			// extra ids may have been deleted already (a retry): they are not fenced.
			if n := w.rows - int(tag.RowsAffected()); n > 0 && !(w.op == "delete" && n <= len(extra)) {
				fenced += n
				ops = append(ops, w.op)
			}
		}
		return nil
	}()
	if cerr := br.Close(); err == nil { // the commit's outcome
		err = cerr
	}
	if err != nil {
		err = fmt.Errorf("recording batch outcome: %w", err)
		r.fail(ErrorPostgres, err)
		return err // acked rows stay: they are published again (duplicates, in order)
	}
	r.ok(ErrorPostgres)
	for i, id := range o.parkIDs {
		reason := ParkReason(o.parkReasons[i])
		r.log.Warn("event parked", "shards", b.shards, "id", id, "reason", reason, "detail", o.parkDetails[i])
		if r.cfg.Hooks.OnParked != nil {
			r.cfg.Hooks.OnParked(ParkEvent{Reason: reason, ID: id})
		}
	}
	if fenced > 0 {
		r.fenced.Add(int64(fenced))
		op := strings.Join(ops, ", ")
		r.log.Warn("outcome write fenced: the lease was lost; the new owner publishes these rows",
			"shards", b.shards, "generations", b.gens, "rows", fenced, "op", op)
		if r.cfg.Hooks.OnFenced != nil {
			r.cfg.Hooks.OnFenced(FencedEvent{Shards: b.shards, Rows: fenced, Op: op})
		}
		return errFenced
	}
	return nil
}

// haltLost stops the drains of those of shards whose lease (at gens) this replica
// no longer holds, after a fenced write: they stop at once rather than at the next
// heartbeat.
func (r *Relay) haltLost(shards []int, gens []int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := r.pool.Query(ctx, r.sql.held, shards, gens, r.cfg.ReplicaID)
	var still []int
	if err == nil {
		still, err = pgx.CollectRows(rows, pgx.RowTo[int])
	}
	if err != nil {
		still = nil // unknown: stop them all; the next heartbeat starts what is still held
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, s := range shards {
		run := r.shards[s]
		if run == nil || run.gen != gens[i] || containsInt(still, s) {
			continue
		}
		run.halt()
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
