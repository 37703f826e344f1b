package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv("DATABASE_URL") == "" && !testenv.Required() {
		// Examples print what they read from Postgres; without it only tests run
		// (and the integration tests skip, naming DATABASE_URL).
		fmt.Println("outbox: DATABASE_URL unset: examples not run, integration tests skip")
		_ = flag.Set("test.run", "^(Test|Fuzz)")
	}
	os.Exit(m.Run())
}

type OrderCreated struct {
	OrderID string    `avro:"order_id"`
	SKU     string    `avro:"sku"`
	Qty     int32     `avro:"qty"`
	At      time.Time `avro:"at"`
}

func (OrderCreated) AvroNamespace() string { return "shop.v1" }

type setup struct {
	pool   *pgxpool.Pool
	schema string
	w      *outbox.Writer
}

func newSetup(t *testing.T, cfg *outbox.Config) setup {
	t.Helper()
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	c := outbox.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Schema = schema
	w, err := outbox.New(pool, &c)
	if err != nil {
		t.Fatal(err)
	}
	return setup{pool, schema, w}
}

func (s setup) count(t *testing.T) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM `+pgx.Identifier{s.schema, "outbox"}.Sanitize()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestWrite_CommitStoresEveryEnvelopeField(t *testing.T) {
	t.Parallel()
	s := newSetup(t, &outbox.Config{Source: "orders-svc"})
	ctx := context.Background()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx = trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	id := uuid.Must(uuid.NewV7())
	occurred := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	v := OrderCreated{OrderID: "o-1", SKU: "sku-9", Qty: 3, At: occurred}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return s.w.Write(ctx, tx, outbox.Event{
			ID: id, Topic: "orders", Key: "o-1", Type: "OrderCreated", AggregateType: "Order", Value: v,
			OccurredAt: occurred, CorrelationID: "corr-1", CausationID: "cause-1", Headers: map[string]string{"tenant": "acme"},
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	var (
		gotID                                                              uuid.UUID
		topic, key, typ, agg, subject, corr, caus, src, tp, ts, schemaText string
		shard                                                              int
		payload                                                            []byte
		headers                                                            map[string]string
		occ, created                                                       time.Time
		attempts                                                           int
		parked, published                                                  *time.Time
	)
	err = s.pool.QueryRow(ctx, `SELECT o.event_id, o.topic, o.key, o.shard, o.event_type, o.aggregate_type, o.subject,
		o.payload, o.headers, o.occurred_at, o.created_at, o.correlation_id, o.causation_id, o.source, o.traceparent,
		o.tracestate, o.attempts, o.parked_at, o.published_at, s.schema
		FROM `+pgx.Identifier{s.schema, "outbox"}.Sanitize()+` o JOIN `+pgx.Identifier{s.schema, "schemas"}.Sanitize()+` s
		ON s.fingerprint = o.schema_fingerprint`).Scan(&gotID, &topic, &key, &shard, &typ, &agg, &subject, &payload, &headers,
		&occ, &created, &corr, &caus, &src, &tp, &ts, &attempts, &parked, &published, &schemaText)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("event_id", gotID, id)
	check("topic", topic, "orders")
	check("key", key, "o-1")
	check("shard", shard, outbox.Shard("o-1"))
	check("event_type", typ, "OrderCreated")
	check("aggregate_type", agg, "Order")
	check("subject", subject, "orders-value")
	check("headers", headers["tenant"], "acme")
	check("occurred_at", occ.UTC(), occurred)
	check("correlation_id", corr, "corr-1")
	check("causation_id", caus, "cause-1")
	check("source", src, "orders-svc")
	check("traceparent", tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	check("attempts", attempts, 0)
	if parked != nil || published != nil || time.Since(created) > time.Minute {
		t.Errorf("parked=%v published=%v created=%v", parked, published, created)
	}
	sch := avro.MustParse(schemaText)
	var back OrderCreated
	if err := avro.Unmarshal(sch, payload, &back); err != nil || back != v {
		t.Fatalf("payload decodes to %+v (%v), want %+v", back, err, v)
	}
}

func TestWrite_AssignsTimeOrderedUUIDv7(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	evs := make([]outbox.Event, 20)
	for i := range evs {
		evs[i] = outbox.Event{Topic: "t", Key: "k", Type: "E", Value: OrderCreated{OrderID: fmt.Sprint(i)}}
	}
	if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return s.w.Write(ctx, tx, evs...) }); err != nil {
		t.Fatal(err)
	}
	rows, _ := s.pool.Query(ctx, `SELECT event_id FROM `+pgx.Identifier{s.schema, "outbox"}.Sanitize()+` ORDER BY id`)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil || len(ids) != 20 {
		t.Fatal(err, len(ids))
	}
	for i, id := range ids {
		if id.Version() != 7 {
			t.Fatalf("id %s is version %d", id, id.Version())
		}
		if i > 0 && strings.Compare(ids[i-1].String(), id.String()) >= 0 {
			t.Fatalf("ids not increasing: %s then %s", ids[i-1], id)
		}
	}
}

func TestWrite_RollbackLeavesNothing(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Publish(ctx, s.w, tx, "orders", "o-1", "OrderCreated", OrderCreated{OrderID: "o-1"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := s.count(t); n != 0 {
		t.Fatalf("rows after rollback = %d", n)
	}
}

func TestWrite_SavepointRollbackDropsOnlyItsEvents(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := outbox.Publish(ctx, s.w, tx, "orders", "kept-1", "OrderCreated", OrderCreated{OrderID: "1"}); err != nil {
			return err
		}
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		if err := outbox.Publish(ctx, s.w, sp, "orders", "gone", "OrderCreated", OrderCreated{OrderID: "2"}); err != nil {
			return err
		}
		if err := sp.Rollback(ctx); err != nil {
			return err
		}
		return outbox.Publish(ctx, s.w, tx, "orders", "kept-2", "OrderCreated", OrderCreated{OrderID: "3"})
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, _ := s.pool.Query(ctx, `SELECT key FROM `+pgx.Identifier{s.schema, "outbox"}.Sanitize()+` ORDER BY id`)
	keys, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	if strings.Join(keys, ",") != "kept-1,kept-2" {
		t.Fatalf("keys = %v", keys)
	}
}

func TestWrite_ConcurrentTransactionsAllLandWithHashShards(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
				evs := make([]outbox.Event, 10)
				for j := range evs {
					evs[j] = outbox.Event{Topic: "orders", Key: fmt.Sprintf("key-%d-%d", i, j), Type: "OrderCreated", Value: OrderCreated{OrderID: fmt.Sprint(i)}}
				}
				return s.w.Write(ctx, tx, evs...)
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	rows, _ := s.pool.Query(ctx, `SELECT key, shard FROM `+pgx.Identifier{s.schema, "outbox"}.Sanitize())
	n, used := 0, map[int]bool{}
	for rows.Next() {
		var key string
		var shard int
		if err := rows.Scan(&key, &shard); err != nil {
			t.Fatal(err)
		}
		if shard != outbox.Shard(key) {
			t.Fatalf("key %s: shard %d in db, %d in Go", key, shard, outbox.Shard(key))
		}
		used[shard] = true
		n++
	}
	if n != 500 {
		t.Fatalf("rows = %d, want 500", n)
	}
	if len(used) < 60 {
		t.Fatalf("500 keys hit only %d of 64 shards", len(used))
	}
}

// A row written with plain SQL, as a service in another language would, is a valid row:
// same shard as the Go writer computes, schema resolvable, payload decodable.
func TestTableContract_PlainSQLRowIsValid(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	schemaText := `{"type":"record","name":"Ping","fields":[{"name":"n","type":"long"}]}`
	payload, _ := avro.Marshal(avro.MustParse(schemaText), map[string]any{"n": int64(42)})
	sc := pgx.Identifier{s.schema}.Sanitize()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+sc+`.schemas (fingerprint, schema) VALUES (sha256(convert_to($1, 'UTF8')), $1) ON CONFLICT DO NOTHING`, schemaText); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+sc+`.outbox (event_id, topic, key, event_type, subject, schema_fingerprint, payload)
			VALUES ('0190f5c8-0000-7000-8000-000000000001', 'pings', 'ping-key', 'Ping', 'pings-value', sha256(convert_to($1, 'UTF8')), $2)`, schemaText, payload); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_notify('relaybox_outbox', '')`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var shard int
	var fp []byte
	var gotSchema string
	var gotPayload []byte
	err = s.pool.QueryRow(ctx, `SELECT o.shard, o.schema_fingerprint, s.schema, o.payload FROM `+sc+`.outbox o JOIN `+sc+`.schemas s ON s.fingerprint = o.schema_fingerprint`).Scan(&shard, &fp, &gotSchema, &gotPayload)
	if err != nil {
		t.Fatal(err)
	}
	if shard != outbox.Shard("ping-key") {
		t.Fatalf("shard %d, Go says %d", shard, outbox.Shard("ping-key"))
	}
	if want := outbox.Fingerprint(schemaText); string(fp) != string(want[:]) {
		t.Fatal("fingerprint differs from outbox.Fingerprint")
	}
	var out map[string]any
	if err := avro.Unmarshal(avro.MustParse(gotSchema), gotPayload, &out); err != nil || out["n"] != int64(42) {
		t.Fatalf("decoded %v %v", out, err)
	}
	// The contract's constraints refuse what the relay could not publish.
	for name, q := range map[string]string{
		"empty key":    `INSERT INTO ` + sc + `.outbox (event_id, topic, key, event_type, subject, schema_fingerprint, payload) VALUES (gen_random_uuid(), 'pings', '', 'Ping', 's', sha256(convert_to($1, 'UTF8')), '\x00')`,
		"long topic":   `INSERT INTO ` + sc + `.outbox (event_id, topic, key, event_type, subject, schema_fingerprint, payload) VALUES (gen_random_uuid(), repeat('t', 250), 'k', 'Ping', 's', sha256(convert_to($1, 'UTF8')), '\x00')`,
		"long key":     `INSERT INTO ` + sc + `.outbox (event_id, topic, key, event_type, subject, schema_fingerprint, payload) VALUES (gen_random_uuid(), 'pings', repeat('k', 1025), 'Ping', 's', sha256(convert_to($1, 'UTF8')), '\x00')`,
		"shard forced": `INSERT INTO ` + sc + `.outbox (event_id, topic, key, shard, event_type, subject, schema_fingerprint, payload) VALUES (gen_random_uuid(), 'pings', 'k', 3, 'Ping', 's', sha256(convert_to($1, 'UTF8')), '\x00')`,
	} {
		if _, err := s.pool.Exec(ctx, q, schemaText); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

type OrderCreatedV2 struct {
	OrderID string    `avro:"order_id"`
	SKU     string    `avro:"sku"`
	Qty     int32     `avro:"qty"`
	At      time.Time `avro:"at"`
	Channel string    `avro:"channel"`
}

func TestWrite_PayloadDecodesWithNewerReaderSchema(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	v := OrderCreated{OrderID: "o-7", SKU: "s", Qty: 1, At: time.UnixMicro(1e15).UTC()}
	if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return outbox.Publish(ctx, s.w, tx, "orders", "o-7", "OrderCreated", v)
	}); err != nil {
		t.Fatal(err)
	}
	var writerText string
	var payload []byte
	sc := pgx.Identifier{s.schema}.Sanitize()
	if err := s.pool.QueryRow(ctx, `SELECT s.schema, o.payload FROM `+sc+`.outbox o JOIN `+sc+`.schemas s ON s.fingerprint = o.schema_fingerprint`).Scan(&writerText, &payload); err != nil {
		t.Fatal(err)
	}
	writer := avro.MustParse(writerText)
	reader := avro.MustParse(`{"type":"record","name":"OrderCreated","namespace":"shop.v1","fields":[
		{"name":"order_id","type":"string"},{"name":"sku","type":"string"},{"name":"qty","type":"int"},
		{"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
		{"name":"channel","type":"string","default":"web"}]}`)
	resolved, err := avro.NewSchemaCompatibility().Resolve(reader, writer)
	if err != nil {
		t.Fatal(err)
	}
	var out OrderCreatedV2
	if err := avro.Unmarshal(resolved, payload, &out); err != nil {
		t.Fatal(err)
	}
	if out.OrderID != "o-7" || out.Channel != "web" || !out.At.Equal(v.At) {
		t.Fatalf("decoded %+v", out)
	}
}

func TestWrite_BadInputIsRefusedAndTxUntouched(t *testing.T) {
	t.Parallel()
	s := newSetup(t, &outbox.Config{MaxPayloadBytes: 64})
	ctx := context.Background()
	good := outbox.Event{Topic: "orders", Key: "k", Type: "OrderCreated", Value: OrderCreated{OrderID: "x"}}
	cases := map[string]struct {
		ev   outbox.Event
		want error
	}{
		"empty topic":     {outbox.Event{Key: "k", Type: "T", Value: OrderCreated{}}, outbox.ErrInvalidEvent},
		"bad topic":       {outbox.Event{Topic: "a/b", Key: "k", Type: "T", Value: OrderCreated{}}, outbox.ErrInvalidEvent},
		"empty key":       {outbox.Event{Topic: "t", Type: "T", Value: OrderCreated{}}, outbox.ErrInvalidEvent},
		"long key":        {outbox.Event{Topic: "t", Key: strings.Repeat("k", outbox.MaxKeyBytes+1), Type: "T", Value: OrderCreated{}}, outbox.ErrInvalidEvent},
		"empty type":      {outbox.Event{Topic: "t", Key: "k", Value: OrderCreated{}}, outbox.ErrInvalidEvent},
		"nil value":       {outbox.Event{Topic: "t", Key: "k", Type: "T"}, outbox.ErrInvalidEvent},
		"unknown type":    {outbox.Event{Topic: "t", Key: "k", Type: "T", Value: make(chan int)}, outbox.ErrInvalidEvent},
		"schema mismatch": {outbox.Event{Topic: "t", Key: "k", Type: "T", Value: map[string]any{"n": "not a long"}, Schema: `{"type":"record","name":"P","fields":[{"name":"n","type":"long"}]}`}, outbox.ErrEncoding},
		"bad schema":      {outbox.Event{Topic: "t", Key: "k", Type: "T", Value: 1, Schema: `{"type":"nope"}`}, outbox.ErrInvalidEvent},
		"too large":       {outbox.Event{Topic: "t", Key: "k", Type: "T", Value: OrderCreated{OrderID: strings.Repeat("x", 100)}}, outbox.ErrTooLarge},
		"reserved header": {outbox.Event{Topic: "t", Key: "k", Type: "T", Value: OrderCreated{}, Headers: map[string]string{"traceparent": "x"}}, outbox.ErrInvalidEvent},
	}
	for name, c := range cases {
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = s.w.Write(ctx, tx, good, c.ev)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "outbox: event 2 of 2: ") {
			t.Errorf("%s: error does not name the event: %v", name, err)
		}
		// The tx is untouched: still usable, and the valid event was not written either.
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Errorf("%s: tx broken: %v", name, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.count(t); n != 0 {
		t.Fatalf("rows written by refused writes = %d", n)
	}
}

func TestWrite_ClosedOrFailedTxGivesClearError(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	ev := outbox.Event{Topic: "orders", Key: "k", Type: "OrderCreated", Value: OrderCreated{}}
	tx, _ := s.pool.Begin(ctx)
	tx.Commit(ctx)
	if err := s.w.Write(ctx, tx, ev); err == nil || !strings.Contains(err.Error(), "already committed or rolled back") {
		t.Fatalf("closed tx: %v", err)
	}
	tx, _ = s.pool.Begin(ctx)
	_, _ = tx.Exec(ctx, "SELECT 1/0")
	if err := s.w.Write(ctx, tx, ev); err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Fatalf("failed tx: %v", err)
	}
	tx.Rollback(ctx)
	if n := s.count(t); n != 0 {
		t.Fatalf("rows = %d", n)
	}
}

func TestWrite_WithoutPoolStoresSchemaInTx(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	w, _ := outbox.New(nil, &outbox.Config{Schema: schema, SubjectStrategy: outbox.TopicRecordName})
	ctx := context.Background()
	// Rolled back: the schema goes too. Committed: both exist.
	tx, _ := pool.Begin(ctx)
	outbox.Publish(ctx, w, tx, "orders", "k", "OrderCreated", OrderCreated{})
	tx.Rollback(ctx)
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return outbox.Publish(ctx, w, tx, "orders", "k", "OrderCreated", OrderCreated{})
	}); err != nil {
		t.Fatal(err)
	}
	var subject string
	var schemas int
	pool.QueryRow(ctx, `SELECT subject, (SELECT count(*) FROM `+pgx.Identifier{schema, "schemas"}.Sanitize()+`) FROM `+pgx.Identifier{schema, "outbox"}.Sanitize()).Scan(&subject, &schemas)
	if subject != "orders-shop.v1.OrderCreated" || schemas != 1 {
		t.Fatalf("subject %q schemas %d", subject, schemas)
	}
}

func TestShard_MatchesTableContract(t *testing.T) {
	// md5("a") = 0cc175b9...; 0x0cc175b9 % 64 = 57.
	if got := outbox.Shard("a"); got != 0x0cc175b9%64 {
		t.Fatalf("Shard(a) = %d", got)
	}
}

func TestSubjectStrategy(t *testing.T) {
	s := avro.MustParse(`{"type":"record","name":"E","namespace":"n","fields":[]}`)
	for st, want := range map[outbox.SubjectStrategy]string{outbox.TopicName: "t-value", outbox.RecordName: "n.E", outbox.TopicRecordName: "t-n.E"} {
		if got := st.Subject("t", s); got != want {
			t.Errorf("%v: %s, want %s", st, got, want)
		}
	}
}

func TestWrite_HeadersAreJSONObject(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	hostile := map[string]string{"x-q": `"'; DROP TABLE outbox; --`, "x-nl": "a\nb"}
	if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return s.w.Write(ctx, tx, outbox.Event{Topic: "t", Key: "k", Type: "T", Value: OrderCreated{}, Headers: hostile})
	}); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	s.pool.QueryRow(ctx, `SELECT headers::text FROM `+pgx.Identifier{s.schema, "outbox"}.Sanitize()).Scan(&raw)
	var got map[string]string
	if err := json.Unmarshal(raw, &got); err != nil || got["x-q"] != hostile["x-q"] || got["x-nl"] != "a\nb" {
		t.Fatalf("headers %s %v", raw, err)
	}
}

type WithOptional struct {
	A string  `avro:"a"`
	B *string `avro:"b"`
}

func TestWrite_StoresFullSchemaTextWithDefaults(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		return outbox.Publish(ctx, s.w, tx, "t", "k", "T", WithOptional{A: "x"})
	}); err != nil {
		t.Fatal(err)
	}
	var text string
	var fp []byte
	s.pool.QueryRow(ctx, `SELECT schema, fingerprint FROM `+pgx.Identifier{s.schema, "schemas"}.Sanitize()).Scan(&text, &fp)
	if !strings.Contains(text, `"default":null`) {
		t.Fatalf("stored schema lost its default: %s", text)
	}
	if want := outbox.Fingerprint(text); string(fp) != string(want[:]) {
		t.Fatal("fingerprint is not the SHA-256 of the stored text")
	}
}

// Queue puts the events in the caller's batch: business row and events in one round
// trip, and the same all-or-nothing with the transaction.
func TestQueue_BusinessRowAndEventsInOneBatchCommitOrRollBackTogether(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	biz := pgx.Identifier{s.schema, "orders"}.Sanitize()
	if _, err := s.pool.Exec(ctx, `CREATE TABLE `+biz+` (id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	run := func(id string, commit bool) {
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO `+biz+` (id) VALUES ($1)`, id)
		if err := s.w.Queue(ctx, b,
			outbox.Event{Topic: "orders", Key: id, Type: "OrderCreated", Value: OrderCreated{OrderID: id}},
			outbox.Event{Topic: "orders", Key: id, Type: "OrderCreated", Value: OrderCreated{OrderID: id, Qty: 2}}); err != nil {
			t.Fatal(err)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	run("o-1", true)
	run("o-2", false)
	var keys []string
	rows, _ := s.pool.Query(ctx, `SELECT key FROM `+pgx.Identifier{s.schema, "outbox"}.Sanitize()+` ORDER BY id`)
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0] != "o-1" || keys[1] != "o-1" {
		t.Fatalf("outbox keys = %v, want the committed transaction's two events only", keys)
	}

	// Bad input: an error naming the event, and nothing added to the batch.
	b := &pgx.Batch{}
	b.Queue(`SELECT 1`)
	err = s.w.Queue(ctx, b, outbox.Event{Topic: "orders", Key: "k", Type: "T", Value: OrderCreated{}}, outbox.Event{Topic: "", Key: "k", Type: "T", Value: OrderCreated{}})
	if !errors.Is(err, outbox.ErrInvalidEvent) || !strings.HasPrefix(err.Error(), "outbox: event 2 of 2: ") {
		t.Fatalf("err = %v", err)
	}
	if b.Len() != 1 {
		t.Fatalf("batch has %d statements after a refused Queue, want 1", b.Len())
	}
}

// The insert statement adapts to which columns vary among the events of one call
// (array), are shared (scalar) or are all defaults (left out): every shape stores
// every field of every event exactly.
func TestWrite_ManyEventsEveryColumnShapeStoresEachField(t *testing.T) {
	t.Parallel()
	s := newSetup(t, nil)
	ctx := context.Background()
	base := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	mk := func(i int, vary bool) outbox.Event {
		e := outbox.Event{Topic: "orders", Key: "k", Type: "OrderCreated", Value: OrderCreated{OrderID: "same"}, OccurredAt: base}
		if vary {
			e.Topic, e.Key, e.Type = fmt.Sprintf("t-%d", i%2), fmt.Sprintf("k-%d", i), fmt.Sprintf("T%d", i%3)
			e.Value = OrderCreated{OrderID: fmt.Sprint(i)}
			e.AggregateType, e.CorrelationID, e.CausationID = fmt.Sprint("agg", i%2), fmt.Sprint("c", i), fmt.Sprint("z", i%2)
			e.Headers = map[string]string{"i": fmt.Sprint(i)}
			e.OccurredAt = base.Add(time.Duration(i) * time.Second)
			if i%2 == 0 {
				e.Headers, e.AggregateType = nil, ""
			}
		}
		return e
	}
	for _, vary := range []bool{false, true} {
		for _, n := range []int{1, 2, 7} {
			table := pgx.Identifier{s.schema, "outbox"}.Sanitize()
			if _, err := s.pool.Exec(ctx, `DELETE FROM `+table); err != nil {
				t.Fatal(err)
			}
			evs := make([]outbox.Event, n)
			for i := range evs {
				evs[i] = mk(i, vary)
				evs[i].ID = uuid.Must(uuid.NewV7())
			}
			if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return s.w.Write(ctx, tx, evs...) }); err != nil {
				t.Fatalf("vary=%v n=%d: %v", vary, n, err)
			}
			rows, _ := s.pool.Query(ctx, `SELECT o.event_id, o.topic, o.key, o.event_type, o.aggregate_type, o.headers, o.occurred_at,
				o.correlation_id, o.causation_id, o.payload, s.schema FROM `+table+` o
				JOIN `+pgx.Identifier{s.schema, "schemas"}.Sanitize()+` s ON s.fingerprint = o.schema_fingerprint ORDER BY o.id`)
			i := 0
			for rows.Next() {
				var id uuid.UUID
				var topic, key, typ, agg, corr, caus string
				var headers map[string]string
				var occ time.Time
				var payload []byte
				var schemaText string
				if err := rows.Scan(&id, &topic, &key, &typ, &agg, &headers, &occ, &corr, &caus, &payload, &schemaText); err != nil {
					t.Fatal(err)
				}
				e := evs[i]
				want := outbox.Event{ID: id, Topic: topic, Key: key, Type: typ, AggregateType: agg, OccurredAt: occ.UTC(), CorrelationID: corr, CausationID: caus}
				got := outbox.Event{ID: e.ID, Topic: e.Topic, Key: e.Key, Type: e.Type, AggregateType: e.AggregateType, OccurredAt: e.OccurredAt, CorrelationID: e.CorrelationID, CausationID: e.CausationID}
				if fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprint(headers) != fmt.Sprint(map[string]string(e.Headers)) && len(e.Headers)+len(headers) > 0 {
					t.Errorf("vary=%v n=%d row %d: stored %+v headers %v, wrote %+v headers %v", vary, n, i, want, headers, got, e.Headers)
				}
				var back OrderCreated
				if err := avro.Unmarshal(avro.MustParse(schemaText), payload, &back); err != nil || back.OrderID != e.Value.(OrderCreated).OrderID {
					t.Errorf("vary=%v n=%d row %d: payload %+v (%v)", vary, n, i, back, err)
				}
				i++
			}
			if rows.Err() != nil || i != n {
				t.Fatalf("vary=%v n=%d: %d rows (%v)", vary, n, i, rows.Err())
			}
		}
	}
}

// The writer's NOTIFY: one per call, at commit only, naming the shards the rows went
// to (what the database computed), on the configured channel; none with DisableNotify.
func TestWrite_NotifiesOnceAtCommitNamingTheShards(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	channel := testenv.Name(t, "notify")
	s := newSetup(t, &outbox.Config{Channel: channel})
	listener, err := pgx.Connect(ctx, testenv.DatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, `LISTEN `+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	next := func(wait time.Duration) (string, bool) {
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		n, err := listener.WaitForNotification(wctx)
		if err != nil {
			return "", false
		}
		if n.Channel != channel {
			t.Errorf("notification on %q, want %q", n.Channel, channel)
		}
		return n.Payload, true
	}
	events := func(keys ...string) []outbox.Event {
		evs := make([]outbox.Event, len(keys))
		for i, k := range keys {
			evs[i] = outbox.Event{Topic: "orders", Key: k, Type: "OrderCreated", Value: OrderCreated{OrderID: k}}
		}
		return evs
	}
	for _, keys := range [][]string{{"a"}, {"a", "b", "c", "a", "order-17", "order-99"}} {
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.w.Write(ctx, tx, events(keys...)...); err != nil {
			t.Fatal(err)
		}
		if p, ok := next(200 * time.Millisecond); ok {
			t.Fatalf("notification %q before commit", p)
		}
		var want string
		if err := tx.QueryRow(ctx, `SELECT string_agg(shard::text, ',' ORDER BY shard) FROM (SELECT DISTINCT shard FROM `+
			pgx.Identifier{s.schema, "outbox"}.Sanitize()+` WHERE key = ANY($1)) s`, keys).Scan(&want); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		p, ok := next(5 * time.Second)
		if !ok || p != want {
			t.Fatalf("keys %v: notification %q (received %v), want the shards %q", keys, p, ok, want)
		}
		if p, ok := next(300 * time.Millisecond); ok {
			t.Fatalf("keys %v: a second notification %q for one call", keys, p)
		}
	}
	// Rolled back: no notification.
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.w.Write(ctx, tx, events("z")...); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback(ctx)
	if p, ok := next(300 * time.Millisecond); ok {
		t.Fatalf("notification %q after rollback", p)
	}
	// DisableNotify: rows, no notification.
	quiet, err := outbox.New(s.pool, &outbox.Config{Schema: s.schema, Channel: channel, DisableNotify: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error { return quiet.Write(ctx, tx, events("q1", "q2")...) }); err != nil {
		t.Fatal(err)
	}
	if p, ok := next(300 * time.Millisecond); ok {
		t.Fatalf("notification %q with DisableNotify", p)
	}
	if n := s.count(t); n != 1+6+2 {
		t.Fatalf("rows = %d, want 9", n)
	}
}

// A transaction holding the pool's last connection: storing the schema outside it
// would have to wait for a connection that only this transaction's end releases. The
// writer must not wait (it used to wait 100 ms on every call, as long as the pool stayed
// full: forever with one connection); it upserts the schema in the transaction instead.
func TestWrite_FullPoolStoresSchemaInTxWithoutWaiting(t *testing.T) {
	t.Parallel()
	pool := testenv.PoolWith(t, func(c *pgxpool.Config) { c.MaxConns = 1 })
	schema := testenv.Schema(t, pool)
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})
	ctx := context.Background()
	for i := range 3 {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return outbox.Publish(ctx, w, tx, "orders", fmt.Sprint("k", i), "OrderCreated", OrderCreated{})
		}); err != nil {
			t.Fatal(err)
		}
	}
	if n := pool.Stat().CanceledAcquireCount(); n != 0 {
		t.Fatalf("the writer waited for a connection of the full pool %d time(s)", n)
	}
	var rows, schemas int
	pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+pgx.Identifier{schema, "outbox"}.Sanitize()+`), (SELECT count(*) FROM `+
		pgx.Identifier{schema, "schemas"}.Sanitize()+`)`).Scan(&rows, &schemas)
	if rows != 3 || schemas != 1 {
		t.Fatalf("%d rows, %d schemas; want 3 and 1", rows, schemas)
	}
}

// Validate names the field that cannot work; New refuses the same config.
func TestConfig_ValidateNamesTheField(t *testing.T) {
	if err := (*outbox.Config)(nil).Validate(); err != nil {
		t.Fatalf("nil Config: %v", err)
	}
	for _, tc := range []struct {
		name string
		cfg  outbox.Config
		want string
	}{
		{"payload negative", outbox.Config{MaxPayloadBytes: -1}, "Config.MaxPayloadBytes must be positive"},
		{"channel too long", outbox.Config{Channel: strings.Repeat("c", 64)}, "Config.Channel is 64 bytes"},
		{"unknown strategy", outbox.Config{SubjectStrategy: 7}, "Config.SubjectStrategy 7"},
		{"unknown topic strategy", outbox.Config{TopicSubjectStrategies: map[string]outbox.SubjectStrategy{"orders": 9}}, `Config.TopicSubjectStrategies["orders"] 9`},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", tc.name, err, tc.want)
		}
		if _, nerr := outbox.New(nil, &tc.cfg); nerr == nil || nerr.Error() != err.Error() {
			t.Errorf("%s: New = %v, want Validate's error", tc.name, nerr)
		}
	}
	if c := (*outbox.Config)(nil).WithDefaults(); c.Schema != "relaybox" || c.Channel != outbox.DefaultChannel || c.MaxPayloadBytes != outbox.DefaultMaxPayloadBytes || c.Propagator == nil {
		t.Fatalf("WithDefaults() = %+v", c)
	}
}
