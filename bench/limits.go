package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/relaysql"
)

// The limits are upper bounds for the relay: each does the relay's work with the
// relay's own settings (read from the relaybox binary, relayConf) and nothing else.

// kafkaCodec maps the relay's --compression to franz-go's codecs, as the relay does.
func kafkaCodec(name string) ([]kgo.CompressionCodec, error) {
	switch name {
	case "snappy":
		return []kgo.CompressionCodec{kgo.SnappyCompression(), kgo.NoCompression()}, nil
	case "lz4":
		return []kgo.CompressionCodec{kgo.Lz4Compression(), kgo.NoCompression()}, nil
	case "zstd":
		return []kgo.CompressionCodec{kgo.ZstdCompression(), kgo.NoCompression()}, nil
	case "gzip":
		return []kgo.CompressionCodec{kgo.GzipCompression(), kgo.NoCompression()}, nil
	case "none", "":
		return []kgo.CompressionCodec{kgo.NoCompression()}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", name)
}

// kafkaLimitResult is one run of the Kafka limit.
type kafkaLimitResult struct {
	EPS      float64
	Settings map[string]any
}

// kafkaLimit produces the drain's N records with franz-go and the relay's producer
// options (relay.New: acks=all, idempotent, its linger, compression, batch bytes and
// buffered records), the relay's framing (0x00, schema id, Avro), key and two envelope
// headers. Before the clock starts, every partition of the topic has taken a record
// from this client (leaders known, connections and producer id ready). The values are
// encoded once per key and shared (read-only) by the records; each record is built
// just before it is produced and released on its ack, so the GC does not scan N
// records inside the timed window, and at most MaxBufferedRecords are in flight, as
// in the relay.
func (h *harness) kafkaLimit(ctx context.Context, rc *relayConf) (kafkaLimitResult, error) {
	var res kafkaLimitResult
	n := h.cfg.N
	keys := h.cfg.Keys
	vals := make([][]byte, keys)
	keyBytes := make([][]byte, keys)
	ids := make([][]byte, keys)
	now := time.Now()
	for k := range keys {
		id, _ := uuid.NewV7()
		ev := h.es.event(int64(k), id, now)
		b, err := encodeEvent(&ev)
		if err != nil {
			return res, err
		}
		vals[k] = append([]byte{0, 0, 0, 0, 1}, b...)
		keyBytes[k] = []byte(ev.Key)
		ids[k] = []byte(ev.EventID)
	}
	h.kafkaLimitRuns++ // a repeat must not reuse a topic still being deleted
	topic := h.topicName("limit", h.runID+"_k"+strconv.Itoa(h.kafkaLimitRuns))
	if err := h.createTopic(ctx, topic); err != nil {
		return res, err
	}
	defer h.deleteTopic(ctx, topic)
	codecs, err := kafkaCodec(rc.Compression)
	if err != nil {
		return res, err
	}
	opts := []kgo.Opt{kgo.SeedBrokers(h.brokers...), kgo.DefaultProduceTopic(topic),
		// relay.New's producer options, from the relay's effective configuration
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(max(rc.Linger, 0)),
		kgo.ProducerBatchCompression(codecs...),
		kgo.ProducerBatchMaxBytes(int32(max(rc.MaxRecordBytes, 1<<20))),
		kgo.MaxBufferedRecords(max(10000, 4*rc.BatchSize)),
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	// Warm every partition: produce keys until each partition has acked one.
	parts := map[int32]bool{}
	for i := 0; len(parts) < h.cfg.Partitions; i++ {
		if i > 100*h.cfg.Partitions {
			return res, fmt.Errorf("warm-up: %d of %d partitions reached", len(parts), h.cfg.Partitions)
		}
		r := &kgo.Record{Key: []byte("warm-" + strconv.Itoa(i)), Value: vals[0]}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
		parts[r.Partition] = true
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err)
		}
		wg.Done()
	}
	etype := []byte("BenchEvent")
	wg.Add(n)
	start := time.Now()
	for i := range n {
		k := i % keys
		cl.Produce(ctx, &kgo.Record{Key: keyBytes[k], Value: vals[k], Headers: []kgo.RecordHeader{
			{Key: "relaybox.event_id", Value: ids[k]}, {Key: "relaybox.event_type", Value: etype}}}, promise)
	}
	wg.Wait()
	el := time.Since(start)
	if failed.Load() > 0 {
		return res, fmt.Errorf("%d records failed: %v", failed.Load(), firstErr.Load())
	}
	res.EPS = float64(n) / el.Seconds()
	// What the client actually ran with.
	res.Settings = map[string]any{
		"client":               "franz-go " + "kgo (the relay's producer options, relay.New)",
		"acks":                 "all",
		"idempotent":           !cl.OptValue(kgo.DisableIdempotentWrite).(bool),
		"linger":               cl.OptValue(kgo.ProducerLinger).(time.Duration).String(),
		"compression":          rc.Compression,
		"batch_max_bytes":      cl.OptValue(kgo.ProducerBatchMaxBytes),
		"max_buffered_records": cl.OptValue(kgo.MaxBufferedRecords),
		"partitions_warmed":    len(parts),
		"records":              n,
		"value_bytes":          len(vals[0]),
		"records_alive":        "at most max_buffered_records (values shared per key, records built in the loop)",
	}
	return res, nil
}

// pgLimitResult is one run of the Postgres limit: the best connection count's figure
// and every count's.
type pgLimitResult struct {
	EPS           float64
	Best          int
	ByConnections map[string]float64
	Settings      map[string]any
}

// pgLimit reads and deletes the drain's N rows in relaybox's outbox table as the relay
// does, with nothing else: the relay's batch read (relaysql.ReadShard) for one shard,
// the relay's batch size, then the outcome as the relay records it, one transaction
// per batch committing without waiting for the WAL flush (set_config) and the delete,
// sent together without BEGIN and COMMIT (one implicit transaction). It runs once per
// connection count in PGWorkers (the relay's pool size among them), each worker
// owning its share of the 64 shards, on the same rows (copied back from a template
// before each count), and reports the best.
func (h *harness) pgLimit(ctx context.Context, rc *relayConf) (pgLimitResult, error) {
	res := pgLimitResult{ByConnections: map[string]float64{}}
	sys := &relayboxSystem{}
	inst, err := sys.setup(ctx, h, h.runID+"_p")
	if err != nil {
		return res, err
	}
	defer inst.teardown(ctx)
	ri := inst.(*relayboxInstance)
	t := newTracker(h.es, int64(h.cfg.N))
	if err := h.fill(ctx, inst, t, int64(h.cfg.N)); err != nil {
		return res, err
	}
	o := pgx.Identifier{ri.schema, "outbox"}.Sanitize()
	tpl := pgx.Identifier{ri.schema, "outbox_limit_template"}.Sanitize()
	const cols = `event_id, topic, key, event_type, aggregate_type, subject, schema_fingerprint, payload, headers,
		occurred_at, created_at, correlation_id, causation_id, source, traceparent, tracestate`
	if _, err := h.pool.Exec(ctx, `CREATE TABLE `+tpl+` AS SELECT `+cols+` FROM `+o+` ORDER BY id`); err != nil {
		return res, fmt.Errorf("template: %w", err)
	}
	counts := slices.Clone(h.cfg.PGWorkers)
	if !slices.Contains(counts, rc.PoolSize) {
		counts = append(counts, rc.PoolSize)
	}
	slices.Sort(counts)
	for i, conns := range counts {
		if i > 0 { // the same rows again, in a fresh table file
			if _, err := h.pool.Exec(ctx, `TRUNCATE `+o); err != nil {
				return res, err
			}
			if _, err := h.pool.Exec(ctx, `INSERT INTO `+o+` (`+cols+`) SELECT `+cols+` FROM `+tpl); err != nil {
				return res, fmt.Errorf("refill: %w", err)
			}
		}
		h.exec(ctx, `VACUUM ANALYZE `+o)
		eps, err := h.pgLimitOnce(ctx, ri.schema, conns, rc.BatchSize)
		if err != nil {
			return res, fmt.Errorf("%d connections: %w", conns, err)
		}
		res.ByConnections[strconv.Itoa(conns)] = r1(eps)
		if eps > res.EPS {
			res.EPS, res.Best = eps, conns
		}
	}
	res.Settings = map[string]any{
		"table":       "relaybox's outbox, filled with the drain's N rows by outbox.Writer (then copied back from a template for each connection count)",
		"claim":       "the relay's batch read (internal/relaysql.ReadShard): one shard, ORDER BY id LIMIT batch_size",
		"outcome":     "set_config('synchronous_commit', 'off', true); DELETE WHERE id = ANY($1) (one pgx batch per read, one implicit transaction, as the relay)",
		"batch_size":  rc.BatchSize,
		"connections": counts,
		"shards":      "each connection drains its share of the 64 shards",
		"figure":      "the best connection count's",
	}
	return res, nil
}

// rawInt8 decodes a bigint column as the wire carries it (binary or text format).
func rawInt8(format int16, b []byte) (int64, error) {
	if format == pgx.BinaryFormatCode {
		if len(b) != 8 {
			return 0, fmt.Errorf("bigint of %d bytes", len(b))
		}
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	return strconv.ParseInt(string(b), 10, 64)
}

func (h *harness) pgLimitOnce(ctx context.Context, schema string, conns, batch int) (float64, error) {
	read := relaysql.ReadShard(schema)
	del := `DELETE FROM ` + pgx.Identifier{schema, "outbox"}.Sanitize() + ` WHERE id = ANY($1::bigint[])`
	var total atomic.Int64
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := h.pool.Acquire(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer c.Release()
			ids := make([]int64, 0, batch)
			for shard := w; shard < 64; shard += conns {
				for {
					rows, err := c.Query(ctx, read, shard, batch)
					if err != nil {
						errs <- err
						return
					}
					ids = ids[:0]
					for rows.Next() {
						// Only the id is decoded; the other columns come off the wire.
						id, err := rawInt8(rows.FieldDescriptions()[0].Format, rows.RawValues()[0])
						if err != nil {
							rows.Close()
							errs <- err
							return
						}
						ids = append(ids, id)
					}
					rows.Close()
					if err := rows.Err(); err != nil {
						errs <- err
						return
					}
					if len(ids) == 0 {
						break
					}
					b := &pgx.Batch{}
					b.Queue(relaysql.AsyncCommit)
					b.Queue(del, ids)
					if err := c.SendBatch(ctx, b).Close(); err != nil {
						errs <- err
						return
					}
					total.Add(int64(len(ids)))
					if len(ids) < batch {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	if total.Load() != int64(h.cfg.N) {
		return 0, fmt.Errorf("deleted %d of %d rows", total.Load(), h.cfg.N)
	}
	return float64(h.cfg.N) / el.Seconds(), nil
}
