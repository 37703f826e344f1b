package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
)

const topic = "chaos"

// The publication modes (CHAOS_MODE).
const (
	atLeastOnce = "at-least-once"
	exactlyOnce = "exactly-once"
)

// Tick is the chaos event: key and its per-key sequence.
type Tick struct {
	Key string `avro:"key"`
	Seq int64  `avro:"seq"`
}

// TestMain doubles as the consumer process: the test re-executes its own binary with
// CHAOS_CHILD=consumer.
func TestMain(m *testing.M) {
	if os.Getenv("CHAOS_CHILD") == "consumer" {
		os.Exit(consumerChild())
	}
	os.Exit(m.Run())
}

func consumerChild() int {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("CHAOS_DB"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// A killed consumer stays a member of the group until its session times out, and
	// every rebalance waits for it: with Kafka's 45 s default, kills a few seconds
	// apart kept the group rebalancing, no consumer applied anything, and the next
	// kill harmed nothing (exactly-once runs: consumer_kill 0 of 9 effective). 6 s
	// lets the survivors and the restarted consumer work between kills.
	kopts := []kgo.Opt{kgo.SessionTimeout(6 * time.Second), kgo.RebalanceTimeout(10 * time.Second), kgo.HeartbeatInterval(time.Second)}
	if os.Getenv("CHAOS_MODE") == exactlyOnce {
		kopts = append(kopts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	// A registry timeout shorter than the pauses: a cold cache during a pause fails.
	c, err := consumer.New(pool, &consumer.Config{Group: "chaos", Topics: []string{topic}, Brokers: []string{os.Getenv("CHAOS_BROKERS")},
		KafkaOpts: kopts, RegistryURL: os.Getenv("CHAOS_REGISTRY"), RegistryTimeout: 2 * time.Second, BatchMode: true, MaxRetryBackoff: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	name := os.Getenv("CHAOS_NAME")
	// consumer-0 applies its effect with a statement of its own, consumer-1 with
	// InsertDeferred (one COPY a batch): both paths under the same faults.
	table, cols := pgx.Identifier{"effects"}, []string{"event_id", "key", "seq", "consumer"}
	consumer.Handle(c, "Tick", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[Tick]) error {
		if name == "consumer-1" {
			return consumer.InsertDeferred(ctx, tx, table, cols, ev.ID, ev.Value.Key, ev.Value.Seq, name)
		}
		_, err := tx.Exec(ctx, `INSERT INTO effects (event_id, key, seq, consumer) VALUES ($1, $2, $3, $4)`, ev.ID, ev.Value.Key, ev.Value.Seq, name)
		return err
	})
	sctx, stop := signalContext()
	defer stop()
	if err := c.Run(sctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 1)
	signalNotify(ch)
	go func() { <-ch; cancel() }()
	return ctx, cancel
}

// Report is the JSON written to CHAOS_OUT.
type Report struct {
	Mode   string `json:"mode"`
	Seed   uint64 `json:"seed"`
	Events int64  `json:"events"`
	Keys   int    `json:"keys"`
	// Faults counts the faults injected by kind; FaultsEffective those of them that
	// did observed harm (FaultLog says what was observed for each).
	Faults          map[string]int `json:"faults"`
	FaultsEffective map[string]int `json:"faults_effective"`
	// FaultsSkipped counts, by kind, the faults not injected because their target
	// stayed busy with earlier faults for maxQueued.
	FaultsSkipped   map[string]int `json:"faults_skipped,omitempty"`
	FaultsTotal     int            `json:"faults_total"`
	Lost            int64          `json:"lost"`
	OrderViolations int64          `json:"order_violations"`
	// StaleAfterNewer counts records on the topic landing after a newer record of
	// their key (any occurrence, not only the first).
	StaleAfterNewer   int64 `json:"stale_after_newer"`
	DuplicateEffects  int64 `json:"duplicate_effects"`
	MissingEffects    int64 `json:"missing_effects"`
	EffectOrderErrors int64 `json:"effect_order_violations"`
	DuplicatesOnTopic int64 `json:"duplicates_on_topic"`
	// Undecodable counts records on the topic that do not decode independently
	// (Confluent framing, the registry's schema text, hamba/avro).
	Undecodable  int64 `json:"undecodable"`
	Parked       int64 `json:"parked"`
	DeadLettered int64 `json:"dead_lettered"`
	// SchemaVersions is the number of Tick schema versions the writers used.
	SchemaVersions int64 `json:"schema_versions"`
	// SelfExits counts processes that exited by themselves and were restarted.
	SelfExits map[string]int64 `json:"self_exits"`
	FaultLog  []FaultRecord    `json:"fault_log"`
	NotDone   []string         `json:"notes,omitempty"`
	Seconds   float64          `json:"seconds"`
}

type plan struct {
	mode                 string
	events, keys, faults int
	rate                 int // events per second, all writers
	seed                 uint64
	// requireEveryKind: every kind injected and at least one of each effective.
	requireEveryKind bool
}

func TestChaos_Short(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	runChaos(t, plan{mode: modeFromEnv(t), events: 30000, keys: 1000, faults: 8, rate: 1000, seed: seedFromEnv()})
}

func TestChaos(t *testing.T) {
	if os.Getenv("CHAOS") != "1" {
		t.Skip("the long fault run: `make chaos` (CHAOS=1)")
	}
	runChaos(t, plan{mode: modeFromEnv(t), events: envInt("CHAOS_EVENTS", 200000), keys: 1000, faults: envInt("CHAOS_FAULTS", 60),
		rate: envInt("CHAOS_RATE", 1500), seed: seedFromEnv(), requireEveryKind: true})
}

func modeFromEnv(t *testing.T) string {
	switch m := os.Getenv("CHAOS_MODE"); m {
	case "", atLeastOnce:
		return atLeastOnce
	case exactlyOnce:
		return exactlyOnce
	default:
		t.Fatalf("CHAOS_MODE=%q: want %s (the default) or %s", m, atLeastOnce, exactlyOnce)
		return ""
	}
}

func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil && n > 0 {
		return n
	}
	return def
}

func seedFromEnv() uint64 {
	if s, err := strconv.ParseUint(os.Getenv("CHAOS_SEED"), 10, 64); err == nil {
		return s
	}
	return uint64(time.Now().UnixNano())
}

// schedule draws the faults: every kind once first (when there are enough faults), at
// a uniform random moment within the first third of writeFor, the rest of random
// kinds at uniform random moments within 90 % of it. The early ones keep every kind
// inside the writing window: faults on one target wait for each other, and a
// slow_network drawn late once queued behind 11 broker kills until the writers were
// done, with nothing left to slow (seed 1796093819088240627).
func schedule(rng *rand.Rand, n int, writeFor time.Duration) []fault {
	faults := make([]fault, n)
	order := rng.Perm(len(kinds))
	for i := range faults {
		kind := kinds[rng.IntN(len(kinds))]
		within := writeFor * 9 / 10
		if i < len(order) {
			kind, within = kinds[order[i]], writeFor/3
		}
		faults[i] = fault{at: time.Duration(rng.Int64N(int64(within))), kind: kind,
			target: rng.IntN(3), pause: time.Duration(500+rng.IntN(4500)) * time.Millisecond, hard: rng.IntN(2) == 0}
	}
	slices.SortFunc(faults, func(a, b fault) int { return int(a.at - b.at) })
	return faults
}

func runChaos(t *testing.T, pl plan) {
	start := time.Now()
	rng := rand.New(rand.NewPCG(pl.seed, pl.seed^0x9e3779b97f4a7c15))
	t.Logf("chaos seed %d (CHAOS_SEED=%d reproduces the fault schedule), %s: %d events on %d keys at %d/s, %d faults", pl.seed, pl.seed, pl.mode, pl.events, pl.keys, pl.rate, pl.faults)
	dir := t.TempDir()
	if keep := os.Getenv("CHAOS_LOGS"); keep != "" { // the processes' logs, kept after the run
		if err := os.MkdirAll(keep, 0o755); err != nil {
			t.Fatal(err)
		}
		dir = keep
	}
	pg, dbURL := testenv.OwnPostgres(t)
	kafka, brokers, proxy := testenv.OwnKafkaBehindProxy(t)
	_, regURL := testenv.OwnRegistry(t)
	regProxy := newRegistryProxy(t, regURL)
	ctx := context.Background()
	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := migrations.Migrate(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE business (key text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (key, seq));
		CREATE TABLE effects (applied bigint GENERATED ALWAYS AS IDENTITY, event_id text NOT NULL, key text NOT NULL, seq bigint NOT NULL,
			consumer text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	created, err := kadm.NewClient(cl).CreateTopics(ctx, 6, 1, nil, topic, topic+".dlq")
	cl.Close()
	if err == nil {
		err = created.Error()
	}
	if err != nil {
		t.Fatal(err)
	}

	// Processes: 3 relays (the relaybox binary), 2 consumers (this test binary), all
	// reaching the registry through regProxy.
	bin := filepath.Join(dir, "relaybox")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/relaybox").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v %s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, pool: pool, pg: pg, kafka: kafka, proxy: proxy, regProxy: regProxy, locks: map[string]*sync.Mutex{}}
	h.version.Store(1)
	if h.probe, err = kgo.NewClient(kgo.SeedBrokers(brokers)); err != nil {
		t.Fatal(err)
	}
	defer h.probe.Close()
	// Versions: the first, 9 periodic switches and one per fault at most.
	h.maxVersion.Store(int64(10 + pl.faults))
	registerVersions(t, regURL, topic+"-value", int(h.maxVersion.Load()))
	for i := range 3 {
		name := fmt.Sprintf("relay-%d", i)
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		args := []string{bin, "relay", "--database-url", dbURL, "--brokers", brokers, "--registry-url", regProxy.url, "--replica-id", name,
			"--lease-ttl", "4s", "--heartbeat-interval", "500ms", "--poll-interval", "200ms", "--metrics-addr", addr, "--pool-size", "6",
			"--unready-after", "5s", "--registry-timeout", "3s", "--auto-register=false"}
		if pl.mode == exactlyOnce {
			args = append(args, "--exactly-once")
		}
		h.relays = append(h.relays, &process{name: name, log: filepath.Join(dir, name+".log"), args: args})
		h.metrics = append(h.metrics, addr)
	}
	for i := range 2 {
		name := fmt.Sprintf("consumer-%d", i)
		h.consumers = append(h.consumers, &process{name: name, log: filepath.Join(dir, name+".log"),
			args: []string{self, "-test.run", "^$"},
			env: []string{"CHAOS_CHILD=consumer", "CHAOS_NAME=" + name, "CHAOS_MODE=" + pl.mode, "CHAOS_DB=" + dbURL, "CHAOS_BROKERS=" + brokers,
				"CHAOS_REGISTRY=" + regProxy.url}})
	}
	all := append(append([]*process{}, h.relays...), h.consumers...)
	for _, p := range all {
		h.locks[p.name] = &sync.Mutex{}
		p.start(t)
		defer p.stop()
	}
	for _, k := range []string{"kafka", "postgres", "registry"} {
		h.locks[k] = &sync.Mutex{}
	}
	supervising := make(chan struct{})
	defer close(supervising)
	go func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-supervising:
				return
			case <-tick.C:
				for _, p := range all {
					p.supervise(t)
				}
			}
		}
	}()
	defer func() {
		if t.Failed() {
			for _, p := range all {
				b, _ := os.ReadFile(p.log)
				lines := strings.Split(string(b), "\n")
				t.Logf("tail of %s:\n%s", p.name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
	}()

	// Writers: each key is owned by one writer goroutine, so per-key commit order is
	// the seq order. A failed transaction (Postgres restarting) is retried with the same
	// seq. The business row and the event commit together. Each transaction's events
	// use the schema version current when it starts.
	w, err := outbox.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	var written atomic.Int64
	writers := 8
	perWriter := pl.events / writers
	interval := time.Duration(float64(time.Second) * float64(writers) * 20 / float64(pl.rate)) // 20 events per tx
	var wg sync.WaitGroup
	for wi := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys := []string{}
			for k := wi; k < pl.keys; k += writers {
				keys = append(keys, "key-"+strconv.Itoa(k))
			}
			seqs := map[string]int64{}
			tick := time.NewTicker(interval)
			defer tick.Stop()
			n, ki := 0, 0
			for n < perWriter {
				<-tick.C
				batch := min(20, perWriter-n)
				schema := schemaText(int(h.version.Load()))
				evs := make([]outbox.Event, 0, batch)
				keysIn, seqIn := []string{}, []int64{}
				for range batch {
					k := keys[ki%len(keys)]
					ki++
					seqs[k]++
					evs = append(evs, outbox.Event{Topic: topic, Key: k, Type: "Tick", Value: Tick{Key: k, Seq: seqs[k]}, Schema: schema})
					keysIn, seqIn = append(keysIn, k), append(seqIn, seqs[k])
				}
				for {
					err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
						if _, err := tx.Exec(ctx, `INSERT INTO business SELECT * FROM unnest($1::text[], $2::bigint[])`, keysIn, seqIn); err != nil {
							return err
						}
						return w.Write(ctx, tx, evs...)
					})
					if err == nil {
						break
					}
					h.writeFailures.Add(1)
					time.Sleep(200 * time.Millisecond)
					// A COMMIT cut by a restart may have committed: its business rows
					// say so (they commit with the events). Writing it again would fail
					// on the business key for ever.
					if committed(ctx, pool, keysIn[0], seqIn[0]) {
						break
					}
				}
				n += batch
				written.Add(int64(batch))
			}
		}()
	}

	// Faults, at uniform random moments over the writing period, each in its own
	// goroutine: faults on different targets overlap (Kafka down while a relay is a
	// zombie...); faults on one target wait for each other, at most maxQueued (then
	// the later one is skipped and reported). Besides the registry
	// pauses (which switch schema version themselves), writers switch to a new schema
	// version at 8 moments of the writing period.
	rep := &Report{Mode: pl.mode, Seed: pl.seed, Keys: pl.keys, Faults: map[string]int{}, FaultsEffective: map[string]int{}, FaultsSkipped: map[string]int{},
		NotDone: []string{"slow_network uses a user-space delay proxy in front of the broker: this kernel has no netem qdisc"}}
	writeFor := time.Duration(float64(pl.events) / float64(pl.rate) * float64(time.Second))
	writersDone := make(chan struct{})
	h.writersDone = writersDone
	go func() { wg.Wait(); close(writersDone) }()
	go func() {
		tick := time.NewTicker(writeFor / 9)
		defer tick.Stop()
		for {
			select {
			case <-writersDone:
				return
			case <-tick.C:
				h.nextVersion()
			}
		}
	}()
	faults := schedule(rng, pl.faults, writeFor)
	var repMu sync.Mutex
	var fwg sync.WaitGroup
	begin := time.Now()
	for i, f := range faults {
		time.Sleep(time.Until(begin.Add(f.at)))
		target := h.target(f)
		m := h.locks[h.lockName(f)]
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			waited, ok := acquire(m)
			at := time.Since(begin)
			if !ok {
				t.Logf("fault %d/%d %s %s: skipped: its target was busy for %v", i+1, pl.faults, f.kind, target, waited.Round(time.Second))
				repMu.Lock()
				defer repMu.Unlock()
				rep.FaultsSkipped[f.kind]++
				rep.FaultLog = append(rep.FaultLog, FaultRecord{At: at.Round(time.Millisecond).Seconds(), Kind: f.kind, Target: target, Skipped: true,
					Evidence: fmt.Sprintf("not injected: its target was busy with earlier faults for %v", waited.Round(time.Second))})
				return
			}
			defer m.Unlock()
			effective, evidence := h.inject(f)
			if waited > time.Second {
				evidence = fmt.Sprintf("queued %v behind earlier faults on its target; %s", waited.Round(time.Second), evidence)
			}
			t.Logf("fault %d/%d %s %s: effective %v: %s", i+1, pl.faults, f.kind, target, effective, evidence)
			repMu.Lock()
			defer repMu.Unlock()
			rep.Faults[f.kind]++
			rep.FaultsTotal++
			if effective {
				rep.FaultsEffective[f.kind]++
			}
			rep.FaultLog = append(rep.FaultLog, FaultRecord{At: at.Round(time.Millisecond).Seconds(), Kind: f.kind, Target: target, Effective: effective, Evidence: evidence})
		}()
		t.Logf("fault %d/%d at %s: %s %s (written %d)", i+1, pl.faults, f.at.Round(time.Millisecond), f.kind, target, written.Load())
	}
	fwg.Wait()
	<-writersDone
	rep.Events = written.Load()
	rep.SchemaVersions = h.version.Load()
	slices.SortFunc(rep.FaultLog, func(a, b FaultRecord) int { return int((a.At - b.At) * 1000) })
	t.Logf("writers done: %d events, %d schema versions; draining", rep.Events, rep.SchemaVersions)

	// Drain: every event applied (distinct key/seq in effects == events) and the outbox
	// empty, or time out.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		var distinct, pending int64
		err := pool.QueryRow(ctx, `SELECT (SELECT count(DISTINCT (key, seq)) FROM effects), (SELECT count(*) FROM relaybox.outbox WHERE published_at IS NULL)`).Scan(&distinct, &pending)
		if err == nil && distinct >= rep.Events && pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Logf("drain timed out: %d of %d events applied, %d unpublished (%v)", distinct, rep.Events, pending, err)
			break
		}
		time.Sleep(time.Second)
	}
	time.Sleep(2 * time.Second) // late redeliveries, if any, to count them

	// Verify from the business table, the effects table and Kafka read back.
	q := func(sql string) int64 {
		var n int64
		if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}
	rep.MissingEffects = q(`SELECT count(*) FROM business b WHERE NOT EXISTS (SELECT 1 FROM effects e WHERE e.key = b.key AND e.seq = b.seq)`)
	rep.DuplicateEffects = q(`SELECT count(*) - count(DISTINCT (key, seq)) FROM effects`)
	rep.EffectOrderErrors = q(`SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY applied) prev FROM effects) x WHERE prev IS NOT NULL AND seq <= prev`)
	rep.Parked = q(`SELECT count(*) FROM relaybox.outbox WHERE parked_at IS NOT NULL`)
	// The topic is read read_committed in exactly-once mode (aborted records are not
	// part of it), as written otherwise.
	tr, err := readTopic(ctx, brokers, regURL, topic, pl.mode == exactlyOnce)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.examples) > 0 {
		t.Logf("topic records to look at: %s", strings.Join(tr.examples, "; "))
	}
	rep.DuplicatesOnTopic, rep.OrderViolations, rep.StaleAfterNewer, rep.Undecodable = tr.dups, tr.violations, tr.stale, tr.undecodable
	lost, businessRows, err := lostEvents(ctx, pool, tr.seen)
	if err != nil {
		t.Fatal(err)
	}
	if businessRows != rep.Events {
		t.Errorf("business rows %d, events written %d", businessRows, rep.Events)
	}
	rep.Lost = lost
	dlq, err := readTopic(ctx, brokers, regURL, topic+".dlq", false)
	if err != nil {
		t.Fatal(err)
	}
	rep.DeadLettered = dlq.records
	rep.Seconds = time.Since(start).Round(time.Second).Seconds()
	rep.SelfExits = map[string]int64{}
	for _, p := range all {
		if n := p.exits.Load(); n > 0 {
			rep.SelfExits[p.name] = n
		}
	}

	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chaos report:\n%s", b)
	if out := os.Getenv("CHAOS_OUT"); out != "" {
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Error(err)
		}
	}
	for _, problem := range verdict(rep, pl) {
		t.Errorf("seed %d: %s", pl.seed, problem)
	}
}

// verdict lists what the report breaks: the guarantees of the mode, and in a full
// run, a fault kind never injected or never effective.
func verdict(rep *Report, pl plan) []string {
	var out []string
	must0 := func(name string, n int64) {
		if n != 0 {
			out = append(out, fmt.Sprintf("%s %d, want 0", name, n))
		}
	}
	must0("lost", rep.Lost)
	must0("order_violations", rep.OrderViolations)
	must0("duplicate_effects", rep.DuplicateEffects)
	must0("missing_effects", rep.MissingEffects)
	must0("effect_order_violations", rep.EffectOrderErrors)
	must0("undecodable", rep.Undecodable)
	if pl.mode == exactlyOnce {
		must0("duplicates_on_topic (read_committed)", rep.DuplicatesOnTopic)
		must0("stale_after_newer (read_committed)", rep.StaleAfterNewer)
	}
	if pl.requireEveryKind {
		for _, k := range kinds {
			if rep.Faults[k] == 0 {
				out = append(out, fmt.Sprintf("fault kind %s never injected (%d skipped: target busy)", k, rep.FaultsSkipped[k]))
			} else if rep.FaultsEffective[k] == 0 {
				out = append(out, fmt.Sprintf("fault kind %s injected %d times, never effective", k, rep.Faults[k]))
			}
		}
	}
	return out
}

// committed reports whether the business row key/seq is in the table: whether the
// writer transaction that wrote it committed, though its COMMIT returned an error
// (the connection cut by a Postgres restart). It asks until Postgres answers.
func committed(ctx context.Context, pool *pgxpool.Pool, key string, seq int64) bool {
	for {
		var ok bool
		err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM business WHERE key = $1 AND seq = $2)`, key, seq).Scan(&ok)
		if err == nil || ctx.Err() != nil {
			return ok
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// lostEvents counts the business rows (each an event committed with its business
// transaction) whose key/seq is not on the topic, and the business rows.
func lostEvents(ctx context.Context, pool *pgxpool.Pool, onTopic map[string]bool) (lost, rows int64, err error) {
	r, err := pool.Query(ctx, `SELECT key, seq FROM business`)
	if err != nil {
		return 0, 0, fmt.Errorf("reading business rows: %w", err)
	}
	defer r.Close()
	for r.Next() {
		var key string
		var seq int64
		if err := r.Scan(&key, &seq); err != nil {
			return 0, 0, fmt.Errorf("reading business rows: %w", err)
		}
		rows++
		if !onTopic[fmt.Sprintf("%s/%d", key, seq)] {
			lost++
		}
	}
	if err := r.Err(); err != nil {
		return 0, 0, fmt.Errorf("reading business rows: %w", err)
	}
	return lost, rows, nil
}
