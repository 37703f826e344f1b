// Package writer measures relaybox's outbox writer against what a service would embed
// without it, and the outbox table's floor against variant tables (issue 18, part 3).
//
// Every variant is one business transaction: a row into an orders table, then 1 or
// 100 events, committed. One iteration runs every variant once, round robin, so the
// machine's drift (a shared disk's fsync, other processes) weighs on all of them
// alike; the figures are medians per variant and their ratios, within one run, to the
// business transaction alone and to each other.
//
// The peers group: relaybox's Writer (Queue: the events in the business statement's
// batch, one round trip; Write: a statement of its own; each with and without its
// NOTIFY; Queue without it and a NOTIFY sent after the commit), a plain SQL insert of
// relaybox's row (in the batch, and as a statement of its own), and Watermill's SQL publisher (watermill-sql v4 over the same pgx
// transaction, JSON payload: its default; bare, and under the forwarder's envelope, as
// a Watermill outbox user publishing to Kafka writes it).
//
// The floor group, plain SQL into variant tables in the same schema: the primary key
// on (shard, id) as the only index, no CHECKs, the shard computed in Go instead of
// md5 in SQL, all three at once, and a bare copy without index, CHECK or generated
// shard; and other statements into relaybox's own table: COPY (pgx CopyFrom) inside
// the transaction, one multi-row VALUES statement prepared per row count, and the
// plain statements unprepared (pgx's QueryExecModeExec: parsed and planned each time).
//
// Run it with `make bench-writer` (the command in bench/cmd/writer-bench); the figures
// are in docs/benchmarks.md.
package writer

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
)

// OrderCreated is the event every variant writes: about 250 bytes of Avro (the SKU
// is 200 characters), a distinct order id per event.
type OrderCreated struct {
	OrderID string    `avro:"order_id" json:"order_id"`
	SKU     string    `avro:"sku" json:"sku"`
	Qty     int32     `avro:"qty" json:"qty"`
	At      time.Time `avro:"at" json:"at"`
}

// AvroNamespace names the record shop.v1.OrderCreated.
func (OrderCreated) AvroNamespace() string { return "shop.v1" }

// Topic is the topic every event goes to.
const Topic = "orders"

// Groups of variants.
const (
	GroupPeers = "peers"
	GroupFloor = "floor"
)

// Variant is one business transaction.
type Variant struct {
	// Name identifies the variant, e.g. "relaybox-queue"; with Events it is unique.
	Name string
	// Group is GroupPeers or GroupFloor ("" for the transaction alone).
	Group string
	// Events is the number of events written (0 for the transaction alone).
	Events int
	// Table is the table the events land in, schema-qualified and quoted (empty for
	// the transaction alone).
	Table string
	// Tx runs the transaction's statements in tx.
	Tx func(ctx context.Context, tx pgx.Tx) error
	// After, when set, runs after the commit, on the pool (timed with the transaction).
	After func(ctx context.Context, pool *pgxpool.Pool) error
}

// Run runs the transaction in pool and, once it committed, After.
func (v Variant) Run(ctx context.Context, pool *pgxpool.Pool) error {
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return v.Tx(ctx, tx) }); err != nil {
		return err
	}
	if v.After != nil {
		return v.After(ctx, pool)
	}
	return nil
}

// Key returns "<events>-<name>", unique within a run.
func (v Variant) Key() string { return strconv.Itoa(v.Events) + "-" + v.Name }

// Bench holds the tables of one run, in its own schema.
type Bench struct {
	pool     *pgxpool.Pool
	schema   string
	q        func(table string) string
	writer   *outbox.Writer
	silent   *outbox.Writer // DisableNotify
	avro     avro.Schema
	subject  string
	fp       []byte
	wmSchema wsql.DefaultPostgreSQLSchema
	orders   string
	variants []Variant
}

// Tables holding events, besides relaybox's outbox: name -> what it is.
var floorTables = []struct{ name, doc string }{
	{"pk_shard_id", "(a) primary key (shard, id) the only index (the partial parked/published indexes kept)"},
	{"no_checks", "(b) the outbox without its CHECKs"},
	{"go_shard", "(c) shard a plain column the writer fills (md5 in Go), CHECK 0..63"},
	{"floor_all", "(a)+(b)+(c)"},
	{"bare", "no index, no CHECK, no generated shard (what the row itself costs)"},
}

// Setup migrates relaybox's tables into schema (which must not exist), creates the
// business table, Watermill's tables and the variant tables, and stores the event's
// schema once (as a service's first write would).
func Setup(ctx context.Context, pool *pgxpool.Pool, schema string) (*Bench, error) {
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema}); err != nil {
		return nil, fmt.Errorf("migrating %s: %w", schema, err)
	}
	b := &Bench{pool: pool, schema: schema}
	b.q = func(t string) string { return pgx.Identifier{schema, t}.Sanitize() }
	b.orders = b.q("orders")
	o := b.q("outbox")
	ddl := []string{
		`CREATE TABLE ` + b.orders + ` (id bigserial PRIMARY KEY, customer text, total numeric, created_at timestamptz DEFAULT now())`,
		// (a): like the outbox with its CHECKs and generated shard, one index for the read
		// and every lookup by id: the primary key (shard, id).
		`CREATE TABLE ` + b.q("pk_shard_id") + ` (LIKE ` + o + ` INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING GENERATED, PRIMARY KEY (shard, id))`,
		`CREATE INDEX ON ` + b.q("pk_shard_id") + ` (shard, key) WHERE parked_at IS NOT NULL`,
		`CREATE INDEX ON ` + b.q("pk_shard_id") + ` (published_at) WHERE published_at IS NOT NULL`,
		// (b): the same indexes and generated shard, no CHECK.
		`CREATE TABLE ` + b.q("no_checks") + ` (LIKE ` + o + ` INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED INCLUDING INDEXES)`,
		// (c): the shard a plain column the writer fills.
		`CREATE TABLE ` + b.q("go_shard") + ` (LIKE ` + o + ` INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING INDEXES)`,
		`ALTER TABLE ` + b.q("go_shard") + ` ADD CHECK (shard >= 0 AND shard < 64)`,
		// (a)+(b)+(c).
		`CREATE TABLE ` + b.q("floor_all") + ` (LIKE ` + o + ` INCLUDING DEFAULTS INCLUDING IDENTITY, PRIMARY KEY (shard, id))`,
		`CREATE INDEX ON ` + b.q("floor_all") + ` (shard, key) WHERE parked_at IS NOT NULL`,
		`CREATE INDEX ON ` + b.q("floor_all") + ` (published_at) WHERE published_at IS NOT NULL`,
		`CREATE TABLE ` + b.q("bare") + ` (LIKE ` + o + ` INCLUDING DEFAULTS INCLUDING IDENTITY)`,
		`ALTER TABLE ` + b.q("bare") + ` ALTER COLUMN shard SET DEFAULT 0`,
	}
	b.wmSchema = wsql.DefaultPostgreSQLSchema{
		GenerateMessagesTableName: func(topic string) string { return pgx.Identifier{schema, "watermill_" + topic}.Sanitize() },
	}
	for _, topic := range []string{Topic, wmForwarderTopic} {
		qs, err := b.wmSchema.SchemaInitializingQueries(wsql.SchemaInitializingQueriesParams{Topic: topic})
		if err != nil {
			return nil, err
		}
		for _, q := range qs {
			if !strings.Contains(q.Query, "pg_advisory_xact_lock") {
				ddl = append(ddl, q.Query)
			}
		}
	}
	for _, s := range ddl {
		if _, err := pool.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	var err error
	// A channel of the run's own: listeners of the default one (relays of other runs on
	// the same database) have nothing to do with these rows.
	if b.writer, err = outbox.New(pool, &outbox.Config{Schema: schema, Channel: schema}); err != nil {
		return nil, err
	}
	if b.silent, err = outbox.New(pool, &outbox.Config{Schema: schema, DisableNotify: true}); err != nil {
		return nil, err
	}
	subject, text, err := outbox.EventSchema{Topic: Topic, Value: OrderCreated{}}.Subject(nil)
	if err != nil {
		return nil, err
	}
	if b.avro, err = avro.Parse(text); err != nil {
		return nil, err
	}
	fp := outbox.Fingerprint(text)
	b.subject, b.fp = subject, fp[:]
	if _, err := pool.Exec(ctx, `INSERT INTO `+b.q("schemas")+` (fingerprint, schema) VALUES ($1, $2) ON CONFLICT DO NOTHING`, b.fp, text); err != nil {
		return nil, err
	}
	b.variants = b.build()
	return b, nil
}

// Schema returns the run's schema.
func (b *Bench) Schema() string { return b.schema }

// Variants returns the variants in the order a round runs them.
func (b *Bench) Variants() []Variant { return b.variants }

// Truncate empties every table (the relay keeps a real outbox small; the tables
// would otherwise grow by about a million rows a run).
func (b *Bench) Truncate(ctx context.Context) error {
	ts := []string{b.orders, b.q("outbox"), b.q("watermill_" + Topic), b.q("watermill_" + wmForwarderTopic)}
	for _, t := range floorTables {
		ts = append(ts, b.q(t.name))
	}
	_, err := b.pool.Exec(ctx, `TRUNCATE `+strings.Join(ts, ", "))
	return err
}

// Drop drops the run's schema.
func (b *Bench) Drop(ctx context.Context) error {
	_, err := b.pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{b.schema}.Sanitize()+` CASCADE`)
	return err
}

const wmForwarderTopic = "forwarder"

var wmLogger = watermill.NopLogger{}

// sku makes the payload about 250 bytes.
var sku = strings.Repeat("s", 200)

// values returns n events' values, distinct order ids.
func values(n int) []OrderCreated {
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	v := make([]OrderCreated, n)
	for i := range v {
		v[i] = OrderCreated{OrderID: "order-" + strconv.Itoa(i), SKU: sku, Qty: 2, At: at}
	}
	return v
}

func key(i int) string { return "order-" + strconv.Itoa(i) }

// rows is what a plain SQL writer sends: relaybox's row, encoded per call as a
// service would (Avro, a UUIDv7 event id).
type rows struct {
	ids      []uuid.UUID
	keys     []string
	payloads [][]byte
	shards   []int32
}

func (b *Bench) encode(vs []OrderCreated, shards bool) (rows, error) {
	r := rows{ids: make([]uuid.UUID, len(vs)), keys: make([]string, len(vs)), payloads: make([][]byte, len(vs))}
	if shards {
		r.shards = make([]int32, len(vs))
	}
	for i := range vs {
		p, err := avro.Marshal(b.avro, &vs[i])
		if err != nil {
			return r, err
		}
		if r.ids[i], err = uuid.NewV7(); err != nil {
			return r, err
		}
		r.keys[i], r.payloads[i] = key(i), p
		if shards {
			r.shards[i] = int32(outbox.Shard(r.keys[i]))
		}
	}
	return r, nil
}

// plainSQL is the statement and arguments inserting r into table: VALUES for one
// row, unnest for more; shard sent when r carries it.
func (b *Bench) plainSQL(table string, r rows) (string, []any) {
	cols := `event_id, topic, key, event_type, subject, schema_fingerprint, payload`
	if len(r.keys) == 1 {
		args := []any{r.ids[0], Topic, r.keys[0], "OrderCreated", b.subject, b.fp, r.payloads[0]}
		vals := `$1, $2, $3, $4, $5, $6, $7`
		if r.shards != nil {
			cols, vals, args = cols+`, shard`, vals+`, $8`, append(args, r.shards[0])
		}
		return `INSERT INTO ` + table + ` (` + cols + `) VALUES (` + vals + `)`, args
	}
	args := []any{Topic, "OrderCreated", b.subject, b.fp, r.ids, r.keys, r.payloads}
	sel, arrays, aliases := `u.id, $1, u.k, $2, $3, $4, u.p`, `$5::uuid[], $6::text[], $7::bytea[]`, `id, k, p`
	if r.shards != nil {
		cols, sel, arrays, aliases, args = cols+`, shard`, sel+`, u.s`, arrays+`, $8::int[]`, aliases+`, s`, append(args, r.shards)
	}
	return `INSERT INTO ` + table + ` (` + cols + `) SELECT ` + sel + ` FROM unnest(` + arrays + `) AS u(` + aliases + `)`, args
}

// valuesSQL is (e): one multi-row VALUES statement, seven parameters a row; pgx
// prepares it once per connection and row count (its statement cache).
func (b *Bench) valuesSQL(table string, r rows) (string, []any) {
	var sb strings.Builder
	sb.WriteString(`INSERT INTO ` + table + ` (event_id, topic, key, event_type, subject, schema_fingerprint, payload) VALUES `)
	args := make([]any, 0, 7*len(r.keys))
	for i := range r.keys {
		if i > 0 {
			sb.WriteString(", ")
		}
		p := len(args)
		fmt.Fprintf(&sb, "($%d, $%d, $%d, $%d, $%d, $%d, $%d)", p+1, p+2, p+3, p+4, p+5, p+6, p+7)
		args = append(args, r.ids[i], Topic, r.keys[i], "OrderCreated", b.subject, b.fp, r.payloads[i])
	}
	return sb.String(), args
}

// textUUIDs replaces the UUIDs in args by their text, which pgx can send without
// knowing the parameter's type (an unprepared statement).
func textUUIDs(args []any) {
	for i, a := range args {
		switch v := a.(type) {
		case uuid.UUID:
			args[i] = v.String()
		case []uuid.UUID:
			s := make([]string, len(v))
			for j := range v {
				s[j] = v[j].String()
			}
			args[i] = s
		}
	}
}

var copyColumns = []string{"event_id", "topic", "key", "event_type", "subject", "schema_fingerprint", "payload"}

func (b *Bench) business(batch *pgx.Batch) {
	batch.Queue(`INSERT INTO `+b.orders+` (customer, total) VALUES ($1, $2)`, "c-1", 42.5)
}

func (b *Bench) businessExec(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `INSERT INTO `+b.orders+` (customer, total) VALUES ($1, $2)`, "c-1", 42.5)
	return err
}

// wmMessages are Watermill messages for vs: JSON payloads (watermill-sql's default
// column type), the key in the metadata (watermill-kafka's partitioning reads it).
func wmMessages(ctx context.Context, vs []OrderCreated) ([]*message.Message, error) {
	msgs := make([]*message.Message, len(vs))
	for i := range vs {
		p, err := json.Marshal(&vs[i])
		if err != nil {
			return nil, err
		}
		m := message.NewMessage(watermill.NewUUID(), p)
		m.Metadata.Set("key", key(i))
		m.SetContext(ctx)
		msgs[i] = m
	}
	return msgs, nil
}

func (b *Bench) build() []Variant {
	out := []Variant{{Name: "alone", Tx: func(ctx context.Context, tx pgx.Tx) error { return b.businessExec(ctx, tx) }}}
	o := b.q("outbox")
	for _, n := range []int{1, 100} {
		vs := values(n)
		events := make([]outbox.Event, n)
		for i := range events {
			events[i] = outbox.Event{Topic: Topic, Key: key(i), Type: "OrderCreated", AggregateType: "Order", Value: vs[i]}
		}
		queue := func(w *outbox.Writer) func(ctx context.Context, tx pgx.Tx) error {
			return func(ctx context.Context, tx pgx.Tx) error {
				batch := &pgx.Batch{}
				b.business(batch)
				if err := w.Queue(ctx, batch, events...); err != nil {
					return err
				}
				return tx.SendBatch(ctx, batch).Close()
			}
		}
		write := func(w *outbox.Writer) func(ctx context.Context, tx pgx.Tx) error {
			return func(ctx context.Context, tx pgx.Tx) error {
				if err := b.businessExec(ctx, tx); err != nil {
					return err
				}
				return w.Write(ctx, tx, events...)
			}
		}
		// A plain SQL statement in the business batch (one round trip) into table.
		plainBatch := func(table string, shards bool, stmt func(string, rows) (string, []any)) func(ctx context.Context, tx pgx.Tx) error {
			return func(ctx context.Context, tx pgx.Tx) error {
				r, err := b.encode(vs, shards)
				if err != nil {
					return err
				}
				s, args := stmt(table, r)
				batch := &pgx.Batch{}
				b.business(batch)
				batch.Queue(s, args...)
				return tx.SendBatch(ctx, batch).Close()
			}
		}
		// A plain SQL statement of its own (a second round trip), in mode (none: pgx's
		// default, prepared once per connection and text).
		plainExec := func(mode ...any) func(ctx context.Context, tx pgx.Tx) error {
			return func(ctx context.Context, tx pgx.Tx) error {
				r, err := b.encode(vs, false)
				if err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO `+b.orders+` (customer, total) VALUES ($1, $2)`, append(mode, "c-1", 42.5)...); err != nil {
					return err
				}
				s, args := b.plainSQL(o, r)
				if len(mode) > 0 {
					textUUIDs(args) // unprepared, pgx encodes parameters without their types
				}
				_, err = tx.Exec(ctx, s, append(mode, args...)...)
				return err
			}
		}
		watermillPub := func(forward bool) func(ctx context.Context, tx pgx.Tx) error {
			return func(ctx context.Context, tx pgx.Tx) error {
				if err := b.businessExec(ctx, tx); err != nil {
					return err
				}
				var pub message.Publisher
				pub, err := wsql.NewPublisher(wsql.TxFromPgx(tx), wsql.PublisherConfig{SchemaAdapter: b.wmSchema}, wmLogger)
				if err != nil {
					return err
				}
				if forward {
					pub = forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: wmForwarderTopic})
				}
				msgs, err := wmMessages(ctx, vs)
				if err != nil {
					return err
				}
				return pub.Publish(Topic, msgs...)
			}
		}
		// The NOTIFY after the commit, in a statement of its own: no lock held through
		// the commit's WAL flush (the statement has no transaction id to commit).
		var shards []string
		seen := map[int]bool{}
		for i := range n {
			if sh := outbox.Shard(key(i)); !seen[sh] {
				seen[sh] = true
				shards = append(shards, strconv.Itoa(sh))
			}
		}
		notifyAfter := func(ctx context.Context, pool *pgxpool.Pool) error {
			_, err := pool.Exec(ctx, `SELECT pg_notify($1, $2)`, b.schema, strings.Join(shards, ","))
			return err
		}
		out = append(out,
			Variant{Name: "relaybox-queue", Group: GroupPeers, Events: n, Table: o, Tx: queue(b.writer)},
			Variant{Name: "relaybox-write", Group: GroupPeers, Events: n, Table: o, Tx: write(b.writer)},
			Variant{Name: "relaybox-queue-nonotify", Group: GroupPeers, Events: n, Table: o, Tx: queue(b.silent)},
			Variant{Name: "relaybox-write-nonotify", Group: GroupPeers, Events: n, Table: o, Tx: write(b.silent)},
			Variant{Name: "relaybox-queue-notify-after", Group: GroupPeers, Events: n, Table: o, Tx: queue(b.silent), After: notifyAfter},
			Variant{Name: "plain-sql", Group: GroupPeers, Events: n, Table: o, Tx: plainBatch(o, false, b.plainSQL)},
			Variant{Name: "plain-sql-exec", Group: GroupPeers, Events: n, Table: o, Tx: plainExec()},
			Variant{Name: "watermill", Group: GroupPeers, Events: n, Table: b.q("watermill_" + Topic), Tx: watermillPub(false)},
			Variant{Name: "watermill-forwarder", Group: GroupPeers, Events: n, Table: b.q("watermill_" + wmForwarderTopic), Tx: watermillPub(true)},
			Variant{Name: "pk-shard-id", Group: GroupFloor, Events: n, Table: b.q("pk_shard_id"), Tx: plainBatch(b.q("pk_shard_id"), false, b.plainSQL)},
			Variant{Name: "no-checks", Group: GroupFloor, Events: n, Table: b.q("no_checks"), Tx: plainBatch(b.q("no_checks"), false, b.plainSQL)},
			Variant{Name: "go-shard", Group: GroupFloor, Events: n, Table: b.q("go_shard"), Tx: plainBatch(b.q("go_shard"), true, b.plainSQL)},
			Variant{Name: "floor-all", Group: GroupFloor, Events: n, Table: b.q("floor_all"), Tx: plainBatch(b.q("floor_all"), true, b.plainSQL)},
			Variant{Name: "bare-table", Group: GroupFloor, Events: n, Table: b.q("bare"), Tx: plainBatch(b.q("bare"), false, b.plainSQL)},
			Variant{Name: "copy", Group: GroupFloor, Events: n, Table: o, Tx: func(ctx context.Context, tx pgx.Tx) error {
				r, err := b.encode(vs, false)
				if err != nil {
					return err
				}
				if err := b.businessExec(ctx, tx); err != nil {
					return err
				}
				src := pgx.CopyFromSlice(n, func(i int) ([]any, error) {
					return []any{r.ids[i], Topic, r.keys[i], "OrderCreated", b.subject, b.fp, r.payloads[i]}, nil
				})
				_, err = tx.CopyFrom(ctx, pgx.Identifier{b.schema, "outbox"}, copyColumns, src)
				return err
			}},
			Variant{Name: "plain-sql-exec-unprepared", Group: GroupFloor, Events: n, Table: o, Tx: plainExec(pgx.QueryExecModeExec)},
		)
		if n > 1 { // for one row, plain-sql is already a prepared VALUES statement
			out = append(out, Variant{Name: "values-prepared", Group: GroupFloor, Events: n, Table: o, Tx: plainBatch(o, false, b.valuesSQL)})
		}
	}
	return out
}

// Result is one run's figures.
type Result struct {
	Iterations int             `json:"iterations"`
	Variants   []VariantResult `json:"variants"`
	// Ratios are the comparisons the targets name, per events per transaction ("1",
	// "100"): ratios of medians within this run.
	Ratios map[string]map[string]float64 `json:"ratios"`
}

// VariantResult is one variant's timing: the transaction from BEGIN to COMMIT.
type VariantResult struct {
	Name    string  `json:"name"`
	Group   string  `json:"group,omitempty"`
	Events  int     `json:"events"`
	P10us   float64 `json:"p10_us"`
	P50us   float64 `json:"p50_us"`
	P90us   float64 `json:"p90_us"`
	XAlone  float64 `json:"x_alone"`
	PerRowU float64 `json:"extra_us_per_event,omitempty"` // (p50 - alone p50) / events
}

// Run warms every variant up, then runs iterations rounds, each variant once per
// round in order, emptying the tables every truncateEvery rounds (outside the timing).
// progress, when set, is called after every round.
func (b *Bench) Run(ctx context.Context, iterations, truncateEvery int, progress func(done int)) (*Result, error) {
	vs := b.variants
	for _, v := range vs {
		if err := v.Run(ctx, b.pool); err != nil {
			return nil, fmt.Errorf("%s: %w", v.Key(), err)
		}
	}
	times := make([][]time.Duration, len(vs))
	for it := range iterations {
		if truncateEvery > 0 && it%truncateEvery == 0 {
			if err := b.Truncate(ctx); err != nil {
				return nil, err
			}
		}
		for i, v := range vs {
			start := time.Now()
			if err := v.Run(ctx, b.pool); err != nil {
				return nil, fmt.Errorf("%s: %w", v.Key(), err)
			}
			times[i] = append(times[i], time.Since(start))
		}
		if progress != nil {
			progress(it + 1)
		}
	}
	res := &Result{Iterations: iterations, Ratios: map[string]map[string]float64{}}
	p50 := map[string]float64{}
	for i, v := range vs {
		ts := times[i]
		slices.Sort(ts)
		pct := func(p float64) float64 {
			return float64(ts[int(p*float64(len(ts)-1))].Nanoseconds()) / 1e3
		}
		res.Variants = append(res.Variants, VariantResult{Name: v.Name, Group: v.Group, Events: v.Events,
			P10us: round1(pct(0.1)), P50us: round1(pct(0.5)), P90us: round1(pct(0.9))})
		p50[v.Key()] = pct(0.5)
	}
	alone := p50["0-alone"]
	for i := range res.Variants {
		r := &res.Variants[i]
		r.XAlone = round3(p50[vs[i].Key()] / alone)
		if r.Events > 0 {
			r.PerRowU = round1((p50[vs[i].Key()] - alone) / float64(r.Events))
		}
	}
	for _, n := range []string{"1", "100"} {
		ratio := func(a, b string) float64 { return round3(p50[n+"-"+a] / p50[n+"-"+b]) }
		res.Ratios[n] = map[string]float64{
			"queue_vs_plain_sql":               ratio("relaybox-queue", "plain-sql"),
			"queue_nonotify_vs_plain_sql":      ratio("relaybox-queue-nonotify", "plain-sql"),
			"queue_notify_after_vs_plain_sql":  ratio("relaybox-queue-notify-after", "plain-sql"),
			"write_vs_plain_sql_exec":          ratio("relaybox-write", "plain-sql-exec"),
			"write_nonotify_vs_plain_sql_exec": ratio("relaybox-write-nonotify", "plain-sql-exec"),
			"queue_vs_watermill":               ratio("relaybox-queue", "watermill"),
			"write_vs_watermill":               ratio("relaybox-write", "watermill"),
			"write_vs_watermill_forwarder":     ratio("relaybox-write", "watermill-forwarder"),
			"pk_shard_id_vs_plain_sql":         ratio("pk-shard-id", "plain-sql"),
			"no_checks_vs_plain_sql":           ratio("no-checks", "plain-sql"),
			"go_shard_vs_plain_sql":            ratio("go-shard", "plain-sql"),
			"floor_all_vs_plain_sql":           ratio("floor-all", "plain-sql"),
			"bare_table_vs_plain_sql":          ratio("bare-table", "plain-sql"),
			"copy_vs_plain_sql_exec":           ratio("copy", "plain-sql-exec"),
			"unprepared_vs_plain_sql_exec":     ratio("plain-sql-exec-unprepared", "plain-sql-exec"),
		}
		if n == "100" {
			res.Ratios[n]["values_prepared_vs_plain_sql"] = ratio("values-prepared", "plain-sql")
		}
	}
	return res, nil
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// ConcurrentResult is the throughput of a few variants run by concurrent workers.
type ConcurrentResult struct {
	Workers int     `json:"workers"`
	SliceS  float64 `json:"slice_s"`
	Slices  int     `json:"slices_per_variant"`
	// TxPerS is each variant's committed transactions per second, by Variant.Key.
	TxPerS map[string]float64 `json:"tx_per_s"`
}

// RunConcurrent runs the variants named by keys (Variant.Key) with workers concurrent
// transactions (the pool needs workers+1 connections), in time slices, round robin:
// slices slices of each variant, each slice lasting slice. A Writer's NOTIFY takes a
// lock that Postgres holds until the commit's end, WAL flush included: notifying
// transactions commit one at a time, which one client alone does not show.
func (b *Bench) RunConcurrent(ctx context.Context, keys []string, workers int, slice time.Duration, slices int) (*ConcurrentResult, error) {
	byKey := map[string]Variant{}
	for _, v := range b.variants {
		byKey[v.Key()] = v
	}
	res := &ConcurrentResult{Workers: workers, SliceS: slice.Seconds(), Slices: slices, TxPerS: map[string]float64{}}
	count := map[string]int{}
	for s := range slices {
		if err := b.Truncate(ctx); err != nil {
			return nil, err
		}
		for _, k := range keys {
			v, ok := byKey[k]
			if !ok {
				return nil, fmt.Errorf("no variant %s", k)
			}
			n, err := b.slice(ctx, v, workers, slice)
			if err != nil {
				return nil, fmt.Errorf("%s, slice %d: %w", k, s+1, err)
			}
			count[k] += n
		}
	}
	for _, k := range keys {
		res.TxPerS[k] = round1(float64(count[k]) / (slice.Seconds() * float64(slices)))
	}
	return res, nil
}

// slice runs v in workers goroutines for d and returns the transactions committed.
func (b *Bench) slice(ctx context.Context, v Variant, workers int, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	type out struct {
		n   int
		err error
	}
	done := make(chan out, workers)
	for range workers {
		go func() {
			n := 0
			for time.Now().Before(deadline) {
				if err := v.Run(ctx, b.pool); err != nil {
					done <- out{n, err}
					return
				}
				n++
			}
			done <- out{n, nil}
		}()
	}
	total := 0
	var first error
	for range workers {
		o := <-done
		total += o.n
		if o.err != nil && first == nil {
			first = o.err
		}
	}
	return total, first
}
