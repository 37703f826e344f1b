package relay_test

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// Outages of 30 s each, on a broker and a registry this test owns (so stopping them
// disturbs no other test): nothing is lost, order holds, readiness drops and returns,
// and the relay recovers without a restart.
func TestRelay_SurvivesKafkaAndRegistryOutagesWithoutRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skips the 70 s outage test")
	}
	t.Parallel()
	outage := 30 * time.Second
	if v := os.Getenv("RELAYBOX_OUTAGE"); v != "" {
		outage, _ = time.ParseDuration(v)
	}
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})
	kafka, brokers := testenv.OwnKafka(t)
	reg, regURL := testenv.OwnRegistry(t)

	cl := testenv.Client(t, kgo.SeedBrokers(brokers))
	topics := []string{"outage-a", "outage-b"}
	if _, err := kadm.NewClient(cl).CreateTopics(context.Background(), 3, 1, nil, topics...); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, &relay.Config{Schema: schema, Brokers: []string{brokers}, RegistryURL: regURL,
		PollInterval: 200 * time.Millisecond, LeaseTTL: 3 * time.Second, HeartbeatInterval: 500 * time.Millisecond,
		UnreadyAfter: 5 * time.Second, MaxBackoff: 2 * time.Second,
		RegistryTimeout: 2 * time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Writers keep committing: 50 keys on topic a all along; topic b (a new subject,
	// so its schema must be registered) only while the registry is down.
	var written atomic.Int64
	write := func(topic string, seq int) {
		evs := make([]outbox.Event, 50)
		for k := range evs {
			key := "key-" + strconv.Itoa(k)
			evs[k] = outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: int64(seq)}}
		}
		if err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error { return w.Write(context.Background(), tx, evs...) }); err != nil {
			t.Error(err)
			return
		}
		written.Add(50)
	}
	seqA := 0
	tick := func(n int) {
		for range n {
			seqA++
			write("outage-a", seqA)
			time.Sleep(100 * time.Millisecond)
		}
	}
	tick(20)
	waitReady := func(want bool) time.Duration {
		start := time.Now()
		for time.Since(start) < 120*time.Second { // a registry restarted under load may answer slowly at first
			if (r.Ready() == nil) == want {
				return time.Since(start)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("Ready() never became %v: %v", want, r.Ready())
		return 0
	}
	waitReady(true)

	t.Log("kafka: kill -9")
	kafka.Stop(true)
	stopAt := time.Now()
	for time.Since(stopAt) < outage {
		tick(1)
	}
	if r.Ready() == nil {
		t.Errorf("Ready() is nil after Kafka was down %s (UnreadyAfter 5s)", outage)
	}
	kafka.Start()
	t.Logf("kafka back; ready again after %s", waitReady(true).Round(time.Millisecond))

	t.Log("registry: stopped")
	reg.Stop(false)
	stopAt = time.Now()
	seqB := 0
	for time.Since(stopAt) < outage {
		tick(1)
		seqB++
		write("outage-b", seqB)
	}
	if r.Ready() == nil {
		t.Errorf("Ready() is nil after the registry was down %s with new schemas waiting", outage)
	}
	reg.Start()
	t.Logf("registry back; ready again after %s", waitReady(true).Round(time.Millisecond))
	tick(10)

	want := int(written.Load())
	got := readBackFrom(t, brokers, regURL, topics, want, 90*time.Second)
	if got.distinct != want || got.violations != 0 {
		t.Fatalf("distinct %d of %d written, order violations %d", got.distinct, want, got.violations)
	}
	t.Logf("%d events through a %s Kafka outage and a %s registry outage: 0 lost, 0 order violations, %d duplicates", want, outage, outage, got.duplicates)
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, _ := (&env{pool: pool, schema: schema}).backlog(t)
		if p == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backlog %d a minute after recovery", p)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
