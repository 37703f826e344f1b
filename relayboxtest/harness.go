package relayboxtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// Services chooses the Kafka and the schema registry a [Harness] runs on.
type Services int

const (
	// Auto runs on the Kafka and registry named by KAFKA_BROKERS and
	// SCHEMA_REGISTRY_URL when both are set, and in-process otherwise. The default:
	// a developer's `go test` needs nothing, CI exports the variables and tests on
	// the real services.
	Auto Services = iota
	// InProcess runs on franz-go's in-process fakes, kfake (a Kafka cluster) and
	// srfake (a Confluent-compatible registry), whatever the environment says.
	InProcess
	// FromEnv runs on KAFKA_BROKERS and SCHEMA_REGISTRY_URL, and fails the test when
	// either is unset.
	FromEnv
)

// Environment variables the harness reads (Services Auto and FromEnv).
const (
	BrokersVar  = "KAFKA_BROKERS"
	RegistryVar = "SCHEMA_REGISTRY_URL"
)

// DefaultAwaitTimeout bounds [Harness.Drain] and [Consumer.AwaitApplied] when their
// context has no deadline.
const DefaultAwaitTimeout = time.Minute

// DefaultPartitions is the partition count of the topics a harness creates.
const DefaultPartitions = 3

// pollEvery is how often Drain and AwaitApplied look at Postgres. They wait on a
// condition with a deadline, they do not sleep for a guessed duration.
const pollEvery = 20 * time.Millisecond

// Options configures [Start]. Only Pool is required.
type Options struct {
	// Pool connects to the test's Postgres: the user's own database. Required. The
	// harness opens its own pool from Pool's config for the relay and the consumers
	// (sized for the relay) and closes it at the end of the test.
	Pool *pgxpool.Pool
	// Schema holds relaybox's tables. Defaults to a new schema for the test, migrated
	// by Start and dropped when the test ends (RELAYBOX_KEEP_SCHEMAS=1 keeps it). A
	// given schema is migrated and kept.
	Schema string
	// Services chooses Kafka and the registry. Defaults to Auto.
	Services Services
	// Topics are created before the relay starts, with Partitions partitions. On
	// real Kafka use [Harness.Topic] instead, for names of the test's own.
	Topics []string
	// Partitions of the topics the harness creates. Defaults to DefaultPartitions.
	Partitions int32
	// Relay is the relay's configuration (batch size, ExactlyOnce, Hooks, ...). The
	// harness sets Schema, Brokers, RegistryURL (unless Registry is set) and Logger
	// (unless set), turns AutoRegister and AutoCreateTopics on, sets PollInterval to
	// 100ms and ShutdownGrace to 5s unless set, and Retention to 24h unless set: in
	// retention mode published rows stay (marked published), so that RequireEvents
	// still sees them after Drain and AwaitApplied can wait for every event written.
	Relay *relay.Config
	// NoRelay starts no relay: for a test that runs its own (Drain then needs one).
	NoRelay bool
	// Logger receives the relay's and consumers' logs. Defaults to warnings and
	// errors written to t.Log.
	Logger *slog.Logger
}

// Harness runs a relay, and the consumers a test asks for, in-process, against the
// test's Postgres and a Kafka and registry chosen by [Options.Services]. Everything
// it starts stops when the test ends. Its methods are safe for concurrent use.
type Harness struct {
	t         testing.TB
	pool      *pgxpool.Pool
	schema    string
	brokers   []string
	registry  string
	inProcess bool
	suffix    string
	log       *slog.Logger
	parts     int32
	relay     *relay.Relay
	relayRun  *runner
}

// Start starts a harness for the test t: it migrates the schema, starts (or connects
// to) Kafka and the registry, creates opts.Topics and starts the relay. It fails t
// when any of that fails.
//
//	h := relayboxtest.Start(t, &relayboxtest.Options{Pool: pool})
//	w := h.Writer(nil)
//	// ... the unit of work writes through w ...
//	if err := h.Drain(ctx); err != nil {
//		t.Fatal(err)
//	}
func Start(t testing.TB, opts *Options) *Harness {
	t.Helper()
	o := Options{}
	if opts != nil {
		o = *opts
	}
	if o.Pool == nil {
		t.Fatal("relayboxtest.Start: Options.Pool is required")
	}
	if o.Partitions <= 0 {
		o.Partitions = DefaultPartitions
	}
	h := &Harness{t: t, suffix: uniqueSuffix(t), parts: o.Partitions, log: o.Logger}
	if h.log == nil {
		h.log = slog.New(slog.NewTextHandler(tbWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultAwaitTimeout)
	defer cancel()

	// Postgres: a pool of the harness's own, sized for the relay, on the user's database.
	rcfg := relay.Config{}
	if o.Relay != nil {
		rcfg = *o.Relay
	}
	pcfg := o.Pool.Config()
	pcfg.MaxConns = int32(relay.DefaultPoolSize(&rcfg)) + 4 // + the consumers
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatalf("relayboxtest: connecting to Postgres: %v", err)
	}
	t.Cleanup(pool.Close)
	h.pool = pool
	h.schema = o.Schema
	if h.schema == "" {
		h.schema = newSchema(ctx, t, pool, h.suffix)
	} else if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: h.schema}); err != nil {
		t.Fatalf("relayboxtest: migrating schema %q: %v", h.schema, err)
	}

	// Kafka and the registry.
	brokers, reg := os.Getenv(BrokersVar), os.Getenv(RegistryVar)
	switch {
	case o.Services == InProcess, o.Services == Auto && (brokers == "" || reg == ""):
		h.inProcess = true
		cl, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(int(o.Partitions)))
		if err != nil {
			t.Fatalf("relayboxtest: starting kfake: %v", err)
		}
		t.Cleanup(cl.Close)
		sr := srfake.New()
		t.Cleanup(sr.Close)
		h.brokers, h.registry = cl.ListenAddrs(), sr.URL()
	case o.Services == FromEnv && (brokers == "" || reg == ""):
		t.Fatalf("relayboxtest: Services FromEnv needs %s and %s", BrokersVar, RegistryVar)
	default:
		h.brokers, h.registry = strings.Split(brokers, ","), reg
	}
	for _, topic := range o.Topics {
		h.createTopic(ctx, topic)
	}

	if o.NoRelay {
		return h
	}
	rcfg.Schema = h.schema
	rcfg.Brokers = h.brokers
	if rcfg.Registry == nil {
		rcfg.RegistryURL = h.registry
	}
	rcfg.DisableAutoRegister = false
	rcfg.AutoCreateTopics = true
	if rcfg.TopicPartitions == 0 {
		rcfg.TopicPartitions = o.Partitions
	}
	if rcfg.PollInterval == 0 {
		rcfg.PollInterval = 100 * time.Millisecond
	}
	if rcfg.ShutdownGrace == 0 {
		rcfg.ShutdownGrace = 5 * time.Second
	}
	if rcfg.Retention == 0 {
		rcfg.Retention = 24 * time.Hour
	}
	if rcfg.Logger == nil {
		rcfg.Logger = h.log
	}
	r, err := relay.New(pool, &rcfg)
	if err != nil {
		t.Fatalf("relayboxtest: relay: %v", err)
	}
	h.relay = r
	h.relayRun = startRunner(t, "the relay", r.Run)
	return h
}

// NewSchema creates a Postgres schema for the test t, migrates relaybox's tables into
// it, and drops it when the test ends (RELAYBOX_KEEP_SCHEMAS=1 keeps it). It returns
// its name, for the writer's Config.Schema and the assertions' Filter.Schema: tests
// that only assert what a unit of work wrote need no more than this and Postgres.
func NewSchema(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), DefaultAwaitTimeout)
	defer cancel()
	return newSchema(ctx, t, pool, uniqueSuffix(t))
}

func newSchema(ctx context.Context, t testing.TB, pool *pgxpool.Pool, suffix string) string {
	t.Helper()
	schema := "relayboxtest_" + suffix
	if _, err := migrations.Migrate(ctx, pool, &migrations.Options{Schema: schema}); err != nil {
		t.Fatalf("relayboxtest: migrating schema %q: %v", schema, err)
	}
	t.Cleanup(func() {
		if os.Getenv("RELAYBOX_KEEP_SCHEMAS") == "1" {
			return
		}
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	return schema
}

// Schema is the Postgres schema of relaybox's tables: give it to the writer (as
// [Harness.Writer] does) and to the Filter of the Require assertions.
func (h *Harness) Schema() string { return h.schema }

// Brokers are the Kafka seed brokers the harness runs on.
func (h *Harness) Brokers() []string { return append([]string(nil), h.brokers...) }

// RegistryURL is the schema registry's base URL.
func (h *Harness) RegistryURL() string { return h.registry }

// InProcess reports whether the harness runs on kfake and srfake.
func (h *Harness) InProcess() bool { return h.inProcess }

// Relay is the relay the harness runs (nil with NoRelay), for its Ready and Admin.
func (h *Harness) Relay() *relay.Relay { return h.relay }

// Pool is the harness's own pool on the test's database.
func (h *Harness) Pool() *pgxpool.Pool { return h.pool }

// Topic creates a topic for the test and returns its name: name itself in-process
// (the cluster is the test's own), name with a suffix unique to the test on real
// Kafka, where tests share the cluster. It is deleted when the test ends (real Kafka).
func (h *Harness) Topic(name string) string {
	h.t.Helper()
	if !h.inProcess {
		name = name + "-" + h.suffix
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultAwaitTimeout)
	defer cancel()
	h.createTopic(ctx, name)
	return name
}

func (h *Harness) createTopic(ctx context.Context, name string) {
	h.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.brokers...))
	if err != nil {
		h.t.Fatalf("relayboxtest: kafka client: %v", err)
	}
	adm := kadm.NewClient(cl)
	res, err := adm.CreateTopics(ctx, h.parts, 1, nil, name)
	if err == nil {
		err = res.Error()
	}
	if err != nil && !strings.Contains(err.Error(), "TOPIC_ALREADY_EXISTS") {
		cl.Close()
		h.t.Fatalf("relayboxtest: creating topic %q: %v", name, err)
	}
	if h.inProcess {
		cl.Close()
		return
	}
	h.t.Cleanup(func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = adm.DeleteTopics(dctx, name, consumer.DeadLetterTopicName(name, ".dlq"))
		cl.Close()
	})
}

// Writer returns an outbox writer on the harness's schema. cfg may be nil; its
// Schema is replaced.
func (h *Harness) Writer(cfg *outbox.Config) *outbox.Writer {
	h.t.Helper()
	c := outbox.Config{}
	if cfg != nil {
		c = *cfg
	}
	c.Schema = h.schema
	w, err := outbox.New(h.pool, &c)
	if err != nil {
		h.t.Fatalf("relayboxtest: outbox writer: %v", err)
	}
	return w
}

// Drain returns nil once every event in the outbox has been published: none is
// waiting, and every row the relay read was acked by Kafka. It returns an error
// listing the events parked (they will not be published without an operator), an
// error when the relay stopped, and ctx's error (with what is still waiting) when
// ctx ends first; without a deadline on ctx, it waits at most DefaultAwaitTimeout.
func (h *Harness) Drain(ctx context.Context) error {
	if h.relay == nil {
		return errors.New("relayboxtest: Drain: the harness runs no relay (Options.NoRelay)")
	}
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	outboxT := pgx.Identifier{h.schema, "outbox"}.Sanitize()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var waiting []row // as last read: a read cut short by ctx keeps the previous
	for {
		rs, err := query(ctx, h.pool, h.schema)
		var parked []row
		if err == nil {
			waiting = nil
		}
		for _, r := range rs {
			switch {
			case r.Parked:
				parked = append(parked, r)
			case !r.Published:
				waiting = append(waiting, r)
			}
		}
		switch {
		case err != nil && ctx.Err() == nil:
			return fmt.Errorf("relayboxtest: Drain: reading %s: %w", outboxT, err)
		case len(parked) > 0:
			return fmt.Errorf("relayboxtest: Drain: %d event(s) parked\n%s", len(parked), listing(parked, ""))
		case err == nil && len(waiting) == 0:
			return nil
		}
		if stopped, rerr := h.relayRun.stopped(); stopped {
			return fmt.Errorf("relayboxtest: Drain: the relay stopped (%v) with %d event(s) waiting", rerr, len(waiting))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("relayboxtest: Drain: %w with %d event(s) not yet published\n%s", ctx.Err(), len(waiting), listing(waiting, ""))
		case <-tick.C:
		}
	}
}

func withDefaultDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultAwaitTimeout)
}

var nameRE = regexp.MustCompile(`[^a-z0-9]+`)

// uniqueSuffix names what a test creates: the end of its name and 8 random hex digits.
func uniqueSuffix(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := strings.Trim(nameRE.ReplaceAllString(strings.ToLower(t.Name()), "_"), "_")
	if len(n) > 24 {
		n = strings.Trim(n[len(n)-24:], "_")
	}
	return n + "_" + hex.EncodeToString(b[:])
}

// tbWriter writes log lines to t.Log.
type tbWriter struct{ t testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = tbWriter{}
