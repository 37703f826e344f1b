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
	"syscall"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
	"github.com/relaybox/relaybox/migrations"
	"github.com/relaybox/relaybox/outbox"
)

const topic = "chaos"

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
	c, err := consumer.New(pool, &consumer.Config{Group: "chaos", Topics: []string{topic}, Brokers: []string{os.Getenv("CHAOS_BROKERS")},
		RegistryURL: os.Getenv("CHAOS_REGISTRY"), BatchMode: true, MaxRetryBackoff: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	consumer.Handle(c, "Tick", func(ctx context.Context, tx pgx.Tx, ev consumer.Event[Tick]) error {
		_, err := tx.Exec(ctx, `INSERT INTO effects (event_id, key, seq) VALUES ($1, $2, $3)`, ev.ID, ev.Value.Key, ev.Value.Seq)
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
	Seed              uint64         `json:"seed"`
	Events            int64          `json:"events"`
	Keys              int            `json:"keys"`
	Faults            map[string]int `json:"faults"`
	FaultsTotal       int            `json:"faults_total"`
	Lost              int64          `json:"lost"`
	OrderViolations   int64          `json:"order_violations"`
	DuplicateEffects  int64          `json:"duplicate_effects"`
	MissingEffects    int64          `json:"missing_effects"`
	EffectOrderErrors int64          `json:"effect_order_violations"`
	DuplicatesOnTopic int64          `json:"duplicates_on_topic"`
	Parked            int64          `json:"parked"`
	DeadLettered      int64          `json:"dead_lettered"`
	// SelfExits counts processes that exited by themselves and were restarted.
	SelfExits map[string]int64 `json:"self_exits"`
	NotDone   []string         `json:"notes,omitempty"`
	Seconds   float64          `json:"seconds"`
}

type plan struct {
	events, keys, faults int
	rate                 int // events per second, all writers
	seed                 uint64
}

func TestChaos_Short(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	runChaos(t, plan{events: 30000, keys: 1000, faults: 8, rate: 1000, seed: seedFromEnv()})
}

func TestChaos(t *testing.T) {
	if os.Getenv("CHAOS") != "1" {
		t.Skip("the long fault run: `make chaos` (CHAOS=1)")
	}
	runChaos(t, plan{events: envInt("CHAOS_EVENTS", 200000), keys: 1000, faults: envInt("CHAOS_FAULTS", 60),
		rate: envInt("CHAOS_RATE", 1500), seed: seedFromEnv()})
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

type process struct {
	name string
	args []string
	env  []string
	log  string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	hold bool // a fault or the end of the run owns it: the supervisor keeps off
	// exits counts the times it exited by itself and was restarted by the supervisor.
	exits atomic.Int64
}

func (p *process) start(t *testing.T) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.startLocked(t)
	p.hold = false
}

func (p *process) startLocked(t *testing.T) {
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Error(err)
		return
	}
	p.cmd = exec.Command(p.args[0], p.args[1:]...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Errorf("starting %s: %v", p.name, err)
		return
	}
	done := make(chan struct{})
	p.done = done
	cmd := p.cmd
	go func() { cmd.Wait(); f.Close(); close(done) }()
}

// supervise restarts the process when it exits by itself (as a service manager would).
func (p *process) supervise(t *testing.T) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold || p.done == nil {
		return
	}
	select {
	case <-p.done:
		p.exits.Add(1)
		p.startLocked(t)
	default:
	}
}

func (p *process) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

func (p *process) kill() {
	p.mu.Lock()
	p.hold = true
	d := p.done
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	p.mu.Unlock()
	if d != nil {
		<-d
	}
}

func (p *process) stop() {
	p.mu.Lock()
	p.hold = true
	d := p.done
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	p.mu.Unlock()
	if d == nil {
		return
	}
	select {
	case <-d:
	case <-time.After(20 * time.Second):
		p.kill()
	}
}

func runChaos(t *testing.T, pl plan) {
	start := time.Now()
	rng := rand.New(rand.NewPCG(pl.seed, pl.seed^0x9e3779b97f4a7c15))
	t.Logf("chaos seed %d (CHAOS_SEED=%d reproduces the fault schedule): %d events on %d keys at %d/s, %d faults", pl.seed, pl.seed, pl.events, pl.keys, pl.rate, pl.faults)
	dir := t.TempDir()
	pg, dbURL := testenv.OwnPostgres(t)
	kafka, brokers, proxy := testenv.OwnKafkaBehindProxy(t)
	reg, regURL := testenv.OwnRegistry(t)
	ctx := context.Background()
	pcfg, _ := pgxpool.ParseConfig(dbURL)
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
		CREATE TABLE effects (applied bigint GENERATED ALWAYS AS IDENTITY, event_id text NOT NULL, key text NOT NULL, seq bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 6, 1, nil, topic, topic+".dlq"); err != nil {
		t.Fatal(err)
	}
	cl.Close()

	// Processes: 3 relays (the relaybox binary), 2 consumers (this test binary).
	bin := filepath.Join(dir, "relaybox")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/relaybox").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v %s", err, out)
	}
	self, _ := os.Executable()
	var relays, consumers []*process
	for i := range 3 {
		relays = append(relays, &process{name: fmt.Sprintf("relay-%d", i), log: filepath.Join(dir, fmt.Sprintf("relay-%d.log", i)),
			args: []string{bin, "relay", "--database-url", dbURL, "--brokers", brokers, "--registry-url", regURL, "--replica-id", fmt.Sprintf("relay-%d", i),
				"--lease-ttl", "4s", "--heartbeat-interval", "500ms", "--poll-interval", "200ms", "--metrics-addr", "", "--pool-size", "6",
				"--unready-after", "5s", "--registry-timeout", "3s"}})
	}
	for i := range 2 {
		consumers = append(consumers, &process{name: fmt.Sprintf("consumer-%d", i), log: filepath.Join(dir, fmt.Sprintf("consumer-%d.log", i)),
			args: []string{self, "-test.run", "^$"},
			env:  []string{"CHAOS_CHILD=consumer", "CHAOS_DB=" + dbURL, "CHAOS_BROKERS=" + brokers, "CHAOS_REGISTRY=" + regURL}})
	}
	all := append(append([]*process{}, relays...), consumers...)
	for _, p := range all {
		p.start(t)
		defer p.stop()
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
			for _, p := range append(append([]*process{}, relays...), consumers...) {
				b, _ := os.ReadFile(p.log)
				lines := strings.Split(string(b), "\n")
				t.Logf("tail of %s:\n%s", p.name, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
	}()

	// Writers: each key is owned by one writer goroutine, so per-key commit order is
	// the seq order. A failed transaction (Postgres restarting) is retried with the same
	// seq. The business row and the event commit together.
	w, _ := outbox.New(pool, nil)
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
				evs := make([]outbox.Event, 0, batch)
				keysIn, seqIn := []string{}, []int64{}
				for range batch {
					k := keys[ki%len(keys)]
					ki++
					seqs[k]++
					evs = append(evs, outbox.Event{Topic: topic, Key: k, Type: "Tick", Value: Tick{Key: k, Seq: seqs[k]}})
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
					time.Sleep(200 * time.Millisecond)
				}
				n += batch
				written.Add(int64(batch))
			}
		}()
	}

	// Faults, at uniform random moments over the writing period, each in its own
	// goroutine: faults on different targets overlap (Kafka down while a relay is a
	// zombie...); faults on one target wait for each other.
	rep := &Report{Seed: pl.seed, Keys: pl.keys, Faults: map[string]int{}, NotDone: []string{"slow_network uses a user-space delay proxy in front of the broker: this kernel has no netem qdisc"}}
	kinds := []string{"relay_kill", "relay_zombie", "consumer_kill", "kafka_kill", "postgres_restart", "registry_pause", "slow_network"}
	writeFor := time.Duration(float64(pl.events) / float64(pl.rate) * float64(time.Second))
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()
	type fault struct {
		at     time.Duration
		kind   string
		target int
		pause  time.Duration
		hard   bool
	}
	faults := make([]fault, pl.faults)
	for i := range faults {
		faults[i] = fault{at: time.Duration(rng.Int64N(int64(writeFor * 9 / 10))), kind: kinds[rng.IntN(len(kinds))],
			target: rng.IntN(3), pause: time.Duration(500+rng.IntN(4500)) * time.Millisecond, hard: rng.IntN(2) == 0}
	}
	slices.SortFunc(faults, func(a, b fault) int { return int(a.at - b.at) })
	locks := map[string]*sync.Mutex{}
	lock := func(name string) *sync.Mutex {
		if locks[name] == nil {
			locks[name] = &sync.Mutex{}
		}
		return locks[name]
	}
	var repMu sync.Mutex
	var fwg sync.WaitGroup
	begin := time.Now()
	for i, f := range faults {
		time.Sleep(time.Until(begin.Add(f.at)))
		target := f.kind
		switch f.kind {
		case "relay_kill", "relay_zombie":
			target = fmt.Sprintf("relay-%d", f.target%len(relays))
		case "consumer_kill":
			target = fmt.Sprintf("consumer-%d", f.target%len(consumers))
		}
		m := lock(target)
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			m.Lock()
			defer m.Unlock()
			switch f.kind {
			case "relay_kill":
				p := relays[f.target%len(relays)]
				p.kill()
				time.Sleep(f.pause / 2)
				p.start(t)
			case "relay_zombie":
				p := relays[f.target%len(relays)]
				p.signal(syscall.SIGSTOP)
				time.Sleep(5*time.Second + f.pause/2) // past the 4s lease
				p.signal(syscall.SIGCONT)
			case "consumer_kill":
				p := consumers[f.target%len(consumers)]
				p.kill()
				time.Sleep(f.pause / 2)
				p.start(t)
			case "kafka_kill":
				kafka.Stop(true)
				time.Sleep(f.pause)
				kafka.Start()
			case "postgres_restart":
				pg.Stop(f.hard)
				time.Sleep(f.pause / 2)
				pg.Start()
			case "registry_pause":
				reg.Pause(f.pause + 2*time.Second)
			case "slow_network":
				proxy.SetDelay(time.Duration(20+f.target*90) * time.Millisecond) // 20, 110 or 200 ms per chunk
				time.Sleep(f.pause + 3*time.Second)
				proxy.SetDelay(0)
			}
			repMu.Lock()
			rep.Faults[f.kind]++
			rep.FaultsTotal++
			repMu.Unlock()
		}()
		t.Logf("fault %d/%d at %s: %s %s (written %d)", i+1, pl.faults, f.at.Round(time.Millisecond), f.kind, target, written.Load())
	}
	fwg.Wait()
	<-writersDone
	rep.Events = written.Load()
	t.Logf("writers done: %d events; draining", rep.Events)

	// Drain: every event applied (distinct event ids in effects == events), or time out.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		var distinct int64
		if err := pool.QueryRow(ctx, `SELECT count(DISTINCT (key, seq)) FROM effects`).Scan(&distinct); err == nil && distinct >= rep.Events {
			break
		}
		if time.Now().After(deadline) {
			t.Logf("drain timed out")
			break
		}
		time.Sleep(time.Second)
	}
	time.Sleep(2 * time.Second)

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
	onTopic, dups, violations := readTopic(t, brokers, regURL, topic)
	rep.DuplicatesOnTopic, rep.OrderViolations = dups, violations
	business := map[string]bool{}
	rows, _ := pool.Query(ctx, `SELECT key || '/' || seq FROM business`)
	for rows.Next() {
		var k string
		rows.Scan(&k)
		business[k] = true
	}
	for k := range business {
		if !onTopic[k] {
			rep.Lost++
		}
	}
	dlq, _, _ := readTopic(t, brokers, regURL, topic+".dlq")
	rep.DeadLettered = int64(len(dlq))
	rep.Seconds = time.Since(start).Round(time.Second).Seconds()
	rep.SelfExits = map[string]int64{}
	for _, p := range all {
		if n := p.exits.Load(); n > 0 {
			rep.SelfExits[p.name] = n
		}
	}

	b, _ := json.MarshalIndent(rep, "", "  ")
	t.Logf("chaos report:\n%s", b)
	if out := os.Getenv("CHAOS_OUT"); out != "" {
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Error(err)
		}
	}
	if rep.Lost != 0 || rep.OrderViolations != 0 || rep.DuplicateEffects != 0 || rep.MissingEffects != 0 || rep.EffectOrderErrors != 0 {
		t.Fatalf("guarantee broken (seed %d): lost %d, order violations %d, duplicate effects %d, missing effects %d, effect order violations %d",
			pl.seed, rep.Lost, rep.OrderViolations, rep.DuplicateEffects, rep.MissingEffects, rep.EffectOrderErrors)
	}
}

// readTopic reads a topic to its end with an independent client: the set of
// "key/seq" seen, duplicates, and per-key order violations of first occurrences.
func readTopic(t *testing.T, brokers, regURL, name string) (map[string]bool, int64, int64) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(name), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	remaining := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			remaining[o.Partition] = o.Offset
		}
	})
	reg := registry.New(regURL, registry.Options{})
	seen := map[string]bool{}
	last := map[string]int64{}
	var dups, violations int64
	for len(remaining) > 0 && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset+1 >= remaining[r.Partition] {
				delete(remaining, r.Partition)
			}
			id, body, err := wire.Parse(r.Value)
			if err != nil {
				seen[fmt.Sprintf("garbage@%d/%d", r.Partition, r.Offset)] = true
				return
			}
			s, err := reg.Schema(ctx, int(id))
			if err != nil {
				t.Errorf("schema %d: %v", id, err)
				return
			}
			var v Tick
			if err := avro.Unmarshal(s, body, &v); err != nil {
				t.Errorf("decode: %v", err)
				return
			}
			k := fmt.Sprintf("%s/%d", v.Key, v.Seq)
			if seen[k] {
				dups++
				return
			}
			seen[k] = true
			if v.Seq <= last[v.Key] {
				violations++
			}
			last[v.Key] = v.Seq
		})
	}
	return seen, dups, violations
}
