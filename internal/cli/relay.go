package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

// kafkaOpts are the Kafka connection settings every Kafka-using command shares.
type kafkaOpts struct {
	brokers, tlsCA, saslMechanism, saslUser, saslPassword string
	tls, tlsInsecure                                      bool
	// allowPlaintext lets credentials cross the network unencrypted (SASL PLAIN
	// without TLS, registry basic auth over http://): refused otherwise.
	allowPlaintext bool
}

// allowPlaintextFlag is the flag that lets credentials cross the network in clear.
const allowPlaintextFlag = "--allow-plaintext-credentials"

func (f *flags) kafka(k *kafkaOpts) {
	f.str(&k.brokers, "brokers", "KAFKA_BROKERS", "", "Kafka seed brokers, comma-separated")
	f.boolean(&k.tls, "kafka-tls", "KAFKA_TLS", false, "connect to Kafka over TLS")
	f.str(&k.tlsCA, "kafka-tls-ca", "KAFKA_TLS_CA", "", "PEM file of the CA that signed the brokers' certificates (implies TLS)")
	f.boolean(&k.tlsInsecure, "kafka-tls-insecure", "KAFKA_TLS_INSECURE", false, "skip broker certificate verification (testing only)")
	f.str(&k.saslMechanism, "kafka-sasl-mechanism", "KAFKA_SASL_MECHANISM", "", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	f.str(&k.saslUser, "kafka-sasl-username", "KAFKA_SASL_USERNAME", "", "SASL username")
	f.secret(&k.saslPassword, "kafka-sasl-password", "KAFKA_SASL_PASSWORD", "SASL password")
	f.boolean(&k.allowPlaintext, "allow-plaintext-credentials", "RELAYBOX_ALLOW_PLAINTEXT_CREDENTIALS", false,
		"send credentials unencrypted: SASL PLAIN without TLS, registry basic auth over http:// (refused otherwise; local testing only)")
}

func (k *kafkaOpts) useTLS() bool { return k.tls || k.tlsCA != "" || k.tlsInsecure }

func (k *kafkaOpts) opts() ([]kgo.Opt, error) {
	if k.brokers == "" {
		return nil, errors.New("no Kafka brokers: set KAFKA_BROKERS or --brokers")
	}
	opts := []kgo.Opt{kgo.SeedBrokers(strings.Split(k.brokers, ",")...)}
	if strings.EqualFold(k.saslMechanism, "PLAIN") && !k.useTLS() && !k.allowPlaintext {
		return nil, errors.New("KAFKA_SASL_MECHANISM PLAIN without TLS sends the password in clear: set KAFKA_TLS (or --kafka-tls), " +
			"use SCRAM, or pass " + allowPlaintextFlag)
	}
	if k.useTLS() {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: k.tlsInsecure} //nolint:gosec // opt-in for tests
		if k.tlsCA != "" {
			pem, err := os.ReadFile(k.tlsCA)
			if err != nil {
				return nil, fmt.Errorf("KAFKA_TLS_CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("KAFKA_TLS_CA: no PEM certificate in %s", k.tlsCA)
			}
			cfg.RootCAs = pool
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	switch strings.ToUpper(k.saslMechanism) {
	case "":
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: k.saslUser, Pass: k.saslPassword}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: k.saslUser, Pass: k.saslPassword}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: k.saslUser, Pass: k.saslPassword}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("KAFKA_SASL_MECHANISM %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", k.saslMechanism)
	}
	return opts, nil
}

type registryOpts struct {
	url, user, password string
	timeout             time.Duration
	allowPlaintext      bool // commands without Kafka flags (schema) set it with allowPlaintext
}

// allowPlaintext defines --allow-plaintext-credentials for a command that has no Kafka
// flags (the Kafka flags define it for the others).
func (f *flags) allowPlaintext(v *bool) {
	f.boolean(v, "allow-plaintext-credentials", "RELAYBOX_ALLOW_PLAINTEXT_CREDENTIALS", false,
		"send registry basic auth over http:// (refused otherwise; local testing only)")
}

func (f *flags) registry(r *registryOpts) {
	f.conn(&r.url, "registry-url", "SCHEMA_REGISTRY_URL", "Confluent-compatible schema registry URL (Apicurio: http://host:8080/apis/ccompat/v7)")
	f.str(&r.user, "registry-username", "SCHEMA_REGISTRY_USERNAME", "", "registry basic-auth username")
	f.secret(&r.password, "registry-password", "SCHEMA_REGISTRY_PASSWORD", "registry basic-auth password")
	f.dur(&r.timeout, "registry-timeout", "SCHEMA_REGISTRY_TIMEOUT", relay.DefaultRegistryTimeout, "timeout of each registry call")
}

// check moves credentials in the URL's userinfo to user and password (so that no
// error text carries them), and refuses basic auth over http:// unless allowed.
func (r *registryOpts) check(allowPlaintext bool) error {
	u, err := url.Parse(r.url)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return errors.New("SCHEMA_REGISTRY_URL: want http(s)://host[:port][/path]")
	}
	if u.User != nil {
		if r.user == "" {
			r.user = u.User.Username()
			r.password, _ = u.User.Password()
		}
		u.User = nil
		r.url = u.String()
	}
	if (r.user != "" || r.password != "") && u.Scheme == "http" && !allowPlaintext {
		return errors.New("schema registry basic auth over http:// sends the password in clear: use https:// or pass " + allowPlaintextFlag)
	}
	return nil
}

type relayOpts struct {
	common
	kafka      kafkaOpts
	registry   registryOpts
	otlp       otlpOpts
	cfg        relay.Config
	metrics    string
	poolSize   int
	checkOnly  bool
	pprof      bool
	partitions int
	ceTopics   string
	// autoRegister is the --auto-register flag: relay.Config.DisableAutoRegister negated.
	autoRegister bool
}

func defineRelay(f *flags) *relayOpts {
	o := &relayOpts{}
	f.common(&o.common)
	f.kafka(&o.kafka)
	f.registry(&o.registry)
	c := &o.cfg
	f.boolean(&o.autoRegister, "auto-register", "RELAYBOX_AUTO_REGISTER", relay.DefaultAutoRegister, "register schemas missing from the registry (else such events park)")
	f.str(&c.ReplicaID, "replica-id", "RELAYBOX_REPLICA_ID", "", "this replica's name (default hostname-pid-random)")
	f.num(&c.BatchSize, "batch-size", "RELAYBOX_BATCH_SIZE", relay.DefaultBatchSize, "rows read per shard per batch")
	f.num(&c.MaxInFlightBatches, "max-inflight-batches", "RELAYBOX_MAX_INFLIGHT_BATCHES", relay.DefaultMaxInFlightBatches, "shards with a backlog reading and publishing at once (bounds memory)")
	f.dur(&c.PollInterval, "poll-interval", "RELAYBOX_POLL_INTERVAL", relay.DefaultPollInterval, "poll interval when no NOTIFY arrives")
	f.dur(&c.LeaseTTL, "lease-ttl", "RELAYBOX_LEASE_TTL", relay.DefaultLeaseTTL, "shard lease time to live")
	f.dur(&c.ShutdownGrace, "shutdown-grace", "RELAYBOX_SHUTDOWN_GRACE", relay.DefaultShutdownGrace, "on SIGTERM, how long batches in flight may wait for Kafka (leases are renewed meanwhile)")
	f.boolean(&c.ExactlyOnce, "exactly-once", "RELAYBOX_EXACTLY_ONCE", false, "publish each batch in a Kafka transaction: read_committed readers see every event once (docs/guarantees.md); every replica must use the same mode")
	f.str(&c.TransactionalIDPrefix, "transactional-id-prefix", "RELAYBOX_TRANSACTIONAL_ID_PREFIX", "", "exactly-once: prefix of the shard groups' transactional ids (default relaybox-<database system identifier>-<schema>)")
	f.str(&c.CommitLogTopic, "commit-log-topic", "RELAYBOX_COMMIT_LOG_TOPIC", "", "exactly-once: compacted topic recording what each transaction carried (default <prefix>.commits)")
	f.dur(&c.HeartbeatInterval, "heartbeat-interval", "RELAYBOX_HEARTBEAT_INTERVAL", 0, "lease renewal interval (default lease-ttl/5)")
	f.num(&c.MaxRecordBytes, "max-record-bytes", "RELAYBOX_MAX_RECORD_BYTES", relay.DefaultMaxRecordBytes, "largest record to produce; larger events park")
	f.str(&c.Compression, "compression", "RELAYBOX_COMPRESSION", relay.DefaultCompression, "compression of produced batches: snappy, lz4, zstd, gzip or none")
	f.dur(&c.Linger, "linger", "RELAYBOX_LINGER", relay.DefaultLinger, "how long a batch waits for more records (negative: send at once)")
	f.dur(&c.DeliveryTimeout, "delivery-timeout", "RELAYBOX_DELIVERY_TIMEOUT", 0, "fail records that wait longer for Kafka (0: never; non-zero can reorder a key when the broker fails)")
	f.dur(&c.Retention, "retention", "RELAYBOX_RETENTION", 0, "keep published rows this long (0: delete at once)")
	f.boolean(&c.AutoCreateTopics, "auto-create-topics", "RELAYBOX_AUTO_CREATE_TOPICS", false, "create missing topics instead of parking their events")
	f.num(&o.partitions, "topic-partitions", "RELAYBOX_TOPIC_PARTITIONS", relay.DefaultTopicPartitions, "partitions of auto-created topics")
	f.dur(&c.UnreadyAfter, "unready-after", "RELAYBOX_UNREADY_AFTER", relay.DefaultUnreadyAfter, "/readyz fails once a dependency has failed this long")
	f.str(&c.Channel, "channel", "RELAYBOX_CHANNEL", outbox.DefaultChannel, "LISTEN channel")
	f.boolean(&c.CloudEvents.Enabled, "cloudevents", "RELAYBOX_CLOUDEVENTS", false, "also write the CloudEvents Kafka binary-mode headers (ce_*, content-type) on every topic")
	f.str(&o.ceTopics, "cloudevents-topics", "RELAYBOX_CLOUDEVENTS_TOPICS", "", "write the CloudEvents headers on these topics only, comma-separated (instead of --cloudevents)")
	f.str(&c.CloudEvents.Source, "cloudevents-source", "RELAYBOX_CLOUDEVENTS_SOURCE", "", "ce_source of events written without a source (default /relaybox/<schema>)")
	f.conn(&c.CloudEvents.SchemaURL, "cloudevents-schema-url", "RELAYBOX_CLOUDEVENTS_SCHEMA_URL", "registry base URL of ce_dataschema as consumers reach it (default the registry URL, credentials dropped)")
	f.str(&o.metrics, "metrics-addr", "RELAYBOX_METRICS_ADDR", ":9090", "address for /metrics, /healthz, /readyz (empty: off)")
	f.boolean(&o.pprof, "pprof", "RELAYBOX_PPROF", false, "also serve Go's /debug/pprof/ on the metrics address (CPU and heap profiles)")
	f.num(&o.poolSize, "pool-size", "RELAYBOX_POOL_SIZE", 0, "Postgres connections (0: max-inflight-batches + 8, at least 16, so outcome writes and small batches do not queue behind the batch reads)")
	f.BoolVar(&o.checkOnly, "check", false, "check Postgres, Kafka and the registry, then exit")
	f.otlp(&o.otlp)
	return o
}

func registerAll() {
	defineRelay(newFlags("relay", nil))
	defineAdmin(newFlags("admin", nil))
	defineDLQ(newFlags("dlq", nil))
}

func runRelay(ctx context.Context, args []string, s *stdio) error {
	out := s.out
	f := newFlags("relay", s)
	o := defineRelay(f)
	if err := f.parse(args); err != nil {
		return err
	}
	o.cfg.TopicPartitions = int32(o.partitions)
	for _, t := range strings.Split(o.ceTopics, ",") {
		if t = strings.TrimSpace(t); t != "" {
			o.cfg.CloudEvents.Topics = append(o.cfg.CloudEvents.Topics, t)
		}
	}
	o.cfg.DisableAutoRegister = !o.autoRegister
	log, err := o.logger(s.err)
	if err != nil {
		return err
	}
	if o.registry.url == "" {
		return errors.New("no schema registry: set SCHEMA_REGISTRY_URL or --registry-url")
	}
	if err := o.registry.check(o.kafka.allowPlaintext); err != nil {
		return err
	}
	kopts, err := o.kafka.opts()
	if err != nil {
		return err
	}
	// --check fails at once if Postgres does not answer; the daemon waits for it below.
	if o.poolSize <= 0 {
		o.poolSize = relay.DefaultPoolSize(&o.cfg)
	}
	pool, err := o.poolPing(ctx, int32(o.poolSize), o.checkOnly)
	if err != nil {
		return err
	}
	defer pool.Close()
	tp, flush, err := o.otlp.tracerProvider(ctx, s, log)
	if err != nil {
		return err
	}
	defer flush()
	cfg := o.cfg
	cfg.Schema = o.schema
	cfg.TracerProvider = tp
	cfg.KafkaOpts = kopts
	cfg.RegistryURL, cfg.RegistryUsername, cfg.RegistryPassword, cfg.RegistryTimeout = o.registry.url, o.registry.user, o.registry.password, o.registry.timeout
	cfg.Logger = log
	reg, m, err := newRelayRegistry(pool, o.schema)
	if err != nil {
		return err
	}
	m.Install(&cfg)
	r, err := relay.New(pool, &cfg)
	if err != nil {
		return err
	}
	if o.checkOnly {
		if err := r.Check(ctx); err != nil {
			return err
		}
		fmt.Fprintln(out, "ok: postgres, kafka and the schema registry answer; schema is migrated")
		return nil
	}
	if o.metrics != "" {
		ready := func() error { // error texts may carry a URL: scrubbed
			if err := r.Ready(); err != nil {
				return errors.New(s.secrets.Error(err))
			}
			return nil
		}
		srv, err := serveOps(o.metrics, reg, ready, o.pprof)
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("serving /metrics, /healthz, /readyz", "addr", srv.Addr, "pprof", o.pprof)
	}
	// Run waits, unready, for a dependency that does not answer (a restart during an
	// outage); only a schema that is not migrated ends it at once.
	return r.Run(ctx)
}

func serveOps(addr string, reg *prometheus.Registry, ready func() error, profiling bool) (*http.Server, error) {
	mux := http.NewServeMux()
	if profiling {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	srv := &http.Server{Addr: ln.Addr().String(), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}
