package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/metrics"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// gather returns the families of reg by name.
func gather(t *testing.T, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// lint fails the test on any problem promlint finds (what `promtool check metrics`
// checks).
func lint(t *testing.T, g prometheus.Gatherer) {
	t.Helper()
	problems, err := testutil.GatherAndLint(g)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestRelay_HooksFeedTheirSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var cfg relay.Config
	cfg.ExactlyOnce = true
	m.Install(&cfg)
	h := cfg.Hooks
	h.OnBatch(relay.BatchEvent{Shard: 3, Read: 10, Published: 9, Duration: 20 * time.Millisecond,
		Stages: relay.BatchStages{Read: time.Millisecond, Produce: 15 * time.Millisecond, Record: 4 * time.Millisecond}})
	h.OnBatch(relay.BatchEvent{Shard: 4, Read: 5, Published: 5, Duration: 10 * time.Millisecond})
	h.OnRead(relay.ReadEvent{Shard: 3, Rows: 10, Duration: time.Millisecond})
	h.OnPublished(relay.PublishedEvent{Latency: 30 * time.Millisecond})
	h.OnError(relay.ErrorEvent{Kind: relay.ErrorKafka, Err: errors.New("down")})
	h.OnError(relay.ErrorEvent{Kind: relay.ErrorKafka, Err: errors.New("down")})
	h.OnParked(relay.ParkEvent{Reason: relay.ParkTooLarge, ID: 7})
	h.OnShards(relay.ShardsEvent{Owned: []int{1, 2, 3}})
	h.OnLease(relay.LeaseEvent{Shard: 1, Generation: 2, Acquired: true})
	h.OnLease(relay.LeaseEvent{Shard: 1, Generation: 2, Acquired: false})
	h.OnFenced(relay.FencedEvent{Shards: []int{1}, Rows: 4, Op: "delete"})
	h.OnTransaction(relay.TransactionEvent{Shard: 1, Records: 3, Committed: true, Duration: time.Millisecond})
	h.OnTransaction(relay.TransactionEvent{Shard: 1, Records: 3, Fenced: true, Err: errors.New("fenced")})
	h.OnTransaction(relay.TransactionEvent{Shard: 1, Records: 3, Err: errors.New("aborted")})

	want := `
# HELP relaybox_relay_published_total Events acked by Kafka and removed from the outbox (or marked, in retention mode) by this replica.
# TYPE relaybox_relay_published_total counter
relaybox_relay_published_total 14
# HELP relaybox_relay_errors_total Failures by kind (kafka, registry, postgres, lease).
# TYPE relaybox_relay_errors_total counter
relaybox_relay_errors_total{kind="kafka"} 2
relaybox_relay_errors_total{kind="lease"} 0
relaybox_relay_errors_total{kind="postgres"} 0
relaybox_relay_errors_total{kind="registry"} 0
# HELP relaybox_relay_parked_events_total Events parked by this replica, by reason.
# TYPE relaybox_relay_parked_events_total counter
relaybox_relay_parked_events_total{reason="too_large"} 1
# HELP relaybox_relay_owned_shards Shards this replica holds the lease of.
# TYPE relaybox_relay_owned_shards gauge
relaybox_relay_owned_shards 3
# HELP relaybox_relay_leases_lost_total Drains of a shard stopped because this replica lost the shard's lease.
# TYPE relaybox_relay_leases_lost_total counter
relaybox_relay_leases_lost_total 1
# HELP relaybox_relay_fenced_writes_total Rows (or, for op="kafka transaction", transactions) this replica's writes left alone because the lease had passed to another owner.
# TYPE relaybox_relay_fenced_writes_total counter
relaybox_relay_fenced_writes_total{op="delete"} 4
# HELP relaybox_relay_transactions_total Kafka transactions ended in exactly-once mode, by outcome (committed, aborted, fenced).
# TYPE relaybox_relay_transactions_total counter
relaybox_relay_transactions_total{outcome="aborted"} 1
relaybox_relay_transactions_total{outcome="committed"} 1
relaybox_relay_transactions_total{outcome="fenced"} 1
# HELP relaybox_relay_mode 1 for this replica's mode (at-least-once or exactly-once).
# TYPE relaybox_relay_mode gauge
relaybox_relay_mode{mode="exactly-once"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"relaybox_relay_published_total", "relaybox_relay_errors_total", "relaybox_relay_parked_events_total",
		"relaybox_relay_owned_shards", "relaybox_relay_leases_lost_total", "relaybox_relay_fenced_writes_total",
		"relaybox_relay_transactions_total", "relaybox_relay_mode"); err != nil {
		t.Error(err)
	}
	got := gather(t, reg)
	for n, count := range map[string]uint64{"relaybox_relay_batch_size": 2, "relaybox_relay_batch_seconds": 2,
		"relaybox_relay_read_seconds": 1, "relaybox_relay_publish_latency_seconds": 1, "relaybox_relay_transaction_seconds": 3} {
		if mf := got[n]; mf == nil || mf.Metric[0].GetHistogram().GetSampleCount() != count {
			t.Errorf("%s: %v, want %d observations", n, mf, count)
		}
	}
	if s := got["relaybox_relay_batch_size"].Metric[0].GetHistogram().GetSampleSum(); s != 15 {
		t.Errorf("relaybox_relay_batch_size sum %v, want 15 rows", s)
	}
	stages := map[string]float64{}
	for _, m := range got["relaybox_relay_batch_stage_seconds"].GetMetric() {
		if m.GetHistogram().GetSampleCount() != 2 {
			t.Errorf("stage %v: %d observations, want 2", m.GetLabel(), m.GetHistogram().GetSampleCount())
		}
		stages[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleSum()
	}
	if len(stages) != 5 || stages["produce"] != 0.015 || stages["record"] != 0.004 || stages["read"] != 0.001 {
		t.Errorf("relaybox_relay_batch_stage_seconds sums %v, want 5 stages with produce 0.015, record 0.004, read 0.001", stages)
	}
	lint(t, reg)
}

// Install keeps the hooks a config already has, and calls them first.
func TestRelay_InstallKeepsExistingHooks(t *testing.T) {
	m, err := metrics.NewRelay(nil)
	if err != nil {
		t.Fatal(err)
	}
	var seen []int
	cfg := relay.Config{Hooks: relay.Hooks{OnBatch: func(e relay.BatchEvent) { seen = append(seen, e.Published) }}}
	m.Install(&cfg)
	cfg.Hooks.OnBatch(relay.BatchEvent{Read: 2, Published: 2})
	if len(seen) != 1 || seen[0] != 2 {
		t.Fatalf("the config's own OnBatch saw %v, want [2]", seen)
	}
	body := scrape(t, m.Handler())
	if !strings.Contains(body, "relaybox_relay_published_total 2\n") {
		t.Errorf("the Relay's own hook did not count the batch:\n%s", body)
	}
	if !strings.Contains(body, `relaybox_relay_mode{mode="at-least-once"} 1`) {
		t.Errorf("no at-least-once mode series:\n%s", body)
	}
}

// A status query that fails (Postgres down) costs only its own series: the scrape
// still succeeds, with relaybox_scrape_error 1 and every other metric.
func TestRelay_FailedStatusQueryCostsOnlyItsOwnSeries(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	pool, err := pgxpool.New(context.Background(), fmt.Sprintf("postgres://u:p@%s/db?sslmode=disable&connect_timeout=2", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg := prometheus.NewRegistry()
	m, err := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg, Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	m.Hooks().OnError(relay.ErrorEvent{Kind: relay.ErrorPostgres, Err: errors.New("down")})
	got := gather(t, reg) // fails the test if the scrape fails as a whole
	if mf := got["relaybox_scrape_error"]; mf == nil || mf.Metric[0].GetGauge().GetValue() != 1 {
		t.Fatalf("relaybox_scrape_error = %v, want 1", mf)
	}
	if got["relaybox_relay_errors_total"] == nil || got["relaybox_relay_published_total"] == nil {
		t.Fatal("the hook-fed series are missing from the scrape")
	}
	for _, n := range []string{"relaybox_outbox_backlog", "relaybox_outbox_oldest_unpublished_seconds", "relaybox_relay_live_replicas"} {
		if got[n] != nil {
			t.Errorf("%s emitted without a status", n)
		}
	}
	// Through the Handler too: HTTP 200 with the same content.
	if body := scrape(t, m.Handler()); !strings.Contains(body, "relaybox_scrape_error 1") {
		t.Errorf("handler:\n%s", body)
	}
}

// The status collector reads the outbox: backlog and oldest age per shard, parked by
// reason, from the real Postgres.
func TestRelay_StatusCollectorReadsTheOutbox(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	w, err := outbox.New(pool, &outbox.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	type ev struct {
		ID string `avro:"id"`
	}
	ctx := context.Background()
	evs := []outbox.Event{{Topic: "t", Key: "k1", Type: "E", Value: ev{"1"}}, {Topic: "t", Key: "k1", Type: "E", Value: ev{"2"}}}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return w.Write(ctx, tx, evs...) }); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if _, err := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg, Pool: pool, Schema: schema}); err != nil {
		t.Fatal(err)
	}
	got := gather(t, reg)
	if mf := got["relaybox_scrape_error"]; mf == nil || mf.Metric[0].GetGauge().GetValue() != 0 {
		t.Fatalf("relaybox_scrape_error = %v, want 0", mf)
	}
	var backlog float64
	for _, s := range got["relaybox_outbox_backlog"].GetMetric() {
		backlog += s.GetGauge().GetValue()
	}
	if backlog != 2 {
		t.Errorf("backlog summed over shards = %v, want 2", backlog)
	}
	if n := len(got["relaybox_outbox_oldest_unpublished_seconds"].GetMetric()); n != outbox.Shards {
		t.Errorf("%d oldest-age series, want one per shard (%d)", n, outbox.Shards)
	}
	lint(t, reg)
}

// Two Relays cannot share names on one registry; the second registers nothing.
func TestNewRelay_NameClashIsAnErrorAndRegistersNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	before := len(gather(t, reg))
	if _, err := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg}); err == nil {
		t.Fatal("a second Relay with the same namespace registered")
	}
	if _, err := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg, Namespace: "other"}); err != nil {
		t.Fatalf("another namespace: %v", err)
	}
	if n := len(gather(t, reg)); n <= before {
		t.Fatalf("%d families after the second namespace, want more than %d", n, before)
	}
}

func TestConsumer_HooksFeedTheirSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.NewConsumer(&metrics.ConsumerOpts{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	cfg := consumer.Config{Group: "g", Topics: []string{"orders"}}
	m.Install(&cfg)
	h := cfg.Hooks
	rec := consumer.RecordEvent{Topic: "orders", Partition: 2, Offset: 9, EventID: "e1", EventType: "OrderPlaced"}
	h.OnProcessed(rec)
	h.OnProcessed(rec)
	h.OnDuplicate(rec)
	h.OnSkipped(consumer.RecordEvent{Topic: "orders", EventType: "Other"})
	h.OnRetry(consumer.RetryEvent{RecordEvent: rec, Attempt: 1, Err: errors.New("busy")})
	h.OnDeadLetter(consumer.DeadLetterEvent{RecordEvent: rec, Reason: consumer.ReasonExhausted, DeadLetterTopic: "orders.dlq", Attempts: 5})
	h.OnHandlerLatency(consumer.HandlerEvent{RecordEvent: rec, Duration: 3 * time.Millisecond})
	h.OnLag(consumer.LagEvent{Topic: "orders", Partition: 2, Lag: 40})
	h.OnLag(consumer.LagEvent{Topic: "orders", Partition: 3, Lag: 7})
	h.OnBatch(consumer.BatchEvent{Topic: "orders", Partition: 2, Records: 100})
	h.OnError(consumer.ErrorEvent{Kind: consumer.ErrorCommit, Err: errors.New("rebalancing")})

	want := `
# HELP relaybox_consumer_records_total Records this consumer is done with, by outcome: applied (the handler's transaction committed), duplicate (already applied by the group: skipped), skipped (no handler for its type), dead_letter (produced to the dead-letter topic).
# TYPE relaybox_consumer_records_total counter
relaybox_consumer_records_total{group="g",outcome="applied",topic="orders"} 2
relaybox_consumer_records_total{group="g",outcome="dead_letter",topic="orders"} 1
relaybox_consumer_records_total{group="g",outcome="duplicate",topic="orders"} 1
relaybox_consumer_records_total{group="g",outcome="skipped",topic="orders"} 1
# HELP relaybox_consumer_retries_total Handler attempts that failed and will be retried after a backoff.
# TYPE relaybox_consumer_retries_total counter
relaybox_consumer_retries_total{event_type="OrderPlaced",group="g",topic="orders"} 1
# HELP relaybox_consumer_lag Records of a partition this consumer owns not yet processed, from the last fetch's high watermark.
# TYPE relaybox_consumer_lag gauge
relaybox_consumer_lag{group="g",partition="2",topic="orders"} 40
relaybox_consumer_lag{group="g",partition="3",topic="orders"} 7
# HELP relaybox_consumer_errors_total Infrastructure failures, retried without limit, by kind (postgres, registry, kafka, commit).
# TYPE relaybox_consumer_errors_total counter
relaybox_consumer_errors_total{group="g",kind="commit"} 1
relaybox_consumer_errors_total{group="g",kind="kafka"} 0
relaybox_consumer_errors_total{group="g",kind="postgres"} 0
relaybox_consumer_errors_total{group="g",kind="registry"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "relaybox_consumer_records_total",
		"relaybox_consumer_retries_total", "relaybox_consumer_lag", "relaybox_consumer_errors_total"); err != nil {
		t.Error(err)
	}
	got := gather(t, reg)
	dead := map[string]float64{}
	for _, s := range got["relaybox_consumer_dead_letters_total"].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == "reason" {
				dead[l.GetValue()] = s.GetCounter().GetValue()
			}
		}
	}
	if len(dead) != 7 || dead[consumer.ReasonExhausted] != 1 || dead[consumer.ReasonMalformed] != 0 {
		t.Errorf("dead letters by reason: %v, want all seven reasons, attempts_exhausted 1", dead)
	}
	if mf := got["relaybox_consumer_handler_duration_seconds"]; mf == nil || mf.Metric[0].GetHistogram().GetSampleCount() != 1 {
		t.Errorf("handler duration: %v, want one observation", mf)
	}
	if mf := got["relaybox_consumer_batch_size"]; mf == nil || mf.Metric[0].GetHistogram().GetSampleSum() != 100 {
		t.Errorf("batch size: %v, want one batch of 100", mf)
	}
	lint(t, reg)

	// A revoked partition's lag goes: it is another member's to report now.
	h.OnRevoked(consumer.RevokedEvent{Partitions: map[string][]int32{"orders": {2}}})
	if n := testutil.CollectAndCount(reg, "relaybox_consumer_lag"); n != 1 {
		t.Errorf("%d lag series after partition 2 was revoked, want 1 (partition 3)", n)
	}
}

// One Consumer serves two consumers of a process, told apart by their group.
func TestConsumer_TwoGroupsShareOneConsumer(t *testing.T) {
	m, err := metrics.NewConsumer(nil)
	if err != nil {
		t.Fatal(err)
	}
	a := consumer.Config{Group: "a", Topics: []string{"t"}}
	b := consumer.Config{Group: "b", Topics: []string{"t"}}
	m.Install(&a)
	m.Install(&b)
	a.Hooks.OnProcessed(consumer.RecordEvent{Topic: "t"})
	body := scrape(t, m.Handler())
	for _, want := range []string{
		`relaybox_consumer_records_total{group="a",outcome="applied",topic="t"} 1`,
		`relaybox_consumer_records_total{group="b",outcome="applied",topic="t"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("no %s in\n%s", want, body)
		}
	}
}

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("GET /metrics: %d\n%s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}
