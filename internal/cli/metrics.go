package cli

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/relaybox/relaybox/relay"
)

// relayMetrics wires relay.Hooks to Prometheus. Backlog, oldest age and parked counts
// are read from Postgres at scrape time (one query), so every replica reports the
// same truth.
type relayMetrics struct {
	registry   *prometheus.Registry
	published  prometheus.Counter
	latency    prometheus.Histogram
	batchSize  prometheus.Histogram
	batchTime  prometheus.Histogram
	readTime   prometheus.Histogram
	errors     *prometheus.CounterVec
	parkedTot  *prometheus.CounterVec
	owned      prometheus.Gauge
	fenced     *prometheus.CounterVec
	txns       *prometheus.CounterVec
	txnTime    prometheus.Histogram
	mode       *prometheus.GaugeVec
	admin      *relay.Admin
	backlogD   *prometheus.Desc
	oldestD    *prometheus.Desc
	parkedD    *prometheus.Desc
	replicasD  *prometheus.Desc
	scrapeErrD *prometheus.Desc
}

func newRelayMetrics(admin *relay.Admin) *relayMetrics {
	m := &relayMetrics{
		registry: prometheus.NewRegistry(),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "relaybox_relay_published_total",
			Help: "Events acked by Kafka and removed from the outbox by this replica."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "relaybox_relay_publish_latency_seconds",
			Help: "Time from an event's created_at (now() of the transaction that wrote it: its start, not its commit) to its Kafka ack.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "relaybox_relay_batch_size",
			Help: "Rows read per batch.", Buckets: prometheus.ExponentialBuckets(1, 2, 14)}),
		readTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "relaybox_relay_read_seconds",
			Help: "Time of a batch's read query (a shard's next rows); should not grow with the backlog.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		batchTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "relaybox_relay_batch_seconds",
			Help: "Time from read to delete of a batch.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relaybox_relay_errors_total",
			Help: "Failures by kind (kafka, registry, postgres, lease)."}, []string{"kind"}),
		parkedTot: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relaybox_relay_parked_events_total",
			Help: "Events parked by this replica, by reason."}, []string{"reason"}),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{Name: "relaybox_relay_owned_shards",
			Help: "Shards this replica holds the lease of."}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relaybox_relay_fenced_writes_total",
			Help: "Rows (or, for op=\"kafka transaction\", transactions) this replica's writes left alone because the lease had passed to another owner."}, []string{"op"}),
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "relaybox_relay_transactions_total",
			Help: "Kafka transactions ended in exactly-once mode, by outcome (committed, aborted, fenced)."}, []string{"outcome"}),
		txnTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "relaybox_relay_transaction_seconds",
			Help: "Time from a transaction's begin to its end (exactly-once mode).", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		mode: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "relaybox_relay_mode",
			Help: "1 for this replica's mode (at-least-once or exactly-once)."}, []string{"mode"}),
		admin:     admin,
		backlogD:  prometheus.NewDesc("relaybox_outbox_backlog", "Unpublished, unparked events per shard.", []string{"shard"}, nil),
		oldestD:   prometheus.NewDesc("relaybox_outbox_oldest_unpublished_seconds", "Age of the oldest unpublished event per shard.", []string{"shard"}, nil),
		parkedD:   prometheus.NewDesc("relaybox_outbox_parked", "Parked events by reason.", []string{"reason"}, nil),
		replicasD: prometheus.NewDesc("relaybox_relay_live_replicas", "Relay replicas with a live heartbeat.", nil, nil),
		scrapeErrD: prometheus.NewDesc("relaybox_scrape_error", "1 when this scrape could not read the outbox's status from Postgres "+
			"(its backlog, oldest age, parked and replica series are missing from this scrape), else 0.", nil, nil),
	}
	m.registry.MustRegister(m.published, m.latency, m.batchSize, m.batchTime, m.readTime, m.errors, m.parkedTot, m.owned, m.fenced, m.txns, m.txnTime, m.mode, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, k := range relay.ErrorKinds() {
		m.errors.WithLabelValues(string(k))
	}
	for _, o := range []string{"committed", "aborted", "fenced"} {
		m.txns.WithLabelValues(o)
	}
	return m
}

func (m *relayMetrics) hooks() relay.Hooks {
	return relay.Hooks{
		OnBatch: func(e relay.BatchEvent) {
			m.batchSize.Observe(float64(e.Read))
			m.batchTime.Observe(e.Duration.Seconds())
			m.published.Add(float64(e.Published))
		},
		OnRead:      func(e relay.ReadEvent) { m.readTime.Observe(e.Duration.Seconds()) },
		OnPublished: func(e relay.PublishedEvent) { m.latency.Observe(e.Latency.Seconds()) },
		OnError:     func(e relay.ErrorEvent) { m.errors.WithLabelValues(string(e.Kind)).Inc() },
		OnParked:    func(e relay.ParkEvent) { m.parkedTot.WithLabelValues(string(e.Reason)).Inc() },
		OnShards:    func(e relay.ShardsEvent) { m.owned.Set(float64(len(e.Owned))) },
		OnFenced:    func(e relay.FencedEvent) { m.fenced.WithLabelValues(e.Op).Add(float64(e.Rows)) },
		OnTransaction: func(e relay.TransactionEvent) {
			m.txnTime.Observe(e.Duration.Seconds())
			switch {
			case e.Committed:
				m.txns.WithLabelValues("committed").Inc()
			case e.Fenced:
				m.txns.WithLabelValues("fenced").Inc()
			default:
				m.txns.WithLabelValues("aborted").Inc()
			}
		},
	}
}

// Describe and Collect make relayMetrics a collector of the database-side figures.
func (m *relayMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.backlogD
	ch <- m.oldestD
	ch <- m.parkedD
	ch <- m.replicasD
	ch <- m.scrapeErrD
}

func (m *relayMetrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := m.admin.Status(ctx)
	if err != nil {
		// A failed status read costs only its own series: the counters that explain the
		// failure (errors by kind, ...) must still be scraped.
		ch <- prometheus.MustNewConstMetric(m.scrapeErrD, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(m.scrapeErrD, prometheus.GaugeValue, 0)
	for _, s := range st.Shards {
		sh := strconv.Itoa(s.Shard)
		ch <- prometheus.MustNewConstMetric(m.backlogD, prometheus.GaugeValue, float64(s.Backlog), sh)
		ch <- prometheus.MustNewConstMetric(m.oldestD, prometheus.GaugeValue, s.OldestAge.Seconds(), sh)
	}
	for reason, n := range st.ParkedByReason {
		ch <- prometheus.MustNewConstMetric(m.parkedD, prometheus.GaugeValue, float64(n), string(reason))
	}
	ch <- prometheus.MustNewConstMetric(m.replicasD, prometheus.GaugeValue, float64(len(st.Replicas)))
}
