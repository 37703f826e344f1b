package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
)

// A system is one relay under test.
type system interface {
	// name is the key in the JSON's "systems".
	name() string
	// prepare builds or fetches what the system needs, outside any measurement. An
	// error skips the system, with the error as the reason.
	prepare(ctx context.Context, h *harness) error
	// setup creates the system's tables and topic for one measurement, tagged tag.
	setup(ctx context.Context, h *harness, tag string) (instance, error)
}

// An instance is one system set up for one measurement: its table, its topic.
type instance interface {
	topic() string
	// insert writes events in tx, as a user of the system does.
	insert(ctx context.Context, tx pgx.Tx, evs []BenchEvent, ids []uuid.UUID) error
	// start runs the relay as a subprocess.
	start(ctx context.Context) (*proc, error)
	// teardown drops what setup created; the relay has stopped.
	teardown(ctx context.Context)
}

// ---- relaybox ----

// relayboxSystem is the relaybox CLI; eos runs it with --exactly-once (Kafka
// transactions), measured by a read_committed consumer: the system relaybox_eos.
type relayboxSystem struct{ eos bool }

func (s *relayboxSystem) name() string {
	if s.eos {
		return "relaybox_eos"
	}
	return "relaybox"
}

// prepare: main has built the binary (h.relayBin) and read its configuration.
func (s *relayboxSystem) prepare(ctx context.Context, h *harness) error {
	if s.eos && (!h.rc.hasExactlyOnce || h.rc.exactlyOnceEnv == "") {
		return fmt.Errorf("this relaybox has no --exactly-once with an environment variable (relay.Config.ExactlyOnce): nothing to measure")
	}
	return nil
}

func (s *relayboxSystem) setup(ctx context.Context, h *harness, tag string) (instance, error) {
	schema := "bench_rbx_" + tag
	if s.eos {
		schema = "bench_rbxeos_" + tag
	}
	if _, err := migrations.Migrate(ctx, h.pool, &migrations.Options{Schema: schema}); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	w, err := outbox.New(h.pool, &outbox.Config{Schema: schema})
	if err != nil {
		return nil, err
	}
	topic := h.topicName(s.name(), tag)
	if err := h.createTopic(ctx, topic); err != nil {
		return nil, err
	}
	return &relayboxInstance{h: h, s: s, schema: schema, t: topic, w: w}, nil
}

type relayboxInstance struct {
	h          *harness
	s          *relayboxSystem
	schema     string
	t          string
	w          *outbox.Writer
	metricsURL string
	// pgConnsMax: the most Postgres connections the relay held at once (pg_stat_activity
	// by its application_name), sampled while it runs.
	pgConnsMax atomic.Int64
}

// readCommitted: the exactly-once relay's topic is read as its readers must read it.
func (i *relayboxInstance) readCommitted() bool { return i.s.eos }

// observed reports what the harness saw the relay use.
func (i *relayboxInstance) observed() map[string]any {
	return map[string]any{"pg_connections_max": i.pgConnsMax.Load()}
}

// relayMetrics scrapes the relay's Prometheus counters that explain its figures:
// claim queries (all, and those that returned rows), rows published, and the relay's
// own publish latency (created_at to Kafka ack).
func (i *relayboxInstance) relayMetrics() map[string]float64 {
	if i.metricsURL == "" {
		return nil
	}
	cl := &http.Client{Timeout: 3 * time.Second}
	resp, err := cl.Get(i.metricsURL)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	want := map[string]string{
		"relaybox_relay_read_seconds_count":            "claims",
		"relaybox_relay_read_seconds_sum":              "claims_seconds",
		"relaybox_relay_batch_size_count":              "batches_with_rows",
		"relaybox_relay_batch_size_sum":                "rows",
		"relaybox_relay_publish_latency_seconds_count": "published",
		"relaybox_relay_publish_latency_seconds_sum":   "publish_latency_seconds_sum",
		"process_cpu_seconds_total":                    "cpu_seconds",
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 {
			if k, ok := want[f[0]]; ok {
				v, _ := strconv.ParseFloat(f[1], 64)
				out[k] = v
			}
		}
	}
	return out
}

func (i *relayboxInstance) topic() string { return i.t }

func (i *relayboxInstance) insert(ctx context.Context, tx pgx.Tx, evs []BenchEvent, ids []uuid.UUID) error {
	out := make([]outbox.Event, len(evs))
	for j := range evs {
		out[j] = outbox.Event{ID: ids[j], Topic: i.t, Key: evs[j].Key, Type: "BenchEvent", AggregateType: "bench",
			Value: &evs[j], Schema: benchSchemaText}
	}
	return i.w.Write(ctx, tx, out...)
}

func (i *relayboxInstance) start(ctx context.Context) (*proc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	app := "bench_" + i.schema
	dbURL, err := withApplicationName(i.h.databaseURL, app)
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(),
		"DATABASE_URL="+dbURL, "KAFKA_BROKERS="+strings.Join(i.h.brokers, ","),
		"SCHEMA_REGISTRY_URL="+i.h.registryURL, "RELAYBOX_SCHEMA="+i.schema,
		"RELAYBOX_METRICS_ADDR=127.0.0.1:"+strconv.Itoa(port), "RELAYBOX_LOG_LEVEL="+cmp.Or(os.Getenv("BENCH_RELAY_LOG"), "warn"))
	if i.s.eos {
		env = append(env, i.h.rc.exactlyOnceEnv+"=true")
	}
	if os.Getenv("BENCH_RELAY_PPROF") != "" {
		env = append(env, "RELAYBOX_PPROF=true")
	}
	// The settings are the binary's own reading of this environment.
	rc, err := readRelayConf(ctx, i.h.relayBin, env)
	if err != nil {
		return nil, err
	}
	if rc.ExactlyOnce != i.s.eos {
		return nil, fmt.Errorf("relay would run with exactly-once=%v, want %v", rc.ExactlyOnce, i.s.eos)
	}
	p, err := startProc(i.s.name(), []string{i.h.relayBin, "relay"}, env, "", i.h.logPath(i.s.name()+"-"+i.schema), nil)
	if err != nil {
		return nil, err
	}
	st, _ := json.Marshal(rc.settings())
	p.settings = st
	go i.countConns(p, app)
	i.metricsURL = "http://127.0.0.1:" + strconv.Itoa(port) + "/metrics"
	go pollReady(p, "http://127.0.0.1:"+strconv.Itoa(port)+"/readyz")
	return p, nil
}

// profile writes a CPU profile of the relay over d to BENCH_RELAY_PPROF (a file
// name; the system's name and the schema are prepended to its base name), then the
// relay's allocation profile since it started (the same name, .allocs added).
func (i *relayboxInstance) profile(ctx context.Context, d time.Duration) error {
	out := os.Getenv("BENCH_RELAY_PPROF")
	if out == "" || i.metricsURL == "" {
		return nil
	}
	base := strings.TrimSuffix(i.metricsURL, "/metrics") + "/debug/pprof/"
	name := filepath.Join(filepath.Dir(out), i.s.name()+"-"+i.schema+"-"+filepath.Base(out))
	if err := fetchTo(ctx, base+"profile?seconds="+strconv.Itoa(int(d.Seconds())), name); err != nil {
		return err
	}
	return fetchTo(ctx, base+"allocs", name+".allocs")
}

// fetchTo writes the body of a GET of u to the file name.
func fetchTo(ctx context.Context, u, name string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", u, resp.Status)
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// countConns samples the relay's Postgres connections while it runs.
func (i *relayboxInstance) countConns(p *proc, app string) {
	p.whileRunning(100*time.Millisecond, func() {
		var n int64
		if err := i.h.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&n); err == nil && n > i.pgConnsMax.Load() {
			i.pgConnsMax.Store(n)
		}
	})
}

// withApplicationName sets application_name in a Postgres URL or keyword/value DSN.
func withApplicationName(dsn, app string) (string, error) {
	if !strings.Contains(dsn, "://") {
		return dsn + " application_name=" + app, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("DATABASE_URL: %v", err)
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func (i *relayboxInstance) teardown(ctx context.Context) {
	i.h.exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{i.schema}.Sanitize()+` CASCADE`)
	i.h.deleteTopic(ctx, i.t)
	if i.s.eos { // the relay's commit log topic (its default name: docs/configuration.md)
		var sysid int64
		if err := i.h.pool.QueryRow(ctx, `SELECT system_identifier FROM pg_control_system()`).Scan(&sysid); err == nil {
			i.h.deleteTopic(ctx, "relaybox-"+strconv.FormatInt(sysid, 10)+"-"+i.schema+".commits")
		}
	}
}

// pollReady marks p ready when url answers 200.
func pollReady(p *proc, url string) {
	cl := &http.Client{Timeout: time.Second}
	for p.running() {
		if resp, err := cl.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				p.mu.Lock()
				p.readyAt = time.Now()
				p.mu.Unlock()
				close(p.ready)
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func goBuild(ctx context.Context, dir, out, pkg string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v: %s", pkg, err, lastLines(string(b), 10))
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// ---- Watermill: watermill-sql (Postgres) + the forwarder + watermill-kafka ----

const wmForwarderTopic = "forwarder"

type watermillSystem struct{ bin string }

func (s *watermillSystem) name() string { return "watermill" }

func (s *watermillSystem) prepare(ctx context.Context, h *harness) error {
	s.bin = filepath.Join(h.binDir, "watermill-relay")
	return goBuild(ctx, h.benchDir, s.bin, "./cmd/watermill-relay")
}

// wmAdapters are the watermill-sql adapters for the tables in schema; the relay
// (cmd/watermill-relay) builds the same ones.
func wmAdapters(schema string, batch int) (wsql.DefaultPostgreSQLSchema, wsql.DefaultPostgreSQLOffsetsAdapter) {
	return wsql.DefaultPostgreSQLSchema{
			GenerateMessagesTableName: func(topic string) string { return pgx.Identifier{schema, "watermill_" + topic}.Sanitize() },
			SubscribeBatchSize:        batch,
		}, wsql.DefaultPostgreSQLOffsetsAdapter{
			GenerateMessagesOffsetsTableName: func(topic string) string {
				return pgx.Identifier{schema, "watermill_offsets_" + topic}.Sanitize()
			},
		}
}

func (s *watermillSystem) setup(ctx context.Context, h *harness, tag string) (instance, error) {
	schema := "bench_wm_" + tag
	if _, err := h.pool.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize()); err != nil {
		return nil, err
	}
	sa, oa := wmAdapters(schema, 0)
	qs, err := sa.SchemaInitializingQueries(wsql.SchemaInitializingQueriesParams{Topic: wmForwarderTopic})
	if err != nil {
		return nil, err
	}
	oq, err := oa.SchemaInitializingQueries(wsql.OffsetsSchemaInitializingQueriesParams{Topic: wmForwarderTopic})
	if err != nil {
		return nil, err
	}
	err = pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		for _, q := range append(qs, oq...) {
			if _, err := tx.Exec(ctx, q.Query, q.Args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("watermill schema: %w", err)
	}
	topic := h.topicName("watermill", tag)
	if err := h.createTopic(ctx, topic); err != nil {
		return nil, err
	}
	return &watermillInstance{h: h, s: s, schema: schema, t: topic, sa: sa}, nil
}

type watermillInstance struct {
	h      *harness
	s      *watermillSystem
	schema string
	t      string
	sa     wsql.DefaultPostgreSQLSchema
}

func (i *watermillInstance) topic() string { return i.t }

var wmLogger = watermill.NopLogger{}

// insert publishes in tx through the forwarder's publisher (the envelope) on top of
// watermill-sql's publisher, as a Watermill outbox user does.
func (i *watermillInstance) insert(ctx context.Context, tx pgx.Tx, evs []BenchEvent, ids []uuid.UUID) error {
	pub, err := wsql.NewPublisher(wsql.TxFromPgx(tx), wsql.PublisherConfig{SchemaAdapter: i.sa}, wmLogger)
	if err != nil {
		return err
	}
	fp := forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: wmForwarderTopic})
	msgs := make([]*message.Message, len(evs))
	for j := range evs {
		b, err := encodeEvent(&evs[j])
		if err != nil {
			return err
		}
		m := message.NewMessage(ids[j].String(), b)
		m.Metadata.Set("key", evs[j].Key)
		m.SetContext(ctx)
		msgs[j] = m
	}
	return fp.Publish(i.t, msgs...)
}

func (i *watermillInstance) start(ctx context.Context) (*proc, error) {
	env := append(os.Environ(), "BENCH_DATABASE_URL="+i.h.databaseURL, "BENCH_SCHEMA="+i.schema,
		"BENCH_FORWARDER_TOPIC="+wmForwarderTopic, "BENCH_KAFKA_BROKERS="+strings.Join(i.h.brokers, ","))
	return startProc("watermill", []string{i.s.bin}, env, "", i.h.logPath("watermill-"+i.schema), nil)
}

func (i *watermillInstance) teardown(ctx context.Context) {
	i.h.exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{i.schema}.Sanitize()+` CASCADE`)
	i.h.deleteTopic(ctx, i.t)
}

// ---- CDC peers: bench/peers/<dir>/run.sh (the contract in bench/README.md) ----

type peerSystem struct {
	key string // JSON key: "cdc" or "debezium"
	dir string // bench/peers/<dir>
}

func (s *peerSystem) name() string { return s.key }

func (s *peerSystem) script(h *harness) string {
	return filepath.Join(h.benchDir, "peers", s.dir, "run.sh")
}

func (s *peerSystem) prepare(ctx context.Context, h *harness) error {
	sc := s.script(h)
	if _, err := os.Stat(sc); err != nil {
		return fmt.Errorf("bench/peers/%s/run.sh not found", s.dir)
	}
	cmd := exec.CommandContext(ctx, "bash", sc, "--prepare-only")
	cmd.Dir = filepath.Dir(sc)
	tail := newTailBuffer(16 << 10)
	cmd.Stderr = tail
	cmd.Stdout = tail
	if f, err := os.Create(h.logPath(s.dir + "-prepare")); err == nil {
		defer f.Close()
		cmd.Stderr = io.MultiWriter(tail, f)
		cmd.Stdout = io.MultiWriter(tail, f)
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("bench/peers/%s/run.sh --prepare-only: %v: %s", s.dir, err, tail.lastLines(15))
	}
	return nil
}

func (s *peerSystem) setup(ctx context.Context, h *harness, tag string) (instance, error) {
	schema := "bench_" + s.dir + "_" + tag
	slot := schema + "_slot"
	pubName := schema + "_pub"
	table := pgx.Identifier{schema, "outbox"}.Sanitize()
	for _, q := range []string{
		`CREATE SCHEMA ` + pgx.Identifier{schema}.Sanitize(),
		`CREATE TABLE ` + table + ` (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL, payload bytea NOT NULL)`,
		`CREATE PUBLICATION ` + pgx.Identifier{pubName}.Sanitize() + ` FOR TABLE ` + table,
	} {
		if _, err := h.pool.Exec(ctx, q); err != nil {
			h.exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
			return nil, err
		}
	}
	inst := &peerInstance{h: h, s: s, schema: schema, slot: slot, pub: pubName, table: schema + ".outbox"}
	if _, err := h.pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		inst.teardown(ctx)
		return nil, fmt.Errorf("create slot: %w", err)
	}
	inst.t = h.topicName(s.key, tag)
	if err := h.createTopic(ctx, inst.t); err != nil {
		inst.teardown(ctx)
		return nil, err
	}
	inst.insertSQL = `INSERT INTO ` + table + ` (id, aggregatetype, aggregateid, type, payload)
		SELECT id, 'bench', k, 'BenchEvent', p FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS u(id, k, p)`
	return inst, nil
}

type peerInstance struct {
	h                    *harness
	s                    *peerSystem
	schema, slot, pub, t string
	table                string
	insertSQL            string
	runDir               string
}

func (i *peerInstance) topic() string { return i.t }

func (i *peerInstance) insert(ctx context.Context, tx pgx.Tx, evs []BenchEvent, ids []uuid.UUID) error {
	keys := make([]string, len(evs))
	payloads := make([][]byte, len(evs))
	for j := range evs {
		b, err := encodeEvent(&evs[j])
		if err != nil {
			return err
		}
		keys[j], payloads[j] = evs[j].Key, b
	}
	_, err := tx.Exec(ctx, i.insertSQL, ids, keys, payloads)
	return err
}

func (i *peerInstance) start(ctx context.Context) (*proc, error) {
	i.runDir = filepath.Join(i.h.runDir, i.schema)
	if err := os.MkdirAll(i.runDir, 0o755); err != nil {
		return nil, err
	}
	pg := i.h.pgConfig
	env := append(os.Environ(),
		"BENCH_PG_HOST="+pg.Host, "BENCH_PG_PORT="+strconv.Itoa(int(pg.Port)), "BENCH_PG_USER="+pg.User,
		"BENCH_PG_PASSWORD="+pg.Password, "BENCH_PG_DB="+pg.Database, "BENCH_TABLE="+i.table,
		"BENCH_SLOT="+i.slot, "BENCH_PUBLICATION="+i.pub, "BENCH_KAFKA_BROKERS="+strings.Join(i.h.brokers, ","),
		"BENCH_TOPIC="+i.t, "BENCH_RUN_DIR="+i.runDir)
	sc := i.s.script(i.h)
	return startProc(i.s.key, []string{"bash", sc}, env, filepath.Dir(sc), i.h.logPath(i.s.dir+"-"+i.schema), nil)
}

func (i *peerInstance) teardown(ctx context.Context) {
	// The slot may stay active for a moment after the runner exited.
	for range 50 {
		var active bool
		err := i.h.pool.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, i.slot).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err == nil && !active {
			i.h.exec(ctx, `SELECT pg_drop_replication_slot($1)`, i.slot)
			break
		}
		if err == nil && active {
			i.h.exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, i.slot)
		}
		time.Sleep(200 * time.Millisecond)
	}
	i.h.exec(ctx, `DROP PUBLICATION IF EXISTS `+pgx.Identifier{i.pub}.Sanitize())
	i.h.exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{i.schema}.Sanitize()+` CASCADE`)
	if i.t != "" {
		i.h.deleteTopic(ctx, i.t)
	}
}
