package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/wire"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
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

// read reads the oldest pending rows of shards into mem (nil: memory of their own).
func (r *Relay) read(ctx context.Context, shards []int, mem *batchMem) ([]outboxRow, error) {
	shard := shards[0]
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading shard %d: %w", shard, err)
	}
	defer conn.Release()
	start := time.Now()
	// One round trip: the read in a transaction of its own whose planner may not
	// sort (pinReadPlan). No BEGIN and COMMIT: a batch's statements run in one
	// implicit transaction, up to the Sync pgx sends after the last, and the pin
	// (set_config(..., true)) lasts until it ends.
	b := &pgx.Batch{}
	b.Queue(pinReadPlan)
	if len(shards) == 1 {
		b.Queue(r.sql.read, shard, r.cfg.BatchSize)
	} else {
		b.Queue(r.sql.readMany, shards, r.cfg.BatchSize)
	}
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("reading shard %d: %w", shard, err)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("reading shard %d: %w", shard, err)
	}
	defer rows.Close()
	var out []outboxRow
	var sl *slab
	if mem != nil {
		out, sl = mem.rows[:0], &mem.slab
		defer func() { mem.rows = out }() // grown, perhaps; also what a failed read filled
	}
	for rows.Next() {
		var o outboxRow
		o.framed.slab = sl
		if err := rows.Scan(&o.id, &o.eventID, &o.topic, &o.key, &o.typ, &o.aggType, &o.subject, &o.fp, &o.framed,
			&o.headers, &o.occurred, &o.created, &o.corr, &o.caus, &o.source, &o.traceparent, &o.tracestate); err != nil {
			return nil, fmt.Errorf("reading shard %d: %w", shard, err)
		}
		out = append(out, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading shard %d: %w", shard, err)
	}
	if err := br.Close(); err != nil { // the end of its transaction
		return nil, fmt.Errorf("reading shard %d: %w", shard, err)
	}
	if r.cfg.Hooks.OnRead != nil {
		r.cfg.Hooks.OnRead(ReadEvent{Shard: shard, Rows: len(out), Duration: time.Since(start)})
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
// payload again. The buffer comes from slab when set.
type framedPayload struct {
	b    []byte
	slab *slab
}

// ScanBytes implements pgtype.BytesScanner; src is driver memory, copied once here.
func (f *framedPayload) ScanBytes(src []byte) error {
	if src == nil {
		return errors.New("payload is NULL")
	}
	b := f.slab.alloc(wire.HeaderLen + len(src))
	copy(b[wire.HeaderLen:], src)
	f.b = b
	return nil
}

// batchMem is the memory of a batch's rows and payloads, used again by a later
// batch once every record of this one is acknowledged or failed: franz-go holds a
// record's value only until its promise is called (produceBatch waits for them all,
// produceTxn too). A drain of 1 KiB events otherwise allocates ~2.4 KB a row for the
// GC to collect: the payload, and the rows slice growing by doubling. The relay
// keeps at most MaxInFlightBatches of them (Relay.mems).
type batchMem struct {
	rows []outboxRow
	slab slab
}

// getMem returns a batchMem for a batch: a kept one if there is one.
func (r *Relay) getMem() *batchMem {
	select {
	case m := <-r.mems:
		return m
	default:
		return new(batchMem)
	}
}

// putMem keeps m for another batch (or leaves it to the GC when enough are kept);
// rows and records built from it must be done with.
func (r *Relay) putMem(m *batchMem) {
	// Only the rows read (read records them, failed or not; past them the array is
	// zero already): a tiny batch clears a few rows, not the capacity a backlog grew
	// (4,000 rows, 1.3 MB).
	clear(m.rows)
	m.rows = m.rows[:0]
	m.slab.reset()
	select {
	case r.mems <- m:
	default:
	}
}

// slab hands out byte slices from chunks that reset makes reusable.
type slab struct {
	chunks    [][]byte
	cur, used int // the chunk handed out from, and how much of it is handed out
}

// slabChunk is the size of a slab's chunks; a payload above a quarter of it gets
// memory of its own. A slab keeps at most slabKeep chunks across a reset.
const (
	slabChunk = 256 << 10
	slabKeep  = 16
)

// alloc returns n bytes (not zeroed) that s owns, or fresh ones when s is nil.
func (s *slab) alloc(n int) []byte {
	if s == nil || n > slabChunk/4 {
		return make([]byte, n)
	}
	if s.cur < len(s.chunks) && s.used+n > slabChunk { // the chunk is full: the next
		s.cur, s.used = s.cur+1, 0
	}
	if s.cur == len(s.chunks) {
		s.chunks = append(s.chunks, make([]byte, slabChunk))
	}
	b := s.chunks[s.cur][s.used : s.used+n : s.used+n]
	s.used += n
	return b
}

// reset makes every chunk of s reusable: nothing handed out may be used after.
func (s *slab) reset() {
	if len(s.chunks) > slabKeep {
		clear(s.chunks[slabKeep:])
		s.chunks = s.chunks[:slabKeep]
	}
	s.cur, s.used = 0, 0
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
func (r *Relay) build(ctx context.Context, o *outboxRow) (*kgo.Record, ParkReason, string, error) {
	var k [32]byte
	copy(k[:], o.fp)
	r.schemaMu.RLock()
	text, ok := r.schemas[k]
	r.schemaMu.RUnlock()
	if !ok {
		return nil, ParkInvalid, "schema fingerprint not in the schema store", nil
	}
	id, err := r.cfg.Registry.ID(ctx, o.subject, text, !r.cfg.DisableAutoRegister)
	switch {
	case err == nil:
	case errors.Is(err, ErrSchemaIncompatible) || registry.IsIncompatible(err):
		return nil, ParkIncompatible, err.Error(), nil
	case (errors.Is(err, ErrSchemaNotRegistered) || registry.IsNotFound(err)) && r.cfg.DisableAutoRegister:
		// A registry may answer 404 for a schema registered a moment ago (Apicurio's
		// visibility lag, a lagging replica, a proxy): retried for SchemaNotFoundGrace
		// before it counts as permanent.
		key := o.subject + "\x00" + string(o.fp)
		first, _ := r.notFound.LoadOrStore(key, time.Now())
		if time.Since(first.(time.Time)) < r.cfg.SchemaNotFoundGrace {
			return nil, "", "", fmt.Errorf("schema not (yet) registered under %s, retried for %s: %w", o.subject, r.cfg.SchemaNotFoundGrace, err)
		}
		r.notFound.Delete(key)
		return nil, ParkNotRegistered, err.Error(), nil
	default:
		return nil, "", "", err
	}
	value := o.framed.b
	wire.PutHeader(value, uint32(id))
	// The key and the header values share one allocation: they live as long as the
	// record. A slice handed out stays valid if a later append moves the arena.
	n := len(o.key) + 36 + 35 + len(o.typ) + len(o.aggType) + len(o.corr) + len(o.caus) + len(o.source) +
		len(o.subject) + len(o.traceparent) + len(o.tracestate)
	for _, v := range o.headers {
		n += len(v)
	}
	ce := r.cfg.CloudEvents.on(o.topic)
	if ce {
		n += r.cfg.CloudEvents.size(o)
	}
	arena := make([]byte, 0, n)
	mark := 0
	take := func() []byte {
		v := arena[mark:len(arena):len(arena)]
		mark = len(arena)
		return v
	}
	// Exactly the headers the record gets (at most): a header is 40 bytes of
	// pointers for the GC to scan, and most optional ones are empty.
	nh := 3 + len(o.headers) // event id, type, occurred-at
	for _, v := range [...]string{o.aggType, o.corr, o.caus, o.source, o.subject, o.traceparent, o.tracestate} {
		if v != "" {
			nh++
		}
	}
	if ce {
		nh += cloudEventsHeaders
	}
	hs := make([]kgo.RecordHeader, 0, nh)
	add := func(k, v string) {
		if v != "" {
			arena = append(arena, v...)
			hs = append(hs, kgo.RecordHeader{Key: k, Value: take()})
		}
	}
	arena = append(arena, o.key...)
	key := take()
	arena = appendUUID(arena, o.eventID)
	eventID := take()
	hs = append(hs, kgo.RecordHeader{Key: envelope.EventID, Value: eventID})
	arena = append(arena, o.typ...) // never empty (a CHECK)
	typ := take()
	hs = append(hs, kgo.RecordHeader{Key: envelope.EventType, Value: typ})
	add(envelope.AggregateType, o.aggType)
	arena = o.occurred.UTC().AppendFormat(arena, time.RFC3339Nano)
	occurred := take()
	hs = append(hs, kgo.RecordHeader{Key: envelope.OccurredAt, Value: occurred})
	add(envelope.CorrelationID, o.corr)
	add(envelope.CausationID, o.caus)
	add(envelope.Source, o.source)
	add(envelope.Subject, o.subject)
	add(envelope.TraceParent, o.traceparent)
	add(envelope.TraceState, o.tracestate)
	size := len(o.key) + len(value) + 64
	if ce {
		hs, arena = r.cfg.CloudEvents.headers(hs, arena, o, eventID, typ, occurred, key, id)
		mark = len(arena)
	}
	for hk, hv := range o.headers {
		if envelope.Reserved(hk) || ce && envelope.CloudEventsOwn(hk) {
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
	o.framed.b = nil // the record holds it now
	return &kgo.Record{Topic: o.topic, Key: key, Value: value, Headers: hs}, "", "", nil
}

// classifyProduce returns a park kind for produce errors that retrying cannot fix.
func (r *Relay) classifyProduce(ctx context.Context, o *outboxRow, err error) (ParkReason, string) {
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
		// A broker that is starting answers UNKNOWN_TOPIC_OR_PARTITION for partitions
		// it has not loaded yet: the row is parked only when the cluster's metadata
		// says the topic does not exist, and retried otherwise.
		if !r.topicAbsent(ctx, o.topic) {
			return "", ""
		}
		return ParkTopicMissing, fmt.Sprintf("topic %q does not exist (create it, or run the relay with auto-create topics)", o.topic)
	}
	return "", ""
}

// topicAbsent reports whether Kafka's metadata says topic does not exist; false when
// the metadata cannot be had or lists the topic. Answers are cached for a batch's
// worth of rows: a batch of a missing topic asks once.
func (r *Relay) topicAbsent(ctx context.Context, topic string) bool {
	if v, ok := r.absentTopics.Load(topic); ok {
		if at := v.(time.Time); time.Since(at) < time.Second {
			return true
		}
	}
	// Not the batch's context: its lease deadline may have passed while the produce
	// waited, and the answer is needed to decide the row's fate.
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	td, err := r.adm.ListTopics(mctx, topic)
	if err != nil {
		return false
	}
	d, ok := td[topic]
	absent := !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition)
	if absent {
		r.absentTopics.Store(topic, time.Now())
	}
	return absent
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
