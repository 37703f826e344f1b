package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	rbc "github.com/relaybox/relaybox/consumer"
)

// The consume scenario runs each variant's consumer as a child process (this binary
// with the argument consumeChildArg), so that its resident memory is its own, as the
// harness reads a relay's. The child reads its settings from BENCH_CONSUME_* variables
// and reports on stdout, one line each:
//
//	FIRST <unix ns>                        the first record fetched
//	PROGRESS <applied> <duplicates>        every 200 ms
//	DONE <applied> <duplicates> <first ns> <last ns>
//
// applied counts events whose effect row committed, duplicates the redeliveries
// recognised as such; DONE comes once their sum reaches BENCH_CONSUME_N, at the time
// of the last commit (last ns). Then the child leaves its group and exits 0.
const consumeChildArg = "consume-child"

// The variants of the consume scenario.
const (
	variantBatch       = "batch"         // relaybox consumer, BatchMode
	variantSingle      = "single"        // relaybox consumer, one transaction per record
	variantBatchNoDup  = "batch_nodedup" // relaybox consumer, BatchMode, DisableDedup
	variantHandwritten = "handwritten"   // franz-go + one transaction per record + dedup table
	variantLimit       = "limit"         // franz-go + COPY in large batches, no dedup
)

// How the relaybox consumer's handler applies its effect (BENCH_CONSUME_EFFECT).
const (
	effectInsert = "insert" // consumer.InsertDeferred (the default)
	effectExec   = "exec"   // consumer.ExecDeferred of an INSERT statement
)

// childSettings is what the harness passes to a child, as environment variables.
type childSettings struct {
	Variant  string
	Topic    string
	Group    string
	Schema   string // the Postgres schema of processed_events, the effects and the hand-written dedup table
	N        int64
	Conns    int    // Postgres connections
	App      string // their application_name, by which the harness finds their backends
	Effect   string // how relaybox's handler applies its effect: effectInsert ("" too) or effectExec
	Brokers  []string
	DB       string
	Registry string
}

func (s childSettings) env() []string {
	return []string{
		"BENCH_CONSUME_VARIANT=" + s.Variant, "BENCH_CONSUME_TOPIC=" + s.Topic, "BENCH_CONSUME_GROUP=" + s.Group,
		"BENCH_CONSUME_SCHEMA=" + s.Schema, "BENCH_CONSUME_N=" + strconv.FormatInt(s.N, 10),
		"BENCH_CONSUME_CONNS=" + strconv.Itoa(s.Conns), "BENCH_CONSUME_APP=" + s.App, "BENCH_CONSUME_EFFECT=" + s.Effect,
	}
}

func childSettingsFromEnv() (childSettings, error) {
	s := childSettings{
		Variant: os.Getenv("BENCH_CONSUME_VARIANT"), Topic: os.Getenv("BENCH_CONSUME_TOPIC"),
		Group: os.Getenv("BENCH_CONSUME_GROUP"), Schema: os.Getenv("BENCH_CONSUME_SCHEMA"), App: os.Getenv("BENCH_CONSUME_APP"),
		Effect:  os.Getenv("BENCH_CONSUME_EFFECT"),
		Brokers: splitList(os.Getenv("KAFKA_BROKERS")), DB: os.Getenv("DATABASE_URL"), Registry: os.Getenv("SCHEMA_REGISTRY_URL"),
	}
	var err error
	if s.N, err = strconv.ParseInt(os.Getenv("BENCH_CONSUME_N"), 10, 64); err != nil || s.N <= 0 {
		return s, fmt.Errorf("BENCH_CONSUME_N: want a positive number, got %q", os.Getenv("BENCH_CONSUME_N"))
	}
	if s.Conns, err = strconv.Atoi(os.Getenv("BENCH_CONSUME_CONNS")); err != nil || s.Conns <= 0 {
		return s, fmt.Errorf("BENCH_CONSUME_CONNS: want a positive number, got %q", os.Getenv("BENCH_CONSUME_CONNS"))
	}
	switch {
	case s.Topic == "" || s.Group == "" || s.Schema == "":
		return s, errors.New("BENCH_CONSUME_TOPIC, BENCH_CONSUME_GROUP and BENCH_CONSUME_SCHEMA are required")
	case s.DB == "" || len(s.Brokers) == 0 || s.Registry == "":
		return s, errors.New("DATABASE_URL, KAFKA_BROKERS and SCHEMA_REGISTRY_URL are required")
	}
	return s, nil
}

// consumeChildMain is the child's main: it returns the exit code.
func consumeChildMain() int {
	s, err := childSettingsFromEnv()
	if err == nil {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		// BENCH_CONSUME_PPROF=dir: a CPU profile of each child, dir/consume-<variant>-<group>.pprof.
		if dir := os.Getenv("BENCH_CONSUME_PPROF"); dir != "" {
			f, perr := os.Create(filepath.Join(dir, "consume-"+s.Variant+"-"+s.Group+".pprof"))
			if perr != nil {
				fmt.Fprintln(os.Stderr, "consume-child:", perr)
				return 1
			}
			defer f.Close()
			if perr := pprof.StartCPUProfile(f); perr == nil {
				defer pprof.StopCPUProfile()
			}
		}
		err = runChild(ctx, s, newProgress(s.N))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "consume-child:", err)
		return 1
	}
	return 0
}

// effectsTable, hwTable: the handlers' effect rows, the hand-written dedup table.
func effectsTable(schema string) string { return pgx.Identifier{schema, "consume_effects"}.Sanitize() }
func hwTable(schema string) string      { return pgx.Identifier{schema, "handwritten_processed"}.Sanitize() }

// effectSQL is the one row every handler applies per event.
func effectSQL(schema string) string {
	return `INSERT INTO ` + effectsTable(schema) + ` (event_id, k, seq) VALUES ($1, $2, $3)`
}

// AvroSchema gives the consumer's decoder the writer's record name (a schema derived
// from the Go type would be named BenchEvent, without the namespace).
func (BenchEvent) AvroSchema() string { return benchSchemaText }

// progress is a child's accounting, reported on stdout.
type progress struct {
	n                   int64
	applied, duplicates atomic.Int64
	first, last         atomic.Int64 // unix ns
	batches, batched    atomic.Int64 // relaybox batch mode: batches, and their records
	done                chan struct{}
	once                sync.Once
	out                 sync.Mutex
}

func newProgress(n int64) *progress { return &progress{n: n, done: make(chan struct{})} }

func (p *progress) println(format string, args ...any) {
	p.out.Lock()
	defer p.out.Unlock()
	fmt.Printf(format+"\n", args...)
}

// fetched marks the first record fetched (a kgo hook: every variant alike).
func (p *progress) OnFetchBatchRead(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.FetchBatchMetrics) {
	if m.NumRecords > 0 && p.first.CompareAndSwap(0, time.Now().UnixNano()) {
		p.println("FIRST %d", p.first.Load())
	}
}

// add counts committed outcomes; called after their transaction committed.
func (p *progress) add(applied, dups int64) {
	a, d := p.applied.Add(applied), p.duplicates.Add(dups)
	if a+d >= p.n {
		p.once.Do(func() {
			p.last.Store(time.Now().UnixNano())
			close(p.done)
		})
	}
}

// report prints PROGRESS lines until done or ctx ends, then DONE if done.
func (p *progress) report(ctx context.Context) bool {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-p.done:
			if b := p.batches.Load(); b > 0 {
				fmt.Fprintf(os.Stderr, "consume-child: %d batches, %.0f records each on average\n", b, float64(p.batched.Load())/float64(b))
			}
			p.println("DONE %d %d %d %d", p.applied.Load(), p.duplicates.Load(), p.first.Load(), p.last.Load())
			return true
		case <-t.C:
			p.println("PROGRESS %d %d", p.applied.Load(), p.duplicates.Load())
		}
	}
}

// runChild runs s's variant until p counts every event done, then stops it.
func runChild(ctx context.Context, s childSettings, p *progress) error {
	pc, err := pgxpool.ParseConfig(s.DB)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	pc.MaxConns = int32(s.Conns)
	if s.App != "" {
		pc.ConnConfig.RuntimeParams["application_name"] = s.App
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return err
	}
	defer pool.Close()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	switch s.Variant {
	case variantBatch, variantSingle, variantBatchNoDup:
		go func() { errc <- runRelaybox(runCtx, s, pool, p) }()
	case variantHandwritten:
		go func() { errc <- runHandwritten(runCtx, s, pool, p) }()
	case variantLimit:
		go func() { errc <- runLimit(runCtx, s, pool, p) }()
	default:
		return fmt.Errorf("unknown variant %q", s.Variant)
	}
	reported := make(chan bool, 1)
	go func() { reported <- p.report(runCtx) }()
	select {
	case err := <-errc:
		cancel()
		if err == nil {
			err = errors.New("the consumer returned before all events were done")
		}
		return err
	case ok := <-reported:
		cancel()
		err := <-errc
		if !ok {
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("after all events were done: %w", err)
		}
		return nil
	}
}

// runRelaybox is relaybox's consumer with the scenario's handler, defaults otherwise.
func runRelaybox(ctx context.Context, s childSettings, pool *pgxpool.Pool, p *progress) error {
	c, err := rbc.New(pool, &rbc.Config{
		Group: s.Group, Topics: []string{s.Topic}, Brokers: s.Brokers, RegistryURL: s.Registry, Schema: s.Schema,
		BatchMode: s.Variant != variantSingle, DisableDedup: s.Variant == variantBatchNoDup,
		KafkaOpts: []kgo.Opt{kgo.WithHooks(p)},
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Hooks: rbc.Hooks{
			OnProcessed: func(rbc.RecordEvent) { p.add(1, 0) },
			OnDuplicate: func(rbc.RecordEvent) { p.add(0, 1) },
			OnBatch:     func(b rbc.BatchEvent) { p.batches.Add(1); p.batched.Add(int64(b.Records)) },
		},
	})
	if err != nil {
		return err
	}
	// The effect is an insert whose outcome the handler does not look at:
	// InsertDeferred lets batch mode send a batch's effect rows as one COPY (in
	// single mode an INSERT with the COMMIT); BENCH_CONSUME_EFFECT=exec sends an
	// INSERT statement per event with ExecDeferred instead (one round trip a batch).
	if s.Effect == effectExec {
		ins := effectSQL(s.Schema)
		rbc.Handle(c, "BenchEvent", func(ctx context.Context, tx pgx.Tx, ev rbc.Event[BenchEvent]) error {
			return rbc.ExecDeferred(ctx, tx, ins, ev.ID, ev.Value.Key, ev.Value.Seq)
		})
	} else {
		table, cols := pgx.Identifier{s.Schema, "consume_effects"}, []string{"event_id", "k", "seq"}
		rbc.Handle(c, "BenchEvent", func(ctx context.Context, tx pgx.Tx, ev rbc.Event[BenchEvent]) error {
			return rbc.InsertDeferred(ctx, tx, table, cols, ev.ID, ev.Value.Key, ev.Value.Seq)
		})
	}
	return c.Run(ctx)
}

// eventID is the relay's event id header of rec ("" if none).
func eventID(rec *kgo.Record) string {
	for _, h := range rec.Headers {
		if h.Key == "relaybox.event_id" {
			return string(h.Value)
		}
	}
	return ""
}

// baselineClient is the franz-go group consumer both baselines use: the relaybox
// consumer's isolation (read_committed) and start (the beginning), offsets
// committed by the code.
func baselineClient(s childSettings, p *progress, extra ...kgo.Opt) (*kgo.Client, error) {
	return kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(s.Brokers...), kgo.ConsumerGroup(s.Group), kgo.ConsumeTopics(s.Topic),
		kgo.DisableAutoCommit(), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.WithHooks(p),
	}, extra...)...)
}

// runHandwritten is the consumer a team writes without relaybox, following
// franz-go's examples: poll; each partition's records in a goroutine of their own,
// one transaction per record (the event id into a dedup table with ON CONFLICT DO
// NOTHING, then the effect, then commit); then commit the polled offsets. Rebalances
// wait for the poll's records to be done (BlockRebalanceOnPoll).
func runHandwritten(ctx context.Context, s childSettings, pool *pgxpool.Pool, p *progress) error {
	cl, err := baselineClient(s, p, kgo.BlockRebalanceOnPoll())
	if err != nil {
		return err
	}
	defer cl.Close()
	dedup := `INSERT INTO ` + hwTable(s.Schema) + ` (consumer_group, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`
	ins := effectSQL(s.Schema)
	apply := func(rec *kgo.Record) error {
		var ev BenchEvent
		if err := decodeValue(rec.Value, &ev); err != nil {
			return fmt.Errorf("decoding %s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
		}
		id := eventID(rec)
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		tag, err := tx.Exec(ctx, dedup, s.Group, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			p.add(0, 1)
			return nil
		}
		if _, err := tx.Exec(ctx, ins, id, ev.Key, ev.Seq); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		p.add(1, 0)
		return nil
	}
	for ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		if err := fetchErr(fs); err != nil {
			return err
		}
		var wg sync.WaitGroup
		errs := make(chan error, s.Conns+64)
		fs.EachPartition(func(tp kgo.FetchTopicPartition) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, rec := range tp.Records {
					if err := apply(rec); err != nil {
						errs <- err
						return
					}
				}
			}()
		})
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return err
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("committing offsets: %w", err)
		}
		cl.AllowRebalance()
	}
	return ctx.Err()
}

// fetchErr is the first error of a poll that is not the end of the poll's context.
func fetchErr(fs kgo.Fetches) error {
	for _, e := range fs.Errors() {
		if !errors.Is(e.Err, context.Canceled) && !errors.Is(e.Err, kgo.ErrClientClosed) {
			return fmt.Errorf("fetch %s/%d: %w", e.Topic, e.Partition, e.Err)
		}
	}
	return nil
}

// limitBatch is the rows of one COPY of the limit.
const limitBatch = 10000

// runLimit is the consume limit: franz-go polls and decodes, and the same effect
// rows go to Postgres in COPYs of limitBatch rows over the pool's connections, with
// no dedup and no transaction of ours; offsets are committed at the end.
func runLimit(ctx context.Context, s childSettings, pool *pgxpool.Pool, p *progress) error {
	cl, err := baselineClient(s, p, kgo.FetchMaxBytes(64<<20))
	if err != nil {
		return err
	}
	defer cl.Close()
	batches := make(chan [][]any, s.Conns)
	errc := make(chan error, s.Conns)
	var wg sync.WaitGroup
	for range s.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rows := range batches {
				_, err := pool.CopyFrom(ctx, pgx.Identifier{s.Schema, "consume_effects"}, []string{"event_id", "k", "seq"}, pgx.CopyFromRows(rows))
				if err != nil {
					errc <- err
					for range batches {
					}
					return
				}
				p.add(int64(len(rows)), 0)
			}
		}()
	}
	var polled int64
	var perr error
	rows := make([][]any, 0, limitBatch)
	for polled < s.N && ctx.Err() == nil && perr == nil {
		fs := cl.PollFetches(ctx)
		if perr = fetchErr(fs); perr != nil {
			break
		}
		fs.EachRecord(func(rec *kgo.Record) {
			var ev BenchEvent
			if err := decodeValue(rec.Value, &ev); err != nil {
				perr = fmt.Errorf("decoding %s/%d@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
				return
			}
			rows = append(rows, []any{eventID(rec), ev.Key, ev.Seq})
			polled++
			if len(rows) == limitBatch || polled == s.N {
				batches <- rows
				rows = make([][]any, 0, limitBatch)
			}
		})
	}
	close(batches)
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	if err := cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("committing offsets: %w", err)
	}
	<-ctx.Done() // all rows are in: the harness has its DONE
	return ctx.Err()
}

// parseChildLine reads one of a child's stdout lines (see consumeChildArg) into ev.
// ok is false for a line that is none of them.
func parseChildLine(line string) (ev childLine, ok bool) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return ev, false
	}
	nums := make([]int64, len(f)-1)
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return ev, false
		}
		nums[i] = v
	}
	ev.kind = f[0]
	switch {
	case f[0] == "FIRST" && len(nums) == 1:
		ev.first = nums[0]
	case f[0] == "PROGRESS" && len(nums) == 2:
		ev.applied, ev.duplicates = nums[0], nums[1]
	case f[0] == "DONE" && len(nums) == 4:
		ev.applied, ev.duplicates, ev.first, ev.last = nums[0], nums[1], nums[2], nums[3]
	default:
		return childLine{}, false
	}
	return ev, true
}

// childLine is one report of a child.
type childLine struct {
	kind                string // FIRST, PROGRESS or DONE
	applied, duplicates int64
	first, last         int64 // unix ns
}
