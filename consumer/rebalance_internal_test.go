package consumer

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/relaybox/relaybox/internal/envelope"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/internal/wire"
)

// freezer stalls every connection of one Kafka client while frozen (reads and writes
// wait), as a member paused by its host or cut off by the network would be: its
// heartbeats stop, the group evicts it and gives its partitions to another member,
// and when it thaws, franz-go reports them lost and rejoins.
type freezer struct {
	mu     sync.Mutex
	thawed chan struct{} // closed while not frozen
}

func newFreezer() *freezer {
	f := &freezer{thawed: make(chan struct{})}
	close(f.thawed)
	return f
}

func (f *freezer) freeze() { f.mu.Lock(); f.thawed = make(chan struct{}); f.mu.Unlock() }
func (f *freezer) thaw()   { f.mu.Lock(); close(f.thawed); f.mu.Unlock() }
func (f *freezer) wait() {
	f.mu.Lock()
	ch := f.thawed
	f.mu.Unlock()
	<-ch
}

func (f *freezer) dial(ctx context.Context, network, host string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, host)
	if err != nil {
		return nil, err
	}
	return frozenConn{c, f}, nil
}

type frozenConn struct {
	net.Conn
	f *freezer
}

func (c frozenConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.f.wait()
	return n, err
}

func (c frozenConn) Write(b []byte) (int, error) {
	c.f.wait()
	return c.Conn.Write(b)
}

// commitLog follows the group's commits as the broker records them, in the
// __consumer_offsets topic, from now on: every commit, not samples of the latest.
// It reports each commit of topic that is lower than an earlier one of its partition.
func commitLog(t *testing.T, ctx context.Context, group, topic string) (rewinds func() []string, commits func() int) {
	t.Helper()
	const offsetsTopic = "__consumer_offsets"
	adm := kadm.NewClient(testenv.Client(t))
	ends, err := adm.ListEndOffsets(ctx, offsetsTopic)
	if err != nil {
		t.Fatal(err)
	}
	start := map[string]map[int32]kgo.Offset{offsetsTopic: {}}
	ends.Each(func(o kadm.ListedOffset) { start[offsetsTopic][o.Partition] = kgo.NewOffset().At(o.Offset) })
	cl := testenv.Client(t, kgo.ConsumePartitions(start))
	var mu sync.Mutex
	var found []string
	var n int
	last := map[int32]int64{}
	go func() {
		for ctx.Err() == nil {
			cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
				var k kmsg.OffsetCommitKey
				if r.Value == nil || k.ReadFrom(r.Key) != nil || k.Version > 1 || k.Group != group || k.Topic != topic {
					return
				}
				var v kmsg.OffsetCommitValue
				if v.ReadFrom(r.Value) != nil {
					return
				}
				mu.Lock()
				n++
				if prev, ok := last[k.Partition]; ok && v.Offset < prev {
					found = append(found, fmt.Sprintf("partition %d: committed %d after %d", k.Partition, v.Offset, prev))
				}
				last[k.Partition] = max(last[k.Partition], v.Offset)
				mu.Unlock()
			})
		}
	}()
	return func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), found...) },
		func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// Under load (records produced on every partition throughout, two members committing
// every millisecond), member a is frozen past its session timeout, three times: the
// group evicts it and gives its partitions to b, which goes on processing and
// committing; when a thaws, franz-go reports its partitions lost and a rejoins. Each
// time, a's periodic committer is held, as a descheduled goroutine would be, between
// a snapshot with processed, uncommitted offsets and its commit, until a has rejoined
// under a new generation. Every commit the broker records for the group (read back
// from __consumer_offsets: all of them, not samples) must be at least the previous one
// of its partition: a lost partition committed under the new generation would rewind
// its new owner.
func TestConsumer_LostPartitionsUnderLoadNeverRewindCommittedOffsets(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	topic := testenv.Topic(t, 4)
	group := testenv.Name(t, "g")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rewinds, commits := commitLog(t, ctx, group, topic)

	const rounds = 3
	var losses atomic.Int64 // "partitions lost" warnings of member a
	member := func(name string, opts ...kgo.Opt) (*Consumer, func()) {
		log := testenv.Logger(t).With("member", name)
		if name == "a" {
			log = slog.New(countLost{log.Handler(), &losses})
		}
		c, err := New(pool, &Config{Group: group, Topics: []string{topic}, Brokers: testenv.Brokers(t),
			RegistryURL: testenv.RegistryURL(t), Schema: schema, Logger: log,
			CommitInterval: time.Millisecond,
			KafkaOpts: append([]kgo.Opt{kgo.SessionTimeout(6 * time.Second), kgo.HeartbeatInterval(500 * time.Millisecond),
				kgo.RebalanceTimeout(10 * time.Second)}, opts...)})
		if err != nil {
			t.Fatal(err)
		}
		mctx, mcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(mctx) }()
		return c, func() { mcancel(); <-done }
	}
	fr := newFreezer()
	a, stopA := member("a", kgo.Dialer(fr.dial))
	// In a round, a's periodic committer is held between its snapshot and its commit
	// (a host descheduling it) from a snapshot with processed, uncommitted offsets
	// until the loss is over and a has rejoined with a new generation.
	var hold atomic.Bool
	snapped, release := make(chan struct{}), make(chan struct{})
	a.afterSnapshot = func() {
		if !hold.Load() || !hasUncommitted(a) {
			return
		}
		hold.Store(false)
		snapped <- struct{}{}
		<-release
	}
	b, stopB := member("b")
	defer stopB()
	defer stopA()

	// Load: records of a type without a handler (skipped and marked done), on every
	// partition, until the end of the test.
	var produced atomic.Int64
	go func() {
		cl := testenv.Client(t, kgo.DefaultProduceTopic(topic))
		for i := 0; ctx.Err() == nil; i++ {
			r := &kgo.Record{Key: []byte(fmt.Sprint("k", i%32)), Value: wire.Frame(1, []byte{0}), Headers: []kgo.RecordHeader{
				{Key: envelope.EventID, Value: []byte(fmt.Sprint("e-", i))}, {Key: envelope.EventType, Value: []byte("Other")}}}
			cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
				if err == nil {
					produced.Add(1)
				}
			})
			if i%20 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	owned := func(c *Consumer) int {
		c.partsMu.Lock()
		defer c.partsMu.Unlock()
		return len(c.parts)
	}
	waitUntil := func(d time.Duration, what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s", what, d)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for round := range rounds {
		waitUntil(60*time.Second, fmt.Sprintf("round %d: both members own partitions and commit", round), func() bool {
			return owned(a) > 0 && owned(b) > 0 && commits() > 0
		})
		hold.Store(true)
		select {
		case <-snapped:
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: a's committer took no snapshot with uncommitted offsets within 60s", round)
		}
		before, lost := commits(), losses.Load()
		fr.freeze()
		// Past the 6 s session timeout the group evicts a and gives b every partition.
		waitUntil(60*time.Second, fmt.Sprintf("round %d: b owns every partition while a is frozen", round), func() bool {
			return owned(b) == 4
		})
		fr.thaw()
		waitUntil(60*time.Second, fmt.Sprintf("round %d: a reports its partitions lost, rejoins, commits go on", round), func() bool {
			return losses.Load() > lost && owned(a) > 0 && commits() > before+10
		})
		release <- struct{}{} // the held commit goes on, under the new generation
	}
	n := commits()
	waitUntil(30*time.Second, "the commits after the last round reach the log reader", func() bool { return commits() > n+10 })
	if r := rewinds(); len(r) > 0 {
		t.Fatalf("%d commits rewound a partition (of %d recorded, %d records produced): %v", len(r), commits(), produced.Load(), r)
	}
	t.Logf("%d commits recorded, none rewound; %d losses; %d records produced", commits(), losses.Load(), produced.Load())
}

// hasUncommitted reports whether a partition of c has processed offsets not yet
// committed.
func hasUncommitted(c *Consumer) bool {
	c.partsMu.Lock()
	defer c.partsMu.Unlock()
	for _, p := range c.parts {
		if _, ok := p.uncommitted(); ok {
			return true
		}
	}
	return false
}

// countLost counts the consumer's "partitions lost" warnings.
type countLost struct {
	slog.Handler
	n *atomic.Int64
}

func (h countLost) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "partitions lost") {
		h.n.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h countLost) WithAttrs(as []slog.Attr) slog.Handler {
	return countLost{h.Handler.WithAttrs(as), h.n}
}
func (h countLost) WithGroup(g string) slog.Handler { return countLost{h.Handler.WithGroup(g), h.n} }
