package metrics

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relaybox/relaybox/consumer"
)

// ConsumerOpts configures [NewConsumer]. The zero value (or nil) is usable.
type ConsumerOpts struct {
	// Namespace is the first part of every metric name. Defaults to "relaybox"
	// (DefaultNamespace): the dashboard and alerts in deploy/ expect it.
	Namespace string
	// Registerer receives the collectors. Defaults to a new registry of the
	// Consumer's own, which Handler serves.
	Registerer prometheus.Registerer
	// Gatherer is what Handler serves. Defaults to Registerer when it is also a
	// Gatherer (a *prometheus.Registry), else prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// HandlerBuckets are the buckets of the handler duration histogram, in
	// seconds. Defaults to 0.5 ms doubling up to about 16 s.
	HandlerBuckets []float64
}

// Record outcomes, the outcome label of <namespace>_consumer_records_total.
const (
	OutcomeApplied    = "applied"     // the handler's transaction committed
	OutcomeDuplicate  = "duplicate"   // already applied by the group: skipped
	OutcomeSkipped    = "skipped"     // no handler for its type (SkipUnknown)
	OutcomeDeadLetter = "dead_letter" // produced to the dead-letter topic
)

// deadLetterReasons are the consumer's Reason* constants, whose series exist from
// the start.
var deadLetterReasons = []string{consumer.ReasonMalformed, consumer.ReasonUnknownSchema, consumer.ReasonIncompatibleSchema,
	consumer.ReasonBadBody, consumer.ReasonUnknownType, consumer.ReasonPermanent, consumer.ReasonExhausted}

// Consumer turns consumers' hooks into Prometheus collectors. Create it with
// [NewConsumer], then [Consumer.Install] it into each consumer.Config given to
// consumer.New; every series carries the consumer's group as the group label, so
// that one Consumer serves several consumers of a process.
type Consumer struct {
	r         registry
	records   *prometheus.CounterVec
	dead      *prometheus.CounterVec
	retries   *prometheus.CounterVec
	handler   *prometheus.HistogramVec
	lag       *prometheus.GaugeVec
	batchSize *prometheus.HistogramVec
	errors    *prometheus.CounterVec
}

// NewConsumer creates the consumer's collectors and registers them. It fails if
// one of their names is already registered (two Consumers on one Registerer need
// different Namespaces; one Consumer serves any number of consumers).
func NewConsumer(opts *ConsumerOpts) (*Consumer, error) {
	var o ConsumerOpts
	if opts != nil {
		o = *opts
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if len(o.HandlerBuckets) == 0 {
		o.HandlerBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)
	}
	ns := o.Namespace
	counterVec := func(n, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "consumer", Name: n, Help: help}, labels)
	}
	m := &Consumer{
		r: newRegistry(o.Registerer, o.Gatherer),
		records: counterVec("records_total", "Records this consumer is done with, by outcome: "+OutcomeApplied+" (the handler's "+
			"transaction committed), "+OutcomeDuplicate+" (already applied by the group: skipped), "+OutcomeSkipped+
			" (no handler for its type), "+OutcomeDeadLetter+" (produced to the dead-letter topic).", "group", "topic", "outcome"),
		dead: counterVec("dead_letters_total", "Records produced to their dead-letter topic, by reason.", "group", "topic", "reason"),
		retries: counterVec("retries_total", "Handler attempts that failed and will be retried after a backoff.",
			"group", "topic", "event_type"),
		handler: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: "consumer", Name: "handler_duration_seconds",
			Help: "Time of one handler call, successful or not (not its transaction's commit).", Buckets: o.HandlerBuckets},
			[]string{"group", "topic", "event_type"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "consumer", Name: "lag",
			Help: "Records of a partition this consumer owns not yet processed, from the last fetch's high watermark."},
			[]string{"group", "topic", "partition"}),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: "consumer", Name: "batch_size",
			Help: "Records per batch-mode transaction.", Buckets: prometheus.ExponentialBuckets(1, 2, 12)}, []string{"group", "topic"}),
		errors: counterVec("errors_total", "Infrastructure failures, retried without limit, by kind ("+string(consumer.ErrorPostgres)+", "+
			string(consumer.ErrorRegistry)+", "+string(consumer.ErrorKafka)+", "+string(consumer.ErrorCommit)+").", "group", "kind"),
	}
	if err := m.r.register(m.records, m.dead, m.retries, m.handler, m.lag, m.batchSize, m.errors); err != nil {
		return nil, err
	}
	return m, nil
}

// Install adds the Consumer's hooks to cfg.Hooks (a hook already set there is
// still called, before the Consumer's), labelled with cfg.Group, and creates the
// series of cfg.Topics at 0 so that rates over them are 0 rather than absent. Call
// it before consumer.New(pool, cfg).
func (m *Consumer) Install(cfg *consumer.Config) {
	h := m.Hooks(cfg.Group)
	c := &cfg.Hooks
	c.OnProcessed = chain(c.OnProcessed, h.OnProcessed)
	c.OnDuplicate = chain(c.OnDuplicate, h.OnDuplicate)
	c.OnSkipped = chain(c.OnSkipped, h.OnSkipped)
	c.OnRetry = chain(c.OnRetry, h.OnRetry)
	c.OnDeadLetter = chain(c.OnDeadLetter, h.OnDeadLetter)
	c.OnHandlerLatency = chain(c.OnHandlerLatency, h.OnHandlerLatency)
	c.OnLag = chain(c.OnLag, h.OnLag)
	c.OnBatch = chain(c.OnBatch, h.OnBatch)
	c.OnRevoked = chain(c.OnRevoked, h.OnRevoked)
	c.OnError = chain(c.OnError, h.OnError)
	for _, t := range cfg.Topics {
		for _, oc := range []string{OutcomeApplied, OutcomeDuplicate, OutcomeSkipped, OutcomeDeadLetter} {
			m.records.WithLabelValues(cfg.Group, t, oc)
		}
		for _, r := range deadLetterReasons {
			m.dead.WithLabelValues(cfg.Group, t, r)
		}
	}
	for _, k := range []consumer.ErrorKind{consumer.ErrorPostgres, consumer.ErrorRegistry, consumer.ErrorKafka, consumer.ErrorCommit} {
		m.errors.WithLabelValues(cfg.Group, string(k))
	}
}

// Hooks returns the hooks that feed the Consumer's collectors for the consumer of
// group, for a caller that combines hooks itself. [Consumer.Install] is simpler.
func (m *Consumer) Hooks(group string) consumer.Hooks {
	outcome := func(oc string) func(consumer.RecordEvent) {
		return func(e consumer.RecordEvent) { m.records.WithLabelValues(group, e.Topic, oc).Inc() }
	}
	return consumer.Hooks{
		OnProcessed: outcome(OutcomeApplied),
		OnDuplicate: outcome(OutcomeDuplicate),
		OnSkipped:   outcome(OutcomeSkipped),
		OnRetry: func(e consumer.RetryEvent) {
			m.retries.WithLabelValues(group, e.Topic, e.EventType).Inc()
		},
		OnDeadLetter: func(e consumer.DeadLetterEvent) {
			m.records.WithLabelValues(group, e.Topic, OutcomeDeadLetter).Inc()
			m.dead.WithLabelValues(group, e.Topic, e.Reason).Inc()
		},
		OnHandlerLatency: func(e consumer.HandlerEvent) {
			m.handler.WithLabelValues(group, e.Topic, e.EventType).Observe(e.Duration.Seconds())
		},
		OnLag: func(e consumer.LagEvent) {
			m.lag.WithLabelValues(group, e.Topic, strconv.Itoa(int(e.Partition))).Set(float64(e.Lag))
		},
		OnBatch: func(e consumer.BatchEvent) {
			m.batchSize.WithLabelValues(group, e.Topic).Observe(float64(e.Records))
		},
		OnRevoked: func(e consumer.RevokedEvent) {
			for t, ps := range e.Partitions {
				for _, p := range ps {
					m.lag.DeleteLabelValues(group, t, strconv.Itoa(int(p)))
				}
			}
		},
		OnError: func(e consumer.ErrorEvent) { m.errors.WithLabelValues(group, string(e.Kind)).Inc() },
	}
}

// Handler serves the Gatherer (by default the Consumer's own registry) for
// Prometheus to scrape.
func (m *Consumer) Handler() http.Handler { return m.r.handler() }
