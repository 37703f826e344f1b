package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/relay"
)

// config is the run's configuration: environment variables, overridden by flags.
type config struct {
	Systems        []string      `json:"systems"`
	Scenarios      []string      `json:"scenarios"`
	Quick          bool          `json:"quick"`
	N              int           `json:"drain_n"`
	Rates          []int         `json:"steady_rates"`
	Duration       time.Duration `json:"-"`
	Warmup         time.Duration `json:"-"`
	DurationS      float64       `json:"steady_duration_s"`
	WarmupS        float64       `json:"steady_warmup_s"`
	Keys           int           `json:"keys"`
	EventBytes     int           `json:"event_bytes"`
	Partitions     int           `json:"partitions"`
	TxEvents       int           `json:"steady_max_events_per_tx"`
	WriterConns    int           `json:"steady_writer_connections"`
	FillTxEvents   int           `json:"drain_fill_events_per_tx"`
	FillWorkers    int           `json:"drain_fill_workers"`
	PGBatch        int           `json:"pg_limit_batch"`
	PGWorkers      []int         `json:"pg_limit_connections"`
	Repeat         int           `json:"repeat"`
	BacklogSmall   int           `json:"backlog_small"`
	BacklogBig     int           `json:"backlog_big"`
	BacklogMid     int           `json:"backlog_mid"`
	BacklogPad     int           `json:"backlog_event_bytes"`
	BacklogBatches int           `json:"backlog_batches_measured"`
	DrainTimeout   time.Duration `json:"-"`
	Out            string        `json:"out"`
}

var allSystems = []string{"relaybox", "relaybox_eos", "watermill", "cdc", "debezium"}
var allScenarios = []string{"limits", "drain", "steady", "backlog", "consume"}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func parseConfig(args []string) (config, error) {
	quick := envOr("BENCH_QUICK", "") == "1"
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var c config
	def := func(quickV, fullV string) string {
		if quick {
			return quickV
		}
		return fullV
	}
	systems := fs.String("systems", envOr("BENCH_SYSTEMS", strings.Join(allSystems, ",")), "systems: relaybox,relaybox_eos,watermill,cdc,debezium [BENCH_SYSTEMS]")
	scenarios := fs.String("scenarios", envOr("BENCH_SCENARIOS", strings.Join(allScenarios, ",")), "scenarios: limits,drain,steady,backlog,consume [BENCH_SCENARIOS]")
	fs.BoolVar(&c.Quick, "quick", quick, "smoke variant: small N, short steady, small backlog [BENCH_QUICK=1]")
	large := fs.Bool("large", envOr("BENCH_LARGE", "") == "1", "drain 1M events instead of 200k [BENCH_LARGE=1]")
	n := fs.Int("n", 0, "drain events (default 200000, 1000000 with -large, 20000 quick) [BENCH_N]")
	rates := fs.String("rates", envOr("BENCH_RATES", def("1000,5000", "1000,5000,20000")), "steady rates, events/s [BENCH_RATES]")
	dur := fs.Duration("duration", mustDur(envOr("BENCH_DURATION", def("10s", "60s"))), "steady measured window per rate [BENCH_DURATION]")
	warm := fs.Duration("warmup", mustDur(envOr("BENCH_WARMUP", def("3s", "10s"))), "steady warm-up per rate [BENCH_WARMUP]")
	fs.IntVar(&c.Keys, "keys", atoiOr(envOr("BENCH_KEYS", "10000")), "distinct keys [BENCH_KEYS]")
	fs.IntVar(&c.EventBytes, "event-bytes", atoiOr(envOr("BENCH_EVENT_BYTES", "1024")), "Avro event size [BENCH_EVENT_BYTES]")
	fs.IntVar(&c.Partitions, "partitions", atoiOr(envOr("BENCH_PARTITIONS", "12")), "partitions of every topic [BENCH_PARTITIONS]")
	fs.IntVar(&c.BacklogSmall, "backlog-small", atoiOr(envOr("BENCH_BACKLOG_SMALL", "10000")), "small backlog rows [BENCH_BACKLOG_SMALL]")
	fs.IntVar(&c.BacklogMid, "backlog-mid", atoiOr(envOr("BENCH_BACKLOG_MID", def("50000", "500000"))), "middle backlog rows, 0 for none [BENCH_BACKLOG_MID]")
	fs.IntVar(&c.BacklogBig, "backlog-big", atoiOr(envOr("BENCH_BACKLOG_BIG", def("200000", "5000000"))), "big backlog rows [BENCH_BACKLOG_BIG]")
	fs.IntVar(&c.BacklogPad, "backlog-event-bytes", atoiOr(envOr("BENCH_BACKLOG_EVENT_BYTES", "1024")), "event size of the backlog filler [BENCH_BACKLOG_EVENT_BYTES]")
	fs.IntVar(&c.BacklogBatches, "backlog-batches", atoiOr(envOr("BENCH_BACKLOG_BATCHES", "300")), "batch read queries measured per backlog size [BENCH_BACKLOG_BATCHES]")
	fs.IntVar(&c.Repeat, "repeat", atoiOr(envOr("BENCH_REPEAT", def("1", "3"))), "runs of each limit and of each drain; the figures are their medians, every run in the JSON [BENCH_REPEAT]")
	pgWorkers := fs.String("pg-workers", envOr("BENCH_PG_WORKERS", "4,8,16"), "connection counts of the raw Postgres drain limit, the best one counts; the relay's pool size is always among them [BENCH_PG_WORKERS]")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", mustDur(envOr("BENCH_DRAIN_TIMEOUT", "30m")), "give up a drain after this long [BENCH_DRAIN_TIMEOUT]")
	fs.StringVar(&c.Out, "out", envOr("BENCH_OUT", ""), "JSON output file [BENCH_OUT] (default <repo>/bench-out/bench.json)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.Quick = c.Quick || quick
	c.Systems = splitList(*systems)
	for i, s := range c.Systems {
		if s == "pqcdc" || s == "go-pq-cdc-kafka" {
			c.Systems[i] = "cdc"
		}
	}
	c.Scenarios = splitList(*scenarios)
	c.N = *n
	if c.N == 0 {
		c.N = atoiOr(envOr("BENCH_N", "0"))
	}
	if c.N == 0 {
		switch {
		case *large:
			c.N = 1000000
		case c.Quick:
			c.N = 20000
		default:
			c.N = 200000
		}
	}
	for _, r := range splitList(*rates) {
		v, err := strconv.Atoi(r)
		if err != nil || v <= 0 {
			return c, fmt.Errorf("bad rate %q", r)
		}
		c.Rates = append(c.Rates, v)
	}
	for _, w := range splitList(*pgWorkers) {
		v, err := strconv.Atoi(w)
		if err != nil || v <= 0 || v > 64 {
			return c, fmt.Errorf("bad BENCH_PG_WORKERS entry %q (1-64)", w)
		}
		c.PGWorkers = append(c.PGWorkers, v)
	}
	c.Duration, c.Warmup = *dur, *warm
	c.DurationS, c.WarmupS = dur.Seconds(), warm.Seconds()
	c.TxEvents, c.WriterConns = 50, 8
	c.FillTxEvents, c.FillWorkers = 1000, 5
	// The relay's batch size: the CLI default, or RELAYBOX_BATCH_SIZE when set for the relay
	// (main replaces it with what the relaybox binary reports).
	c.PGBatch = atoiOr(envOr("RELAYBOX_BATCH_SIZE", strconv.Itoa(relay.DefaultBatchSize)))
	if c.Keys%c.TxEvents != 0 || (c.Keys/c.TxEvents)%c.WriterConns != 0 || c.Keys%c.FillTxEvents != 0 || (c.Keys/c.FillTxEvents)%c.FillWorkers != 0 {
		return c, fmt.Errorf("keys (%d) must be a multiple of %d and %d (per-key commit order of the generators)",
			c.Keys, c.TxEvents*c.WriterConns, c.FillTxEvents*c.FillWorkers)
	}
	return c, nil
}

func mustDur(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		log.Fatalf("bad duration %q: %v", s, err)
	}
	return d
}

func atoiOr(s string) int {
	v, err := strconv.Atoi(s)
	if err != nil {
		log.Fatalf("bad number %q", s)
	}
	return v
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func has(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// harness holds the services and the run's scratch space.
type harness struct {
	cfg            config
	kafkaLimitRuns int
	relayBin       string     // the relaybox binary built from this tree
	rc             *relayConf // the relay's effective configuration, read from relayBin
	es             eventSpace
	pool           *pgxpool.Pool
	pgConfig       *pgconn.Config
	adm            *kadm.Client
	kcl            *kgo.Client
	brokers        []string
	databaseURL    string
	registryURL    string
	mainDir        string // the relaybox repository
	benchDir       string
	binDir         string
	runDir         string // logs and peers' scratch dirs
	runID          string
	logf           func(format string, args ...any)
}

func newHarness(ctx context.Context, cfg config, mainDir string) (*harness, error) {
	h := &harness{cfg: cfg, mainDir: mainDir, benchDir: filepath.Join(mainDir, "bench"),
		databaseURL: os.Getenv("DATABASE_URL"), registryURL: os.Getenv("SCHEMA_REGISTRY_URL"),
		brokers: splitList(os.Getenv("KAFKA_BROKERS"))}
	if h.databaseURL == "" || len(h.brokers) == 0 || h.registryURL == "" {
		return nil, fmt.Errorf("DATABASE_URL, KAFKA_BROKERS and SCHEMA_REGISTRY_URL must be set (make bench sets them)")
	}
	h.runID = strconv.FormatInt(time.Now().Unix()%(36*36*36*36*36), 36)
	h.logf = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	pc, err := pgxpool.ParseConfig(h.databaseURL)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = 32
	h.pgConfig = pc.ConnConfig.Config.Copy()
	if h.pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		return nil, err
	}
	if err := h.pool.Ping(ctx); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if h.kcl, err = kgo.NewClient(kgo.SeedBrokers(h.brokers...)); err != nil {
		return nil, err
	}
	h.adm = kadm.NewClient(h.kcl)
	h.es = newEventSpace(cfg.Keys, cfg.EventBytes)
	h.runDir = filepath.Join(filepath.Dir(cfg.Out), "run-"+h.runID)
	h.binDir = filepath.Join(h.runDir, "bin")
	if err := os.MkdirAll(h.binDir, 0o755); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *harness) close() {
	h.kcl.Close()
	h.pool.Close()
}

func (h *harness) logPath(name string) string { return filepath.Join(h.runDir, name+".log") }

func (h *harness) topicName(system, tag string) string { return "bench." + system + "." + tag }

func (h *harness) createTopic(ctx context.Context, topic string) error {
	resp, err := h.adm.CreateTopic(ctx, int32(h.cfg.Partitions), 1, nil, topic)
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if resp.Err != nil {
		return fmt.Errorf("create topic %s: %w", topic, resp.Err)
	}
	return nil
}

func (h *harness) deleteTopic(ctx context.Context, topic string) {
	if _, err := h.adm.DeleteTopics(ctx, topic); err != nil {
		h.logf("delete topic %s: %v", topic, err)
	}
}

func (h *harness) exec(ctx context.Context, sql string, args ...any) {
	if _, err := h.pool.Exec(ctx, sql, args...); err != nil {
		h.logf("%s: %v", strings.SplitN(sql, "\n", 2)[0], err)
	}
}

// writeRange writes events [from, to) in one transaction of inst and records their
// commit time in t.
func (h *harness) writeRange(ctx context.Context, inst instance, t *tracker, from, to int64) error {
	n := int(to - from)
	evs := make([]BenchEvent, n)
	ids := make([]uuid.UUID, n)
	now := time.Now()
	for j := range n {
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		ids[j] = id
		evs[j] = h.es.event(from+int64(j), id, now)
	}
	if err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error { return inst.insert(ctx, tx, evs, ids) }); err != nil {
		return err
	}
	at := time.Now().UnixNano()
	for i := from; i < to; i++ {
		t.markCommitted(i, at)
	}
	return nil
}

// fill writes events [0, n) before a drain: FillWorkers connections, transactions of
// FillTxEvents events; transaction c goes to worker c mod FillWorkers, so a key's
// transactions commit in sequence order.
func (h *harness) fill(ctx context.Context, inst instance, t *tracker, n int64) error {
	w := h.cfg.FillWorkers
	chans := make([]chan int64, w)
	errs := make(chan error, w)
	var wg sync.WaitGroup
	for k := range w {
		chans[k] = make(chan int64, 1024)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := range chans[k] {
				if err := h.writeRange(ctx, inst, t, from, min(from+int64(h.cfg.FillTxEvents), n)); err != nil {
					errs <- err
					for range chans[k] {
					}
					return
				}
			}
		}()
	}
	for c, from := 0, int64(0); from < n; c, from = c+1, from+int64(h.cfg.FillTxEvents) {
		chans[c%w] <- from
	}
	for _, ch := range chans {
		close(ch)
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}
