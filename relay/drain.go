package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/wire"
)

type outboxRow struct {
	id                                          int64
	eventID                                     uuid.UUID
	topic, key, typ, aggType, subject           string
	fp                                          []byte
	framed                                      framedPayload // wire.HeaderLen bytes of room, then the payload
	headers                                     headerScan
	occurred, created                           time.Time
	corr, caus, source, traceparent, tracestate string
}

// Park reasons (the prefix of last_error, and the OnParked kind).
const (
	ParkIncompatible  = "incompatible_schema"
	ParkNotRegistered = "schema_not_registered"
	ParkTooLarge      = "too_large"
	ParkTopicMissing  = "topic_missing"
	ParkInvalid       = "invalid"
)

type batchResult struct {
	read, published, parked, retry int
}

func (r *Relay) drainLoop(s *shardRun) {
	defer close(s.done)
	poll := time.NewTimer(0)
	defer poll.Stop()
	failures := 0
	lastRead := r.cfg.BatchSize
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		// A shard with a backlog (its last batch had at least a quarter of BatchSize
		// rows; at start every shard counts as one) takes one of MaxInFlightBatches
		// slots first: that bounds the relay's memory however large the backlog. A shard
		// that keeps up runs its small batches without a slot, so many of them go at
		// once (a slot per tiny batch queued them: latency at steady rates).
		slot := lastRead >= max(1, r.cfg.BatchSize/4)
		if slot {
			select {
			case r.inflight <- struct{}{}:
			case <-s.stop:
				return
			}
		}
		release := func() {
			if slot {
				<-r.inflight
				slot = false
			}
		}
		s.busy.Lock()
		s.draining.Store(true)
		s.news.Store(false)
		deadline := s.leaseDeadline()
		if !time.Now().Before(deadline) {
			s.draining.Store(false)
			s.busy.Unlock()
			release()
			r.log.Warn("lease not renewed in time; shard drain stops until it is", "shard", s.shard)
			return
		}
		group := []*shardRun{s}
		if !slot {
			group = r.steal(s, group)
		}
		shards := make([]int, len(group))
		for i, g := range group {
			shards[i] = g.shard
			deadline = minTime(deadline, g.leaseDeadline())
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		start := time.Now()
		res, err := r.drainOnce(ctx, shards)
		cancel()
		for _, g := range group {
			g.draining.Store(false)
		}
		for _, g := range group[1:] {
			g.busy.Unlock()
			if err != nil || res.read >= r.cfg.BatchSize || res.retry > 0 {
				g.poke() // rows may be left (the LIMIT cut it, or a failure): its own drain looks
			}
		}
		s.busy.Unlock()
		release()
		lastRead = res.read
		s.sparse.Store(lastRead < max(1, r.cfg.BatchSize/4))
		if r.cfg.Hooks.OnBatch != nil && res.read > 0 {
			r.cfg.Hooks.OnBatch(s.shard, res.read, res.published, time.Since(start))
		}
		s.failing.Store(err != nil || res.retry > 0)
		var wait time.Duration
		switch {
		case err != nil:
			failures++
			wait = r.backoff(failures)
			r.log.Debug("batch failed; backing off", "shard", s.shard, "err", err, "backoff", wait)
		case res.read >= r.cfg.BatchSize && res.retry == 0:
			failures = 0
			continue // more waiting
		case res.retry > 0:
			failures++
			wait = r.backoff(failures)
		default:
			failures = 0
			wait = r.cfg.PollInterval
		}
		poll.Reset(wait)
		select {
		case <-s.stop:
			return
		case <-s.wake:
			if err != nil || res.retry > 0 { // a failure's backoff is not cut short by a NOTIFY
				select {
				case <-s.stop:
					return
				case <-poll.C:
				}
			}
		case <-poll.C:
		}
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
	}
}

// steal adds to group, for one batch, the other shards that keep up (their last
// batch was small), have news (a NOTIFY named them since they last drained) and are
// idle (their busy lock is free). Their own drains wait on that lock
// meanwhile, so a shard is never in two batches at once; a commit that touched many
// shards then costs one claim, one produce round and one delete, not one per shard.
func (r *Relay) steal(s *shardRun, group []*shardRun) []*shardRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, o := range r.shards {
		if o == s || !o.sparse.Load() {
			continue
		}
		select {
		case <-o.stop:
			continue
		default:
		}
		if !o.news.Load() {
			continue
		}
		if !o.busy.TryLock() {
			o.poke() // it is draining: its own drain looks after the news
			continue
		}
		if !o.news.Swap(false) {
			o.busy.Unlock()
			continue
		}
		if !now.Before(o.leaseDeadline()) {
			o.busy.Unlock()
			o.poke()
			continue
		}
		o.draining.Store(true)
		group = append(group, o)
	}
	return group
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

type pending struct {
	row    *outboxRow
	rec    *kgo.Record
	err    error
	parked string // reason kind if parked before producing
	reason string
}

// drainOnce publishes one batch of shards (usually one; several that keep up are
// drained together, see steal). It returns an error when the batch could not run at
// all (Postgres) or a dependency failed (Kafka, registry) so the caller backs off.
func (r *Relay) drainOnce(ctx context.Context, shards []int) (batchResult, error) {
	var res batchResult
	rows, err := r.read(ctx, shards)
	if err != nil {
		r.fail("postgres", err)
		return res, err
	}
	res.read = len(rows)
	if len(rows) == 0 {
		r.ok("postgres")
		return res, nil
	}
	r.log.Debug("batch start", "shards", shards, "rows", len(rows), "first_id", rows[0].id)
	if err := r.loadSchemas(ctx, rows); err != nil {
		r.fail("postgres", err)
		return res, err
	}

	blocked := map[string]bool{} // keys with an earlier row not published in this batch
	items := make([]*pending, 0, len(rows))
	var depErr error
	for i := range rows {
		row := &rows[i]
		if blocked[row.key] {
			continue
		}
		if depErr != nil { // a dependency is down: leave the rest for the next attempt
			break
		}
		p := &pending{row: row}
		items = append(items, p)
		rec, kind, reason, err := r.build(ctx, row)
		switch {
		case err != nil:
			depErr = err
			p.err = err
			blocked[row.key] = true
		case kind != "":
			p.parked, p.reason = kind, reason
			blocked[row.key] = true
		default:
			p.rec = rec
		}
	}
	if depErr != nil {
		r.fail("registry", depErr)
	} else {
		r.ok("registry")
	}

	var wg sync.WaitGroup
	for _, p := range items {
		if p.rec == nil {
			continue
		}
		wg.Add(1)
		p := p
		r.kc.Produce(context.Background(), p.rec, func(_ *kgo.Record, err error) {
			p.err = err
			wg.Done()
		})
	}
	wg.Wait()

	// Decide per row: publish (delete), park, or retry later. A failure blocks the
	// later rows of its key even if Kafka acked them: they are published again, in
	// order, after the failed one.
	var done []int64
	var parkIDs, retryIDs []int64
	var parkReasons, retryReasons []string
	var kafkaErr error
	failedKey := map[string]bool{}
	now := time.Now()
	for _, p := range items {
		switch {
		case failedKey[p.row.key]:
			// stays
		case p.parked != "":
			parkIDs, parkReasons = append(parkIDs, p.row.id), append(parkReasons, p.parked+": "+p.reason)
			failedKey[p.row.key] = true
		case p.rec == nil: // dependency error before producing
			retryIDs, retryReasons = append(retryIDs, p.row.id), append(retryReasons, p.err.Error())
			failedKey[p.row.key] = true
		case p.err != nil:
			failedKey[p.row.key] = true
			if kind, reason := r.classifyProduce(ctx, p.row, p.err); kind != "" {
				parkIDs, parkReasons = append(parkIDs, p.row.id), append(parkReasons, kind+": "+reason)
				continue
			}
			kafkaErr = p.err
			retryIDs, retryReasons = append(retryIDs, p.row.id), append(retryReasons, "kafka: "+p.err.Error())
		default:
			done = append(done, p.row.id)
			if r.cfg.Hooks.OnPublished != nil {
				r.cfg.Hooks.OnPublished(now.Sub(p.row.created))
			}
		}
	}
	if kafkaErr != nil {
		r.fail("kafka", kafkaErr)
	}

	// Record the outcome with a fresh context: acked rows must be removed even if the
	// lease deadline passed while waiting for Kafka (removing them is always safe).
	fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The outcome is committed without waiting for the WAL flush: losing it in a
	// Postgres crash only publishes those rows again (duplicates, in order), and not
	// waiting frees the shard (and the WAL) for the next batch at once.
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit TO off")
	if len(done) > 0 {
		if r.cfg.Retention > 0 {
			b.Queue(r.sql.markPublished, done)
		} else {
			b.Queue(r.sql.delete, done)
		}
	}
	if len(parkIDs) > 0 {
		b.Queue(r.sql.park, parkIDs, parkReasons)
	}
	if len(retryIDs) > 0 {
		b.Queue(r.sql.attempt, retryIDs, retryReasons)
	}
	if b.Len() > 2 {
		b.Queue("COMMIT")
		if err := r.pool.SendBatch(fctx, b).Close(); err != nil {
			err = fmt.Errorf("recording batch outcome: %w", err)
			r.fail("postgres", err)
			return res, err // acked rows stay: they are published again (duplicates, in order)
		}
	}
	r.ok("postgres")
	for i, id := range parkIDs {
		kind, _, _ := strings.Cut(parkReasons[i], ":")
		r.log.Warn("event parked", "shards", shards, "id", id, "reason", parkReasons[i])
		if r.cfg.Hooks.OnParked != nil {
			r.cfg.Hooks.OnParked(kind)
		}
	}
	res.published, res.parked, res.retry = len(done), len(parkIDs), len(retryIDs)
	if kafkaErr == nil && len(done) > 0 {
		r.ok("kafka")
	}
	if depErr != nil {
		return res, depErr
	}
	if kafkaErr != nil {
		return res, kafkaErr
	}
	return res, nil
}

func (r *Relay) read(ctx context.Context, shards []int) ([]outboxRow, error) {
	shard := shards[0]
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading shard %d: %w", shard, err)
	}
	defer conn.Release()
	start := time.Now()
	var rows pgx.Rows
	if len(shards) == 1 {
		rows, err = conn.Query(ctx, r.sql.read, shard, r.cfg.BatchSize)
	} else {
		rows, err = conn.Query(ctx, r.sql.readMany, shards, r.cfg.BatchSize)
	}
	if err != nil {
		return nil, fmt.Errorf("reading shard %d: %w", shard, err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var o outboxRow
		if err := rows.Scan(&o.id, &o.eventID, &o.topic, &o.key, &o.typ, &o.aggType, &o.subject, &o.fp, &o.framed,
			&o.headers, &o.occurred, &o.created, &o.corr, &o.caus, &o.source, &o.traceparent, &o.tracestate); err != nil {
			return nil, fmt.Errorf("reading shard %d: %w", shard, err)
		}
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading shard %d: %w", shard, err)
	}
	if r.cfg.Hooks.OnRead != nil {
		r.cfg.Hooks.OnRead(shard, len(out), time.Since(start))
	}
	return out, nil
}

// appendUUID appends u in its canonical 36-character form.
func appendUUID(dst []byte, u uuid.UUID) []byte {
	const hex = "0123456789abcdef"
	for i, b := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, hex[b>>4], hex[b&0x0f])
	}
	return dst
}

// framedPayload scans the payload column into a buffer with room for the wire
// header in front, so framing the record writes 5 bytes instead of copying the
// payload again.
type framedPayload []byte

// ScanBytes implements pgtype.BytesScanner; src is driver memory, copied once here.
func (f *framedPayload) ScanBytes(src []byte) error {
	if src == nil {
		return errors.New("payload is NULL")
	}
	b := make([]byte, wire.HeaderLen+len(src))
	copy(b[wire.HeaderLen:], src)
	*f = b
	return nil
}

// headerScan scans the headers column (jsonb) straight from driver memory: the
// common '{}' costs no allocation.
type headerScan map[string]string

// ScanBytes implements pgtype.BytesScanner.
func (h *headerScan) ScanBytes(src []byte) error {
	*h = headerMap(src)
	return nil
}

// headerMap reads the headers column. Values should be strings; anything else a
// plain-SQL writer put there is passed on as its JSON text rather than failing the
// shard's read.
func headerMap(raw []byte) map[string]string {
	if len(raw) <= 2 { // "{}", the common case
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		var s string
		if json.Unmarshal(v, &s) == nil {
			out[k] = s
		} else {
			out[k] = string(v)
		}
	}
	return out
}

func (r *Relay) loadSchemas(ctx context.Context, rows []outboxRow) error {
	var missing [][]byte
	seen := map[[32]byte]bool{}
	r.schemaMu.RLock()
	for _, o := range rows {
		var k [32]byte
		copy(k[:], o.fp)
		if _, ok := r.schemas[k]; !ok && !seen[k] {
			seen[k] = true
			missing = append(missing, o.fp)
		}
	}
	r.schemaMu.RUnlock()
	if len(missing) == 0 {
		return nil
	}
	qr, err := r.pool.Query(ctx, r.sql.schemas, missing)
	if err != nil {
		return fmt.Errorf("reading schemas: %w", err)
	}
	defer qr.Close()
	r.schemaMu.Lock()
	defer r.schemaMu.Unlock()
	for qr.Next() {
		var fp []byte
		var text string
		if err := qr.Scan(&fp, &text); err != nil {
			return err
		}
		var k [32]byte
		copy(k[:], fp)
		r.schemas[k] = text
	}
	return qr.Err()
}

// build frames one row into a Kafka record. It returns a park kind and reason for
// events that cannot be published as they are, or an error when the registry is
// unavailable.
func (r *Relay) build(ctx context.Context, o *outboxRow) (*kgo.Record, string, string, error) {
	var k [32]byte
	copy(k[:], o.fp)
	r.schemaMu.RLock()
	text, ok := r.schemas[k]
	r.schemaMu.RUnlock()
	if !ok {
		return nil, ParkInvalid, "schema fingerprint not in the schema store", nil
	}
	id, err := r.cfg.Registry.ID(ctx, o.subject, text, r.cfg.AutoRegister)
	switch {
	case err == nil:
	case registry.IsIncompatible(err):
		return nil, ParkIncompatible, err.Error(), nil
	case registry.IsNotFound(err) && !r.cfg.AutoRegister:
		return nil, ParkNotRegistered, err.Error(), nil
	default:
		return nil, "", "", err
	}
	value := []byte(o.framed)
	wire.PutHeader(value, uint32(id))
	// The key and the header values share one allocation: they live as long as the
	// record. A slice handed out stays valid if a later append moves the arena.
	n := len(o.key) + 36 + 35 + len(o.typ) + len(o.aggType) + len(o.corr) + len(o.caus) + len(o.source) +
		len(o.subject) + len(o.traceparent) + len(o.tracestate)
	for _, v := range o.headers {
		n += len(v)
	}
	arena := make([]byte, 0, n)
	mark := 0
	take := func() []byte {
		v := arena[mark:len(arena):len(arena)]
		mark = len(arena)
		return v
	}
	hs := make([]kgo.RecordHeader, 0, 10+len(o.headers))
	add := func(k, v string) {
		if v != "" {
			arena = append(arena, v...)
			hs = append(hs, kgo.RecordHeader{Key: k, Value: take()})
		}
	}
	arena = append(arena, o.key...)
	key := take()
	arena = appendUUID(arena, o.eventID)
	hs = append(hs, kgo.RecordHeader{Key: envelope.EventID, Value: take()})
	add(envelope.EventType, o.typ)
	add(envelope.AggregateType, o.aggType)
	arena = o.occurred.UTC().AppendFormat(arena, time.RFC3339Nano)
	hs = append(hs, kgo.RecordHeader{Key: envelope.OccurredAt, Value: take()})
	add(envelope.CorrelationID, o.corr)
	add(envelope.CausationID, o.caus)
	add(envelope.Source, o.source)
	add(envelope.Subject, o.subject)
	add(envelope.TraceParent, o.traceparent)
	add(envelope.TraceState, o.tracestate)
	size := len(o.key) + len(value) + 64
	for hk, hv := range o.headers {
		if envelope.Reserved(hk) {
			continue
		}
		add(hk, hv)
	}
	for _, h := range hs {
		size += len(h.Key) + len(h.Value) + 4
	}
	if size > r.cfg.MaxRecordBytes {
		return nil, ParkTooLarge, fmt.Sprintf("record is %d bytes, limit %d (MaxRecordBytes)", size, r.cfg.MaxRecordBytes), nil
	}
	o.framed = nil // the record holds it now
	return &kgo.Record{Topic: o.topic, Key: key, Value: value, Headers: hs}, "", "", nil
}

// classifyProduce returns a park kind for produce errors that retrying cannot fix.
func (r *Relay) classifyProduce(ctx context.Context, o *outboxRow, err error) (string, string) {
	switch {
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge):
		return ParkTooLarge, err.Error()
	case errors.Is(err, kerr.InvalidRecord), errors.Is(err, kerr.InvalidTopicException):
		return ParkInvalid, err.Error()
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		if r.cfg.AutoCreateTopics {
			r.createTopic(ctx, o.topic)
			return "", ""
		}
		return ParkTopicMissing, fmt.Sprintf("topic %q does not exist (create it, or run the relay with auto-create topics)", o.topic)
	}
	return "", ""
}

func (r *Relay) createTopic(ctx context.Context, topic string) {
	if _, done := r.topicsMade.Load(topic); done {
		return
	}
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := r.adm.CreateTopic(cctx, r.cfg.TopicPartitions, -1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		r.log.Warn("auto-creating topic failed", "topic", topic, "err", err)
		return
	}
	r.topicsMade.Store(topic, true)
	r.log.Info("auto-created topic", "topic", topic, "partitions", r.cfg.TopicPartitions)
}
