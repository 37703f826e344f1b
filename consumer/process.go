package consumer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/envelope"
)

// item is a record made ready for its transaction: routed, its writer schema known,
// its body decoded once it is known to be needed (decodeBody).
type item struct {
	rec   *kgo.Record
	m     *Message
	ctx   context.Context // handler context: trace context from the headers
	route route
	skip  bool        // no handler, SkipUnknown
	dead  *deadLetter // dead-letter without running a handler
	// undecoded: the body is still to be decoded into route.t (decodeBody). A
	// batch decodes only the records processed_events does not hold: a duplicate
	// is never decoded.
	undecoded bool
	// sent: the record is on its dead-letter topic. A batch that rolls back after
	// it was produced must not run it again: a record is dead-lettered or applied,
	// never both.
	sent bool

	span         trace.Span // the record's span (trace.go); ctx carries it
	dup, applied bool       // what the current attempt's dedup insert and handler said
	retries      int        // failed handler attempts
}

type deadLetter struct {
	reason   string
	err      error
	attempts int
}

// message builds the Message of rec from its headers.
func (c *Consumer) message(rec *kgo.Record) *Message {
	// The key and the header values are copied into one string (one allocation, not
	// one each; they live and die together with the message).
	n := len(rec.Key)
	for _, h := range rec.Headers {
		n += len(h.Value)
	}
	var sb strings.Builder
	sb.Grow(n)
	sb.Write(rec.Key)
	for _, h := range rec.Headers {
		sb.Write(h.Value)
	}
	all := sb.String()
	m := &Message{Envelope: Envelope{
		Key: all[:len(rec.Key)], Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset,
		Headers: make(map[string]string, len(rec.Headers)),
	}, Record: rec}
	at := len(rec.Key)
	var occurred string
	for _, h := range rec.Headers { // for a repeated name, the last value
		v := all[at : at+len(h.Value)]
		at += len(h.Value)
		m.Headers[h.Key] = v
		switch h.Key {
		case envelope.EventID:
			m.ID = v
		case envelope.EventType:
			m.Type = v
		case envelope.AggregateType:
			m.AggregateType = v
		case envelope.CorrelationID:
			m.CorrelationID = v
		case envelope.CausationID:
			m.CausationID = v
		case envelope.Source:
			m.Source = v
		case envelope.OccurredAt:
			occurred = v
		}
	}
	if m.ID == "" {
		m.ID = c.cfg.DedupKey(rec)
	}
	if occurred != "" {
		m.OccurredAt, _ = time.Parse(time.RFC3339Nano, occurred)
	}
	return m
}

// prepare routes rec and fetches its writer schema; decodeBody decodes it. Registry
// outages are retried here, before any transaction; it returns false only if the
// partition was stopped meanwhile.
func (p *partition) prepare(rec *kgo.Record) (_ *item, ok bool) {
	c := p.c
	m := c.message(rec)
	it := &item{rec: rec, m: m, ctx: c.prop.Extract(c.runCtx, propagation.MapCarrier(m.Headers))}
	p.startRecordSpan(it)
	defer func() {
		if !ok {
			endRecordSpan(it, false)
		}
	}()
	if err := checkEventID(m.ID); err != nil {
		// It would fail the processed_events insert on every attempt and stall the
		// partition: dead-letter it instead.
		it.dead = &deadLetter{reason: ReasonMalformed, err: err}
		return it, true
	}
	id, body, err := frame(rec.Value)
	if err != nil {
		it.dead = &deadLetter{reason: ReasonMalformed, err: err}
		return it, true
	}
	m.SchemaID, m.Body, m.dec = id, body, c.dec
	r, routed := c.routes[m.Type]
	if m.Type != "" && !routed {
		return p.unknown(it), true // no need for its schema
	}
	var w avro.Schema
	for attempt := 1; ; attempt++ {
		if w, err = c.dec.writer(p.stopCtx, id); err == nil {
			break
		}
		var de *DecodeError
		if errors.As(err, &de) {
			it.dead = &deadLetter{reason: de.Reason, err: err}
			return it, true
		}
		if p.stopped() {
			return nil, false
		}
		if errors.Is(err, errSchemaNotYetFound) {
			c.log.Warn("schema id not found in the registry; retrying within the grace", "topic", rec.Topic, "partition", rec.Partition,
				"offset", rec.Offset, "grace", c.cfg.SchemaNotFoundGrace, "err", err)
		} else {
			c.hookErr(ErrorRegistry, err)
			c.log.Warn("schema registry unavailable; retrying", "topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", err)
		}
		if !p.sleep(c.backoff(attempt)) {
			return nil, false
		}
	}
	m.writer = w
	if m.Type == "" { // not from the relay: the writer schema's name is the type
		if ns, ok := w.(avro.NamedSchema); ok {
			m.Type = ns.FullName()
		}
		if r, routed = c.routes[m.Type]; !routed {
			return p.unknown(it), true
		}
	}
	it.route = r
	it.undecoded = r.t != nil
	return it, true
}

// decodeBody decodes it's body into its route's type, once; a body that does not
// decode makes it a dead letter. It needs no network: the writer schema is known.
func (p *partition) decodeBody(it *item) {
	if !it.undecoded {
		return
	}
	it.undecoded = false
	m := it.m
	ptr := reflect.New(it.route.t).Interface()
	if err := p.c.dec.into(m.SchemaID, m.writer, m.Body, ptr); err != nil {
		reason := ReasonBadBody
		var de *DecodeError
		if errors.As(err, &de) {
			reason = de.Reason
		}
		it.dead = &deadLetter{reason: reason, err: err}
		return
	}
	m.decoded = ptr
}

// unknown applies the UnknownType policy to it.
func (p *partition) unknown(it *item) *item {
	if p.c.cfg.UnknownType == DeadLetterUnknown {
		it.dead = &deadLetter{reason: ReasonUnknownType, err: fmt.Errorf("no handler for event type %q", it.m.Type)}
	} else {
		it.skip = true
	}
	return it
}

// isInfra reports whether err says the database (not the handler's logic) failed:
// the connection is gone, or the error is one that is safe to retry. Such failures
// are retried without limit and do not count as attempts.
func isInfra(err error, tx pgx.Tx) bool {
	if tx != nil && tx.Conn() != nil && tx.Conn().IsClosed() {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "08", "53", "57": // connection exception, insufficient resources, operator intervention
			return pe.Code != "57014" // query_canceled (statement timeout) is the handler's
		case "40": // deadlock, serialization failure: a conflict between transactions, not
			// the handler's logic; the whole transaction (in batch mode, the batch) is
			// rolled back and retried, where retrying inside it would meet the same locks.
			return true
		}
		return false
	}
	return pgconn.SafeToRetry(err)
}

// isHandlerInfra reports whether a handler's error is an infrastructure failure. The
// end of a context the handler derived itself (a per-call timeout) is the handler's
// failure, like a statement timeout (57014), though pgx closes the connection when
// a statement's context ends: the consumer never cancels a handler's context (it
// derives from Run's without its cancellation), so such an error is the handler's
// own, counted against MaxAttempts and then dead-lettered, not retried for ever.
func isHandlerInfra(herr error, tx pgx.Tx) bool {
	if errors.Is(herr, context.DeadlineExceeded) || errors.Is(herr, context.Canceled) {
		return false
	}
	return isInfra(herr, tx)
}

// call runs the handler, turning a panic into an error.
func (p *partition) call(ctx context.Context, tx pgx.Tx, it *item) (err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
		if h := p.c.cfg.Hooks.OnHandlerLatency; h != nil {
			h(HandlerEvent{RecordEvent: recordEvent(it.m), Duration: time.Since(start), Err: err})
		}
	}()
	err = it.route.h.Handle(ctx, tx, it.m)
	it.applied = err == nil
	return err
}

// attempt runs one transaction for it: dedup, handler, commit. herr is the
// handler's failure (counted against MaxAttempts), err an infrastructure failure.
func (p *partition) attempt(it *item) (dup bool, herr, err error) {
	ctx := it.ctx
	pc, err := p.c.pool.Acquire(ctx)
	if err != nil {
		return false, nil, fmt.Errorf("beginning transaction: %w", err)
	}
	defer pc.Release()
	// BEGIN and the processed_events insert in one round trip.
	b := &pgx.Batch{}
	b.Queue("begin")
	if !p.c.cfg.DisableDedup {
		b.Queue(p.c.insertSQL, p.c.cfg.Group, it.m.ID, it.m.Topic, it.m.Partition, it.m.Offset)
	}
	br := pc.Conn().SendBatch(ctx, b)
	_, err = br.Exec()
	fresh := true
	if err == nil && !p.c.cfg.DisableDedup {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		fresh = tag.RowsAffected() == 1
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	tx := &connTx{conn: pc.Conn()}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err != nil {
		return false, nil, fmt.Errorf("recording the event in processed_events: %w", err)
	}
	it.deduped(fresh)
	if !fresh {
		return true, nil, nil
	}
	if p.decodeBody(it); it.dead != nil {
		return false, nil, nil // rolled back: the caller dead-letters it
	}
	if it.skip {
		return false, nil, tx.Commit(ctx)
	}
	htx := handlerTx{Tx: tx, q: &deferredQueue{}} // the deferred statements and rows go with the COMMIT
	if herr := p.call(ctx, htx, it); herr != nil {
		if isHandlerInfra(herr, tx) {
			return false, nil, herr
		}
		return false, herr, nil
	}
	serr, err := tx.commitAfter(ctx, htx.q.statements())
	if serr != nil { // a deferred statement: the handler's failure
		if isHandlerInfra(serr, tx) {
			return false, nil, serr
		}
		return false, serr, nil
	}
	if err != nil {
		if isInfra(err, tx) {
			return false, nil, fmt.Errorf("committing: %w", err)
		}
		return false, fmt.Errorf("committing: %w", err), nil
	}
	return false, nil, nil
}

// processOne applies it in its own transaction, with retries and dead-lettering.
// It returns false if the partition was stopped before the record was done.
func (p *partition) processOne(it *item) (ok bool) {
	defer func() { endRecordSpan(it, ok) }()
	c := p.c
	switch {
	case it.sent: // dead-lettered in a batch that rolled back
		return true
	case it.dead != nil:
		return p.deadLetter(it, it.dead)
	}
	attempts, infra := 0, 0
	for {
		dup, herr, err := p.attempt(it)
		switch {
		case err != nil:
			infra++
			c.hookErr(ErrorPostgres, err)
			c.log.Warn("database failure; retrying", "topic", it.m.Topic, "partition", it.m.Partition, "offset", it.m.Offset, "err", err)
			if !p.sleep(c.backoff(infra)) {
				return false
			}
			continue
		case dup:
			p.hook(c.cfg.Hooks.OnDuplicate, it)
			return true
		case it.dead != nil: // its body did not decode (the transaction rolled back)
			return p.deadLetter(it, it.dead)
		case herr == nil && it.skip:
			p.hook(c.cfg.Hooks.OnSkipped, it)
			return true
		case herr == nil:
			p.hook(c.cfg.Hooks.OnProcessed, it)
			return true
		}
		attempts++
		if dl := p.giveUp(herr, attempts); dl != nil {
			return p.deadLetter(it, dl)
		}
		p.retrying(it, attempts, herr)
		if !p.sleep(c.backoff(attempts)) {
			return false
		}
	}
}

// giveUp returns the dead letter for a handler failure that is not retried.
func (p *partition) giveUp(herr error, attempts int) *deadLetter {
	switch {
	case IsPermanent(herr):
		reason := ReasonPermanent
		var de *DecodeError
		if errors.As(herr, &de) {
			reason = de.Reason
		}
		return &deadLetter{reason: reason, err: herr, attempts: attempts}
	case attempts >= p.c.cfg.MaxAttempts:
		return &deadLetter{reason: ReasonExhausted, err: herr, attempts: attempts}
	}
	return nil
}

func (p *partition) retrying(it *item, attempt int, herr error) {
	if h := p.c.cfg.Hooks.OnRetry; h != nil {
		h(RetryEvent{RecordEvent: recordEvent(it.m), Attempt: attempt, Err: herr})
	}
	p.c.log.Debug("handler failed; retrying", "topic", it.m.Topic, "partition", it.m.Partition, "offset", it.m.Offset,
		"event_type", it.m.Type, "event_id", it.m.ID, "attempt", attempt, "err", herr)
	it.retried(attempt, herr)
}

func (p *partition) hook(h func(RecordEvent), it *item) {
	if h != nil {
		h(recordEvent(it.m))
	}
}

// runBatch applies recs in batch mode: one transaction, a savepoint per record.
// It returns false if the partition was stopped before all were done.
//
// A failure that dooms the batch's transaction (a lost connection, an error at
// COMMIT such as a deferred constraint, a handler that swallowed a SQL error so that
// the next RELEASE SAVEPOINT fails with 25P02, a handler's own timeout) cannot be
// told apart from its culprit inside the batch: the records not yet committed then
// run one per transaction, as in single-record mode, where an infrastructure
// failure is retried without limit and a record's own failure counts against
// MaxAttempts and ends on the dead-letter topic. The next batch is a batch again.
func (p *partition) runBatch(recs []*kgo.Record) (done bool) {
	items := make([]*item, 0, len(recs))
	batch, split := p.startBatchSpan(recs), false
	all := &items
	defer func() { endBatch(batch, *all, done, split) }()
	for _, rec := range recs {
		it, ok := p.prepare(rec)
		if !ok {
			return false
		}
		items = append(items, it)
	}
	linkBatch(batch, items)
	n, err := p.batchOnce(items)
	split = err != nil // unless stopped: then the batch is interrupted
	if n > 0 {
		for _, it := range items[:n] {
			endRecordSpan(it, true)
		}
		p.markDone(items[n-1].rec)
		items = items[n:]
	}
	switch {
	case len(items) == 0:
		return true
	case err == nil || p.stopped():
		return false // stopped part-way
	}
	p.c.hookErr(ErrorPostgres, err)
	p.c.log.Warn("batch failed; running its records one per transaction", "topic", p.topic, "partition", p.n,
		"records", len(items), "err", err)
	for _, it := range items {
		if p.stopped() || !p.processOne(it) {
			return false
		}
		p.markDone(it.rec)
	}
	return true
}

// savepoint is the name of the savepoint each record of a batch runs under.
const savepoint = "relaybox_record"

// batchOnce runs items in one transaction until done or stopped and commits the
// ones done; it returns how many (a prefix of items) are done and committed.
//
// Each record costs one round trip besides its handler's statements: releasing the
// previous record's savepoint, opening its own and recording the event in
// processed_events are sent together. A failed record rolls back to its savepoint,
// which removes its processed_events row with its effects.
func (p *partition) batchOnce(items []*item) (int, error) {
	if n, ok, err := p.batchFast(items); ok || err != nil {
		return n, err
	}
	return p.batchSavepoints(items)
}

// batchFast is the optimistic path of a batch: one statement records every event id
// of the batch in processed_events (RETURNING the fresh ones), then the handlers of
// the fresh records run without savepoints, and the batch commits. It gives up (ok
// false, nothing committed) if a record needs the dead-letter path or a handler
// fails: batchSavepoints then runs the batch record by record, with retries.
func (p *partition) batchFast(items []*item) (int, bool, error) {
	c := p.c
	ctx := c.runCtx
	for _, it := range items {
		if it.dead != nil {
			return 0, false, nil
		}
	}
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("beginning transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	fresh := make(map[string]bool, len(items))
	if c.cfg.DisableDedup {
		for _, it := range items {
			fresh[it.m.ID] = true
		}
	} else {
		var err error
		if fresh, err = p.recordBatch(ctx, tx, items); errors.Is(err, errNotAllNew) {
			// A redelivery: the batch starts again, asking which events are new.
			_ = tx.Rollback(ctx)
			p.expectNew = false
			return p.batchFast(items)
		} else if err != nil {
			return 0, false, fmt.Errorf("recording processed events: %w", err)
		}
	}
	var after []func()
	htx := handlerTx{Tx: tx, q: &deferredQueue{copyRows: true}} // the deferred work, flushed before the commit
	for _, it := range items {
		it.deduped(fresh[it.m.ID])
		if p.stopped() {
			return 0, false, nil
		}
		switch {
		case !fresh[it.m.ID]: // seen before, or earlier in this batch
			after = append(after, func() { p.hook(c.cfg.Hooks.OnDuplicate, it) })
			continue
		case it.skip:
			delete(fresh, it.m.ID)
			after = append(after, func() { p.hook(c.cfg.Hooks.OnSkipped, it) })
			continue
		}
		delete(fresh, it.m.ID) // a later record with the same id is a duplicate
		if p.decodeBody(it); it.dead != nil {
			return 0, false, nil // the savepoint path dead-letters it
		}
		if herr := p.call(it.ctx, htx, it); herr != nil {
			if isHandlerInfra(herr, tx) {
				return 0, false, herr
			}
			return 0, false, nil // the savepoint path retries and isolates it
		}
		after = append(after, func() { p.hook(c.cfg.Hooks.OnProcessed, it) })
	}
	if err := htx.flush(ctx); err != nil { // a deferred statement failed: isolate it as above
		if isInfra(err, tx) {
			return 0, false, fmt.Errorf("deferred statements: %w", err)
		}
		return 0, false, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, false, fmt.Errorf("committing batch: %w", err)
	}
	for _, h := range after {
		h()
	}
	return len(items), true, nil
}

// errNotAllNew: a batch recorded as all new held an event processed_events has.
var errNotAllNew = errors.New("a redelivered event in a batch recorded as new")

// recordBatch records the event ids of items in processed_events and returns those
// that were not there before. After a batch of new events only (the steady state:
// redeliveries come after a rebalance or a crash) the next batch is inserted with a
// plain INSERT, which costs Postgres about 40 % less per row than ON CONFLICT DO
// NOTHING with RETURNING (speculative insertion, then the rows back); a unique
// violation then means a redelivery (or another member applying the same event),
// the transaction is void, and the caller runs the batch again with the other
// statement (errNotAllNew). A batch whose events were not all new keeps the
// partition on ON CONFLICT ... RETURNING until one is.
func (p *partition) recordBatch(ctx context.Context, tx pgx.Tx, items []*item) (map[string]bool, error) {
	c := p.c
	n := len(items)
	fresh := make(map[string]bool, n)
	ids, topics, parts, offs := make([]string, 0, n), make([]string, 0, n), make([]int32, 0, n), make([]int64, 0, n)
	for _, it := range items {
		if fresh[it.m.ID] { // a repeat within the batch: recorded once, a duplicate after
			continue
		}
		fresh[it.m.ID] = true
		ids, topics, parts, offs = append(ids, it.m.ID), append(topics, it.m.Topic), append(parts, it.m.Partition), append(offs, it.m.Offset)
	}
	if p.expectNew {
		_, err := tx.Exec(ctx, c.bulkInsertAllSQL, c.cfg.Group, ids, topics, parts, offs)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
			return nil, errNotAllNew
		}
		return fresh, err
	}
	rows, err := tx.Query(ctx, c.bulkInsertSQL, c.cfg.Group, ids, topics, parts, offs)
	if err != nil {
		return nil, err
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	clear(fresh)
	for _, id := range got {
		fresh[id] = true
	}
	p.expectNew = len(got) == len(ids)
	return fresh, nil
}

// batchSavepoints runs items in one transaction, each record under a savepoint.
func (p *partition) batchSavepoints(items []*item) (int, error) {
	c := p.c
	ctx := c.runCtx
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("beginning transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var after []func() // hooks of work that counts only once committed
	done := 0
	open := false // a savepoint is open
	for _, it := range items {
		if p.stopped() {
			break
		}
		hook, ok, err := p.batchItem(tx, it, &open)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		if hook != nil {
			after = append(after, hook)
		}
		done++
	}
	if done == 0 {
		return 0, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("committing batch: %w", err)
	}
	for _, h := range after {
		h()
	}
	return done, nil
}

// batchItem applies one record of a batch under a savepoint. ok is false if the
// partition was stopped before the record was done (its work, if any, rolled back
// to its savepoint); err is an infrastructure failure that dooms the transaction.
func (p *partition) batchItem(tx pgx.Tx, it *item, open *bool) (after func(), ok bool, err error) {
	c := p.c
	switch {
	case it.sent: // dead-lettered before this batch's transaction rolled back
		return nil, true, nil
	case it.dead != nil:
		return nil, p.deadLetter(it, it.dead), nil
	}
	ctx := it.ctx
	for attempts := 1; ; attempts++ {
		fresh, err := p.openSavepoint(ctx, tx, it.m, open)
		if err != nil {
			return nil, false, err
		}
		it.deduped(fresh)
		switch {
		case !fresh:
			return func() { p.hook(c.cfg.Hooks.OnDuplicate, it) }, true, nil
		case it.skip:
			return func() { p.hook(c.cfg.Hooks.OnSkipped, it) }, true, nil
		}
		if p.decodeBody(it); it.dead != nil {
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+savepoint); err != nil {
				return nil, false, fmt.Errorf("rolling back to savepoint: %w", err)
			}
			return nil, p.deadLetter(it, it.dead), nil
		}
		herr := p.call(ctx, handlerTx{Tx: tx}, it)
		if herr == nil {
			return func() { p.hook(c.cfg.Hooks.OnProcessed, it) }, true, nil
		}
		if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+savepoint); err != nil {
			return nil, false, fmt.Errorf("rolling back to savepoint: %w (after the handler's %w)", err, herr)
		}
		if isHandlerInfra(herr, tx) {
			return nil, false, herr
		}
		if dl := p.giveUp(herr, attempts); dl != nil {
			return nil, p.deadLetter(it, dl), nil
		}
		p.retrying(it, attempts, herr)
		if !p.sleep(c.backoff(attempts)) {
			return nil, false, nil
		}
	}
}

// openSavepoint releases the open savepoint, if any, opens a new one and records m
// in processed_events under it, in one round trip. false means a duplicate.
func (p *partition) openSavepoint(ctx context.Context, tx pgx.Tx, m *Message, open *bool) (bool, error) {
	b := &pgx.Batch{}
	if *open {
		b.Queue("RELEASE SAVEPOINT " + savepoint)
	}
	b.Queue("SAVEPOINT " + savepoint)
	dedup := !p.c.cfg.DisableDedup
	if dedup {
		b.Queue(p.c.insertSQL, p.c.cfg.Group, m.ID, m.Topic, m.Partition, m.Offset)
	}
	br := tx.SendBatch(ctx, b)
	var tag pgconn.CommandTag
	var err error
	for i := 0; i < b.Len() && err == nil; i++ {
		tag, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("savepoint and processed_events: %w", err)
	}
	*open = true
	return !dedup || tag.RowsAffected() == 1, nil
}

// handlerTx is the transaction as a handler sees it: everything but ending it,
// which is the consumer's (the dedup row must commit or roll back with the effects).
// q, when set, holds what ExecDeferred and InsertDeferred deferred (deferred.go)
// until flushed.
type handlerTx struct {
	pgx.Tx
	q *deferredQueue
}

var errHandlerEndsTx = errors.New("consumer: a handler must not commit or roll back its transaction; return nil or an error")

func (handlerTx) Commit(context.Context) error   { return errHandlerEndsTx }
func (handlerTx) Rollback(context.Context) error { return errHandlerEndsTx }

// maxEventIDBytes bounds an event id taken from a record header.
const maxEventIDBytes = 512

// checkEventID refuses event ids Postgres text cannot hold (NUL, invalid UTF-8) or
// too long to be an id.
func checkEventID(id string) error {
	switch {
	case len(id) > maxEventIDBytes:
		return fmt.Errorf("event id header is %d bytes, limit %d", len(id), maxEventIDBytes)
	case !utf8.ValidString(id):
		return errors.New("event id header is not valid UTF-8")
	case strings.IndexByte(id, 0) >= 0:
		return errors.New("event id header contains a NUL byte")
	}
	return nil
}
