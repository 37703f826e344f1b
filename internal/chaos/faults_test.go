package chaos

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/testenv"
)

// kinds are the fault kinds; a run injects each at least once (when it has as many
// faults as kinds).
var kinds = []string{"relay_kill", "relay_zombie", "consumer_kill", "kafka_kill", "postgres_restart", "registry_pause", "slow_network"}

// fault is one scheduled fault.
type fault struct {
	at     time.Duration
	kind   string
	target int
	pause  time.Duration
	hard   bool
}

// FaultRecord is one injected fault in the report, with whether it did harm and what
// was observed.
type FaultRecord struct {
	At        float64 `json:"at_s"`
	Kind      string  `json:"kind"`
	Target    string  `json:"target"`
	Effective bool    `json:"effective"`
	// Skipped: its target stayed busy with earlier faults for maxQueued; not
	// injected (At is then when it gave up).
	Skipped  bool   `json:"skipped,omitempty"`
	Evidence string `json:"evidence"`
}

// maxQueued bounds how long a fault waits for the faults before it on its target.
// Faults queued behind others pile up: a broker kill holds Kafka for its pause plus
// the broker's start (10-15 s on a loaded machine of this kind), and ten of them in a
// 133-s writing window kept Kafka down almost throughout (seed 1796098753026678037):
// the exactly-once relays published 14k of 188k events while the writers wrote, and
// every slow network found no broker behind the proxy. A fault that would wait longer
// is skipped and reported as such, not injected late into a run it no longer fits.
const maxQueued = 10 * time.Second

// harness is what the faults act on and observe.
type harness struct {
	t         *testing.T
	pool      *pgxpool.Pool
	pg        *testenv.PGService
	kafka     *testenv.Service
	proxy     *testenv.DelayProxy
	regProxy  *registryProxy
	relays    []*process
	consumers []*process
	metrics   []string // relays' metrics addresses, by relay index
	probe     *kgo.Client
	// version is the schema version writers use now; bumped during the run, up to
	// maxVersion (all registered before the run).
	version, maxVersion atomic.Int64
	// writersDone is closed when the writers have written every event.
	writersDone chan struct{}
	// writeFailures counts writer transactions that failed (and were retried).
	writeFailures atomic.Int64
	// locks serialise the faults on one target (made before the faults start).
	locks map[string]*sync.Mutex
}

// lockName is the lock a fault takes: its target (a process or a service). A broker
// kill and a slow network share Kafka's: a slow network over a broker that is down
// slows nothing, and its probe has nothing to measure.
func (h *harness) lockName(f fault) string {
	return h.target(f)
}

// acquire takes m for a fault, waiting at most maxQueued; it reports how long it
// waited, and false if it gave up.
func acquire(m *sync.Mutex) (time.Duration, bool) {
	start := time.Now()
	for !m.TryLock() {
		if time.Since(start) > maxQueued {
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start), true
}

// nextVersion switches the writers to the next schema version (the last one
// registered stays when all are used) and returns it.
func (h *harness) nextVersion() int64 {
	for {
		v := h.version.Load()
		if v >= h.maxVersion.Load() || h.version.CompareAndSwap(v, v+1) {
			return h.version.Load()
		}
	}
}

// target names the process or service a fault acts on.
func (h *harness) target(f fault) string {
	switch f.kind {
	case "relay_kill", "relay_zombie":
		return h.relays[f.target%len(h.relays)].name
	case "consumer_kill":
		return h.consumers[f.target%len(h.consumers)].name
	case "kafka_kill", "slow_network":
		return "kafka"
	case "postgres_restart":
		return "postgres"
	}
	return "registry"
}

// inject runs one fault to its end and returns whether it did harm, and what was
// observed. Harm is measured, never assumed: a fault that lands where it can hurt
// nothing (a relay killed while it owns no shard, Kafka killed while Postgres is down
// too) is reported as not effective.
func (h *harness) inject(f fault) (bool, string) {
	ctx := context.Background()
	switch f.kind {
	case "relay_kill":
		// Harm: the relay had work (owned shards with a backlog, or was publishing).
		i := f.target % len(h.relays)
		p := h.relays[i]
		m0, err0 := scrape(h.metrics[i])
		time.Sleep(time.Second)
		m1, err1 := scrape(h.metrics[i])
		var owned, backlog int64
		derr := retry(func() (err error) { owned, backlog, err = h.ownedWork(ctx, p.name); return err })
		p.kill()
		time.Sleep(f.pause / 2)
		p.start(h.t)
		published := -1.0
		if err0 == nil && err1 == nil {
			published = m1.published - m0.published
		}
		if derr != nil {
			return published > 0, fmt.Sprintf("published %.0f in its last second; its leases unknown (%v)", published, derr)
		}
		return owned > 0 && (backlog > 0 || published > 0), fmt.Sprintf("owned %d shards holding %d unpublished rows; published %.0f in its last second (-1: not scraped)", owned, backlog, published)
	case "relay_zombie":
		// Harm: a lease lost: another replica took a shard the frozen one held (seen
		// in shard_leases before it wakes), or, when Postgres could not tell, the
		// relay reported leases lost or writes fenced after it woke (its /metrics).
		i := f.target % len(h.relays)
		p := h.relays[i]
		var shards []int32
		err := retry(func() (err error) { shards, err = h.ownedShards(ctx, p.name); return err })
		m0, merr := scrape(h.metrics[i])
		p.signal(syscall.SIGSTOP)
		time.Sleep(5*time.Second + f.pause/2) // past the 4s lease
		var taken int
		terr := err
		if err == nil && len(shards) > 0 {
			terr = h.pool.QueryRow(ctx, `SELECT count(*) FROM relaybox.shard_leases WHERE shard = ANY($1) AND owner IS NOT NULL AND owner <> $2`, shards, p.name).Scan(&taken)
		}
		p.signal(syscall.SIGCONT)
		if terr == nil {
			return taken > 0, fmt.Sprintf("held %d shards when frozen; %d of them taken by another replica before it woke", len(shards), taken)
		}
		if merr != nil {
			return false, fmt.Sprintf("leases unknown: %v; not scraped before: %v", terr, merr)
		}
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if m1, err := scrape(h.metrics[i]); err == nil && m1.lost > m0.lost {
				return true, fmt.Sprintf("leases unknown (%v); after waking it reported %.0f leases lost or writes fenced", terr, m1.lost-m0.lost)
			}
			time.Sleep(500 * time.Millisecond)
		}
		return false, fmt.Sprintf("leases unknown (%v); no lease lost or write fenced reported within 15 s of waking", terr)
	case "consumer_kill":
		// Harm: the consumer had work: it applied effects since it was started (its
		// group membership and uncommitted offsets die with it), or in its last 3 s.
		p := h.consumers[f.target%len(h.consumers)]
		waited := h.awaitConsuming(ctx, p)
		var life, recent int64
		err := retry(func() error {
			return h.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE at > clock_timestamp() - interval '3 seconds') FROM effects WHERE consumer = $1 AND at >= $2`,
				p.name, p.startedAt()).Scan(&life, &recent)
		})
		p.kill()
		time.Sleep(f.pause / 2)
		p.start(h.t)
		if err != nil {
			return false, fmt.Sprintf("its work unknown: %v", err)
		}
		return life > 0, fmt.Sprintf("%sapplied %d effects since it started, %d in its last 3 s", waited, life, recent)
	case "kafka_kill":
		// Harm: events waited, i.e. the unpublished backlog grew while the broker was down.
		b0, err0 := h.backlog(ctx)
		h.kafka.Stop(true)
		time.Sleep(f.pause)
		b1, err1 := h.backlog(ctx)
		started := time.Now()
		h.kafka.Start()
		ready := fmt.Sprintf("; the broker answered %v after its start", time.Since(started).Round(100*time.Millisecond))
		if err0 != nil || err1 != nil {
			return false, fmt.Sprintf("backlog unknown: %v %v%s", err0, err1, ready)
		}
		return b1 > b0, fmt.Sprintf("unpublished backlog %d at the kill, %d at the restart%s", b0, b1, ready)
	case "postgres_restart":
		// Harm: writer transactions failed.
		w0 := h.writeFailures.Load()
		h.pg.Stop(f.hard)
		time.Sleep(f.pause / 2)
		h.pg.Start()
		failed := h.writeFailures.Load() - w0
		return failed > 0, fmt.Sprintf("%d writer transactions failed (hard %v)", failed, f.hard)
	case "registry_pause":
		// By construction: writers switch to a schema version never resolved before,
		// and a consumer and a relay restart (SIGTERM, then started again: cold caches,
		// and a relay checks the registry before it works) while the registry does not
		// answer. Harm: registry requests that arrived during the pause and were not
		// answered.
		waited := h.awaitPublishing()
		v := h.nextVersion()
		paused := make(chan *registryWindow)
		go func() { paused <- h.regProxy.pause(f.pause + 2*time.Second) }()
		time.Sleep(500 * time.Millisecond)
		c := h.consumers[f.target%len(h.consumers)]
		r := h.relays[f.target%len(h.relays)]
		var restarts sync.WaitGroup
		for _, p := range []*process{c, r} {
			restarts.Add(1)
			go func() {
				defer restarts.Done()
				m := h.locks[p.name]
				m.Lock()
				defer m.Unlock()
				p.stop()
				p.start(h.t)
			}()
		}
		restarts.Wait()
		win := <-paused
		// Requests that arrived during the pause end when their client gives up or
		// the thawed registry answers.
		deadline := time.Now().Add(30 * time.Second)
		for win.inflight.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		return win.refused.Load() > 0, fmt.Sprintf("%sschema v%d written from the pause on, %s and %s restarted in it; %d registry requests arrived during the pause, %d not answered",
			waited, v, c.name, r.name, win.arrived.Load(), win.refused.Load())
	case "slow_network":
		// Harm: the relays' traffic crossed a slow network: a Kafka request through
		// the proxy (the probe's) took at least the added round trip (two delayed
		// chunks), and relay batches completed over it. Batch durations alone do not
		// tell: on this shared machine most batches after a broker restart take longer
		// than 400 ms with no delay at all.
		d := time.Duration(20+f.target*90) * time.Millisecond // 20, 110 or 200 ms per chunk
		waited := h.awaitPublishing()
		m0 := h.scrapeAll()
		h.proxy.SetDelay(d)
		rtt, perr := h.probeRTT(time.Now().Add(f.pause + 3*time.Second))
		// A fault on another target in the same window (a Postgres restart, relay
		// kills) can stop every relay while the network is slow: the delay then holds,
		// at most 30 s more, until relay batches have completed over it.
		var batches float64
		held, hold := "", time.Now().Add(30*time.Second)
		for {
			m1 := h.scrapeAll()
			batches = 0
			for i := range h.relays {
				a, ok0 := m0[i]
				b, ok1 := m1[i]
				switch {
				case ok0 && ok1 && b.batches >= a.batches:
					batches += b.batches - a.batches
				case ok1: // restarted in between, or not scraped before: counted from now
					m0[i] = b
				}
			}
			if batches > 0 || perr != nil || time.Now().After(hold) {
				break
			}
			held = "held until relay batches completed; "
			time.Sleep(500 * time.Millisecond)
		}
		h.proxy.SetDelay(0)
		if perr != nil {
			return false, fmt.Sprintf("%s%v per chunk: the probe's request failed (%v); %.0f relay batches completed", waited, d, perr, batches)
		}
		return rtt >= 2*d && batches > 0, fmt.Sprintf("%s%s%v per chunk: a Kafka request through it took %v; %.0f relay batches completed over it", waited, held, d, rtt.Round(time.Millisecond), batches)
	}
	panic("unknown fault kind " + f.kind)
}

// retry runs f until it succeeds or 10 s have passed (Postgres may be restarting):
// the fault then waits for its observation instead of reporting none.
func retry(f func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// awaitPublishing waits (up to 60 s) until a relay publishes (its
// relaybox_relay_published_total grows between two scrapes half a second apart), so
// that a registry pause or a slow network begins while the relays work: with the
// broker or Postgres down they wait for it and touch neither. It says how long it
// waited, if at all. Once the writers are done it waits only while the outbox holds
// unpublished rows (a backlog left by the faults): otherwise the relays run dry.
func (h *harness) awaitPublishing() string {
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	prev := h.scrapeAll()
	for {
		select {
		case <-h.writersDone:
			if b, err := h.backlog(context.Background()); err == nil && b == 0 {
				return "began after the writers were done, the outbox empty; "
			}
			time.Sleep(500 * time.Millisecond)
		case <-time.After(500 * time.Millisecond):
		}
		cur := h.scrapeAll()
		for i, m := range cur {
			if p, ok := prev[i]; ok && m.published > p.published {
				if waited := time.Since(start); waited > 2*time.Second {
					return fmt.Sprintf("began when the relays published again, after %v; ", waited.Round(time.Second))
				}
				return ""
			}
		}
		if time.Now().After(deadline) {
			return "began with no relay publishing for 60 s; "
		}
		prev = cur
	}
}

// awaitConsuming waits, at most 30 s, until consumer p has applied an effect since it
// was started, so that its kill lands on work in progress (uncommitted offsets, a
// batch in its transaction) rather than on a consumer still joining its group or
// with nothing published to read (exactly-once relays publish in bursts between
// faults). It returns a note for the evidence when it waited.
func (h *harness) awaitConsuming(ctx context.Context, p *process) string {
	start := time.Now()
	for {
		var busy bool
		err := h.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM effects WHERE consumer = $1 AND at >= $2)`, p.name, p.startedAt()).Scan(&busy)
		if err == nil && busy {
			if w := time.Since(start); w > time.Second {
				return fmt.Sprintf("began once it applied effects, after %v; ", w.Round(time.Second))
			}
			return ""
		}
		if time.Since(start) > 30*time.Second {
			return "began with it applying nothing for 30 s; "
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// probeRTT sends Kafka requests (Metadata) through the proxy until end and returns
// the shortest round trip of those answered (an error if none was).
func (h *harness) probeRTT(end time.Time) (time.Duration, error) {
	best := time.Duration(-1)
	var lastErr error
	for time.Now().Before(end) {
		ctx, cancel := context.WithDeadline(context.Background(), end)
		start := time.Now()
		err := h.probe.Ping(ctx)
		cancel()
		if err == nil {
			if d := time.Since(start); best < 0 || d < best {
				best = d
			}
		} else {
			lastErr = err
		}
		time.Sleep(250 * time.Millisecond)
	}
	if best < 0 {
		return 0, fmt.Errorf("no request answered: %v", lastErr)
	}
	return best, nil
}

// ownedShards lists the shards whose live lease replica holds.
func (h *harness) ownedShards(ctx context.Context, replica string) ([]int32, error) {
	rows, err := h.pool.Query(ctx, `SELECT shard FROM relaybox.shard_leases WHERE owner = $1 AND expires_at > now()`, replica)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var shards []int32
	for rows.Next() {
		var s int32
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		shards = append(shards, s)
	}
	return shards, rows.Err()
}

// ownedWork is how many shards replica holds and their unpublished rows.
func (h *harness) ownedWork(ctx context.Context, replica string) (owned, backlog int64, err error) {
	err = h.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM relaybox.shard_leases WHERE owner = $1 AND expires_at > now()),
		(SELECT count(*) FROM relaybox.outbox o JOIN relaybox.shard_leases l USING (shard)
		  WHERE l.owner = $1 AND l.expires_at > now() AND o.published_at IS NULL AND o.parked_at IS NULL)`, replica).Scan(&owned, &backlog)
	return owned, backlog, err
}

// backlog is the number of unpublished, unparked outbox rows.
func (h *harness) backlog(ctx context.Context) (int64, error) {
	var n int64
	err := h.pool.QueryRow(ctx, `SELECT count(*) FROM relaybox.outbox WHERE published_at IS NULL AND parked_at IS NULL`).Scan(&n)
	return n, err
}

// scrapeAll scrapes every relay that answers, by index.
func (h *harness) scrapeAll() map[int]relayMetrics {
	out := map[int]relayMetrics{}
	for i, addr := range h.metrics {
		if m, err := scrape(addr); err == nil {
			out[i] = m
		}
	}
	return out
}
