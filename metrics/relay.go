package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relaybox/relaybox/relay"
)

// DefaultStatusTimeout is RelayOpts.StatusTimeout's default.
const DefaultStatusTimeout = 5 * time.Second

// RelayOpts configures [NewRelay]. The zero value (or nil) is usable.
type RelayOpts struct {
	// Namespace is the first part of every metric name. Defaults to "relaybox"
	// (DefaultNamespace): the dashboard and alerts in deploy/ expect it.
	Namespace string
	// Registerer receives the collectors. Defaults to a new registry of the Relay's
	// own, which Handler serves.
	Registerer prometheus.Registerer
	// Gatherer is what Handler serves. Defaults to Registerer when it is also a
	// Gatherer (a *prometheus.Registry), else prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// Pool, when set, adds the status collector: at each scrape one query reads the
	// outbox's backlog and oldest age per shard, the parked events by reason and the
	// live replicas, so that every replica reports the same figures. A failed query
	// costs only those series, and sets <namespace>_scrape_error to 1.
	Pool *pgxpool.Pool
	// Schema holds relaybox's tables, for the status collector. Defaults to
	// "relaybox".
	Schema string
	// StatusTimeout bounds the status query. Defaults to 5s (DefaultStatusTimeout).
	StatusTimeout time.Duration
}

// Transaction outcomes, the outcome label of <namespace>_relay_transactions_total.
const (
	TxnCommitted = "committed"
	TxnAborted   = "aborted"
	TxnFenced    = "fenced"
)

// Relay turns a relay's hooks into Prometheus collectors. Create it with
// [NewRelay], then [Relay.Install] it into the relay.Config given to relay.New.
type Relay struct {
	r          registry
	published  prometheus.Counter
	latency    prometheus.Histogram
	batchSize  prometheus.Histogram
	batchTime  prometheus.Histogram
	stageTime  *prometheus.HistogramVec
	readTime   prometheus.Histogram
	errors     *prometheus.CounterVec
	parked     *prometheus.CounterVec
	owned      prometheus.Gauge
	leasesLost prometheus.Counter
	fenced     *prometheus.CounterVec
	txns       *prometheus.CounterVec
	txnTime    prometheus.Histogram
	mode       *prometheus.GaugeVec
}

// NewRelay creates the relay's collectors and registers them. It fails if one of
// their names is already registered (two Relays on one Registerer need different
// Namespaces).
func NewRelay(opts *RelayOpts) (*Relay, error) {
	var o RelayOpts
	if opts != nil {
		o = *opts
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	ns := o.Namespace
	counter := func(n, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "relay", Name: n, Help: help})
	}
	histogram := func(n, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: "relay", Name: n, Help: help, Buckets: buckets})
	}
	counterVec := func(n, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "relay", Name: n, Help: help}, labels)
	}
	seconds := prometheus.ExponentialBuckets(0.001, 2, 16)
	m := &Relay{
		r:         newRegistry(o.Registerer, o.Gatherer),
		published: counter("published_total", "Events acked by Kafka and removed from the outbox (or marked, in retention mode) by this replica."),
		latency: histogram("publish_latency_seconds", "Time from an event's created_at (now() of the transaction that wrote it: "+
			"its start, not its commit) to its Kafka ack.", seconds),
		batchSize: histogram("batch_size", "Rows read per batch.", prometheus.ExponentialBuckets(1, 2, 14)),
		readTime: histogram("read_seconds", "Time of a batch's read query (a shard's next rows, with the wait for a pool connection); "+
			"should not grow with the backlog.", prometheus.ExponentialBuckets(0.0001, 2, 16)),
		batchTime: histogram("batch_seconds", "Time from a batch's read to its outcome's commit.", seconds),
		stageTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: "relay", Name: "batch_stage_seconds",
			Help: "A batch's time by step (relay.BatchStages): slot_wait, read, build, produce (in exactly-once mode until the " +
				"transaction's end), record.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, []string{"stage"}),
		errors: counterVec("errors_total", "Failures by kind ("+string(relay.ErrorKafka)+", "+string(relay.ErrorRegistry)+", "+
			string(relay.ErrorPostgres)+", "+string(relay.ErrorLease)+").", "kind"),
		parked: counterVec("parked_events_total", "Events parked by this replica, by reason.", "reason"),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: "relay", Name: "owned_shards",
			Help: "Shards this replica holds the lease of."}),
		leasesLost: counter("leases_lost_total", "Drains of a shard stopped because this replica lost the shard's lease."),
		fenced: counterVec("fenced_writes_total", "Rows (or, for op=\"kafka transaction\", transactions) this replica's writes left "+
			"alone because the lease had passed to another owner.", "op"),
		txns: counterVec("transactions_total", "Kafka transactions ended in exactly-once mode, by outcome ("+TxnCommitted+", "+
			TxnAborted+", "+TxnFenced+").", "outcome"),
		txnTime: histogram("transaction_seconds", "Time from a transaction's begin to its end (exactly-once mode).", seconds),
		mode: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "relay", Name: "mode",
			Help: "1 for this replica's mode (" + relay.ModeAtLeastOnce + " or " + relay.ModeExactlyOnce + ")."}, []string{"mode"}),
	}
	cs := []prometheus.Collector{m.published, m.latency, m.batchSize, m.batchTime, m.stageTime, m.readTime, m.errors, m.parked, m.owned,
		m.leasesLost, m.fenced, m.txns, m.txnTime, m.mode}
	if o.Pool != nil {
		sc, err := newStatusCollector(ns, o)
		if err != nil {
			return nil, err
		}
		cs = append(cs, sc)
	}
	if err := m.r.register(cs...); err != nil {
		return nil, err
	}
	// Series that exist from the start: a rate over them is 0, not absent.
	for _, k := range relay.ErrorKinds() {
		m.errors.WithLabelValues(string(k))
	}
	for _, oc := range []string{TxnCommitted, TxnAborted, TxnFenced} {
		m.txns.WithLabelValues(oc)
	}
	return m, nil
}

// Install adds the Relay's hooks to cfg.Hooks (a hook already set there is still
// called, before the Relay's) and sets the mode gauge from cfg.ExactlyOnce. Call it
// before relay.New(pool, cfg).
func (m *Relay) Install(cfg *relay.Config) {
	h := m.Hooks()
	c := &cfg.Hooks
	c.OnBatch = chain(c.OnBatch, h.OnBatch)
	c.OnRead = chain(c.OnRead, h.OnRead)
	c.OnPublished = chain(c.OnPublished, h.OnPublished)
	c.OnError = chain(c.OnError, h.OnError)
	c.OnParked = chain(c.OnParked, h.OnParked)
	c.OnShards = chain(c.OnShards, h.OnShards)
	c.OnLease = chain(c.OnLease, h.OnLease)
	c.OnFenced = chain(c.OnFenced, h.OnFenced)
	c.OnTransaction = chain(c.OnTransaction, h.OnTransaction)
	m.mode.Reset()
	if cfg.ExactlyOnce {
		m.mode.WithLabelValues(relay.ModeExactlyOnce).Set(1)
	} else {
		m.mode.WithLabelValues(relay.ModeAtLeastOnce).Set(1)
	}
}

// Hooks returns the hooks that feed the Relay's collectors, for a caller that
// combines hooks itself. [Relay.Install] is simpler.
func (m *Relay) Hooks() relay.Hooks {
	return relay.Hooks{
		OnBatch: func(e relay.BatchEvent) {
			m.batchSize.Observe(float64(e.Read))
			m.batchTime.Observe(e.Duration.Seconds())
			for _, st := range []struct {
				name string
				d    time.Duration
			}{{"slot_wait", e.Stages.SlotWait}, {"read", e.Stages.Read}, {"build", e.Stages.Build},
				{"produce", e.Stages.Produce}, {"record", e.Stages.Record}} {
				m.stageTime.WithLabelValues(st.name).Observe(st.d.Seconds())
			}
			m.published.Add(float64(e.Published))
		},
		OnRead:      func(e relay.ReadEvent) { m.readTime.Observe(e.Duration.Seconds()) },
		OnPublished: func(e relay.PublishedEvent) { m.latency.Observe(e.Latency.Seconds()) },
		OnError:     func(e relay.ErrorEvent) { m.errors.WithLabelValues(string(e.Kind)).Inc() },
		OnParked:    func(e relay.ParkEvent) { m.parked.WithLabelValues(string(e.Reason)).Inc() },
		OnShards:    func(e relay.ShardsEvent) { m.owned.Set(float64(len(e.Owned))) },
		OnLease: func(e relay.LeaseEvent) {
			if !e.Acquired {
				m.leasesLost.Inc()
			}
		},
		OnFenced: func(e relay.FencedEvent) { m.fenced.WithLabelValues(e.Op).Add(float64(e.Rows)) },
		OnTransaction: func(e relay.TransactionEvent) {
			m.txnTime.Observe(e.Duration.Seconds())
			switch {
			case e.Committed:
				m.txns.WithLabelValues(TxnCommitted).Inc()
			case e.Fenced:
				m.txns.WithLabelValues(TxnFenced).Inc()
			default:
				m.txns.WithLabelValues(TxnAborted).Inc()
			}
		},
	}
}

// Handler serves the Gatherer (by default the Relay's own registry) for Prometheus
// to scrape.
func (m *Relay) Handler() http.Handler { return m.r.handler() }

// statusCollector reads the outbox's status from Postgres at each scrape.
type statusCollector struct {
	admin                                      *relay.Admin
	timeout                                    time.Duration
	backlog, oldest, parked, replicas, scrapeE *prometheus.Desc
}

func newStatusCollector(ns string, o RelayOpts) (*statusCollector, error) {
	if o.StatusTimeout <= 0 {
		o.StatusTimeout = DefaultStatusTimeout
	}
	admin, err := relay.NewAdmin(o.Pool, &relay.AdminConfig{Schema: o.Schema})
	if err != nil {
		return nil, err
	}
	return &statusCollector{
		admin: admin, timeout: o.StatusTimeout,
		backlog: prometheus.NewDesc(prometheus.BuildFQName(ns, "outbox", "backlog"), "Unpublished, unparked events per shard.", []string{"shard"}, nil),
		oldest: prometheus.NewDesc(prometheus.BuildFQName(ns, "outbox", "oldest_unpublished_seconds"),
			"Age of the oldest unpublished event per shard.", []string{"shard"}, nil),
		parked:   prometheus.NewDesc(prometheus.BuildFQName(ns, "outbox", "parked"), "Parked events by reason.", []string{"reason"}, nil),
		replicas: prometheus.NewDesc(prometheus.BuildFQName(ns, "relay", "live_replicas"), "Relay replicas with a live heartbeat.", nil, nil),
		scrapeE: prometheus.NewDesc(prometheus.BuildFQName(ns, "", "scrape_error"), "1 when this scrape could not read the outbox's "+
			"status from Postgres (its backlog, oldest age, parked and replica series are missing from this scrape), else 0.", nil, nil),
	}, nil
}

func (s *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.backlog
	ch <- s.oldest
	ch <- s.parked
	ch <- s.replicas
	ch <- s.scrapeE
}

func (s *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	st, err := s.admin.Status(ctx)
	if err != nil {
		// A failed status read costs only its own series: the counters that explain
		// the failure (errors by kind, ...) must still be scraped.
		ch <- prometheus.MustNewConstMetric(s.scrapeE, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(s.scrapeE, prometheus.GaugeValue, 0)
	for _, sh := range st.Shards {
		l := strconv.Itoa(sh.Shard)
		ch <- prometheus.MustNewConstMetric(s.backlog, prometheus.GaugeValue, float64(sh.Backlog), l)
		ch <- prometheus.MustNewConstMetric(s.oldest, prometheus.GaugeValue, sh.OldestAge.Seconds(), l)
	}
	for reason, n := range st.ParkedByReason {
		ch <- prometheus.MustNewConstMetric(s.parked, prometheus.GaugeValue, float64(n), string(reason))
	}
	ch <- prometheus.MustNewConstMetric(s.replicas, prometheus.GaugeValue, float64(len(st.Replicas)))
}
