// Command pqcdc is the benchmark runner for Trendyol's go-pq-cdc-kafka: it streams the outbox
// table from an existing slot/publication (no snapshot) and produces one Kafka record per INSERT,
// key = aggregateid, value = payload bytes, acks=all. Contract: bench/peers/README.md.
//
// The connector config is built as the library's own examples build it (typed Go) and written,
// password hidden, to BENCH_RUN_DIR/pqcdc-config.json.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	cdc "github.com/Trendyol/go-pq-cdc-kafka"
	"github.com/Trendyol/go-pq-cdc-kafka/config"
	cdcconfig "github.com/Trendyol/go-pq-cdc/config"
	"github.com/Trendyol/go-pq-cdc/pq/publication"
	"github.com/Trendyol/go-pq-cdc/pq/slot"
	gokafka "github.com/segmentio/kafka-go"
)

var (
	produced  atomic.Int64
	badRows   atomic.Int64
	benchOut  *os.File
	keyColumn = "aggregateid"
	valColumn = "payload"
)

func main() {
	// The library prints its config and may log to stdout; stdout belongs to BENCH_* lines, so keep
	// the real stdout for those and point fd 1 at stderr for everything else.
	fd, err := syscall.Dup(1)
	if err != nil {
		fail("dup stdout: %v", err)
	}
	benchOut = os.NewFile(uintptr(fd), "bench-stdout")
	if err := syscall.Dup3(2, 1, 0); err != nil {
		fail("redirect stdout: %v", err)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))

	table := need("BENCH_TABLE")
	schema, name, ok := strings.Cut(table, ".")
	if !ok {
		schema, name = "public", table
	}
	topic := need("BENCH_TOPIC")
	brokers := strings.Split(need("BENCH_KAFKA_BROKERS"), ",")
	runDir := need("BENCH_RUN_DIR")
	port, _ := strconv.Atoi(env("BENCH_PG_PORT", "5432"))

	partitions := topicPartitions(brokers, topic)
	// Batches: the library flushes synchronously from the replication listener, so bigger batches
	// mean fewer stalls. kafka-go sends one record batch per partition per flush and the broker
	// caps a record batch at message.max.bytes (1 MiB default): size the byte limit so each
	// partition's share stays under ~768 KiB.
	batchBytes := envInt("PQCDC_BATCH_BYTES", min(max(partitions, 1)*768*1024, 32<<20))
	// Its README's benchmark (benchmark/go-pq-cdc-kafka) runs batches of 10000 records
	// with a 100 ms ticker; those are the defaults here.
	batchSize := envInt("PQCDC_BATCH_SIZE", 10000)
	ticker, err := time.ParseDuration(env("PQCDC_BATCH_TICKER", "100ms"))
	if err != nil {
		fail("PQCDC_BATCH_TICKER: %v", err)
	}
	// Kafka's codes: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd. snappy: relaybox's default,
	// so every system of the benchmark compresses alike.
	compression := envInt("PQCDC_COMPRESSION", 2)
	metricPort := envInt("PQCDC_METRIC_PORT", freePort())

	// The connector's configuration as the library's own examples build it (typed Go;
	// its README: config.Connector{CDC: cdcconfig.Config{...}, Kafka: config.Kafka{...}}).
	// Decoding YAML into it fails: slot.Config.SlotActivityCheckerInterval is a
	// time.Duration the library multiplies by time.Millisecond, so its documented value
	// 3000 is a bare number, which yaml.v3 refuses for a Duration.
	var cfg config.Connector
	cfg.CDC = cdcconfig.Config{
		Host:     env("BENCH_PG_HOST", "127.0.0.1"),
		Port:     port,
		Username: env("BENCH_PG_USER", "postgres"),
		Password: os.Getenv("BENCH_PG_PASSWORD"),
		Database: env("BENCH_PG_DB", "postgres"),
		// The harness's publication and slot, used as they are: the library reads the
		// publication's tables from pg_publication_tables.
		Publication: publication.Config{Name: need("BENCH_PUBLICATION"), CreateIfNotExists: false,
			Tables: publication.Tables{{Schema: schema, Name: name, ReplicaIdentity: publication.ReplicaIdentityDefault}}},
		Slot:     slot.Config{Name: need("BENCH_SLOT"), CreateIfNotExists: false, SlotActivityCheckerInterval: 3000},
		Snapshot: cdcconfig.SnapshotConfig{Enabled: false},
		Metric:   cdcconfig.MetricConfig{Port: metricPort},
		Logger:   cdcconfig.LoggerConfig{LogLevel: slog.LevelInfo},
	}
	cfg.Kafka = config.Kafka{
		Brokers:                     brokers,
		TableTopicMapping:           map[string]string{schema + "." + name: topic},
		RequiredAcks:                -1,
		Balancer:                    "Murmur2Balancer",
		ProducerBatchSize:           batchSize,
		ProducerBatchBytes:          strconv.Itoa(batchBytes/1024) + "kb",
		ProducerBatchTickerDuration: ticker,
		Compression:                 int8(compression),
		ClientID:                    "bench-peer-pqcdc",
	}
	genPath := filepath.Join(runDir, "pqcdc-config.json")
	shown := cfg
	shown.CDC.Password = "*****"
	if raw, err := json.MarshalIndent(shown, "", "  "); err == nil {
		if err := os.WriteFile(genPath, raw, 0o600); err != nil {
			fail("write %s: %v", genPath, err)
		}
	}

	settings := map[string]any{
		"peer":                          "pqcdc",
		"library":                       moduleVersion("github.com/Trendyol/go-pq-cdc-kafka"),
		"core":                          moduleVersion("github.com/Trendyol/go-pq-cdc"),
		"kafka_go":                      moduleVersion("github.com/segmentio/kafka-go"),
		"go":                            strings.TrimPrefix(runtimeVersion(), "go"),
		"requiredAcks":                  -1,
		"balancer":                      "Murmur2Balancer (Kafka-compatible key hash)",
		"producerBatchSize":             batchSize,
		"producerBatchBytes":            batchBytes,
		"producerBatchTickerDuration":   ticker.String(),
		"compression":                   []string{"none", "gzip", "snappy", "lz4", "zstd"}[compression],
		"topic_partitions":              partitions,
		"snapshot":                      "disabled",
		"slot_createIfNotExists":        false,
		"publication_createIfNotExists": false,
		"generated_config":              genPath,
	}
	js, _ := json.Marshal(settings)
	fmt.Fprintf(benchOut, "BENCH_SETTINGS %s\n", js)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	connector, err := cdc.NewConnector(ctx, cfg, handler)
	if err != nil {
		fail("new connector: %v", err)
	}

	go func() {
		if err := connector.WaitUntilReady(ctx); err == nil {
			fmt.Fprintln(benchOut, "BENCH_READY")
		}
	}()
	go func() {
		var last int64
		for range time.Tick(5 * time.Second) {
			n := produced.Load()
			slog.Info("bench progress", "handed_to_producer", n, "rate_per_s", (n-last)/5, "bad_rows", badRows.Load())
			last = n
		}
	}()

	// The core library traps SIGTERM/SIGINT itself and returns from Start; we then Close (which
	// flushes the pending batch). A watchdog keeps the exit within the harness's ~10 s.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var signalled atomic.Bool
	go func() {
		<-sigs
		signalled.Store(true)
		slog.Info("signal received: stopping")
		time.AfterFunc(8*time.Second, func() {
			slog.Error("shutdown took over 8 s: exiting")
			os.Exit(1)
		})
	}()

	connector.Start(ctx)
	slog.Info("connector stopped; closing")
	connector.Close()
	slog.Info("closed", "handed_to_producer", produced.Load())
	if !signalled.Load() {
		time.Sleep(100 * time.Millisecond) // a signal may be a moment behind the library's own handler
		if !signalled.Load() {
			fail("connector stopped without a signal (see the log above)")
		}
	}
}

// handler maps one decoded row to one Kafka record: key = aggregateid, value = payload bytes.
func handler(msg *cdc.Message) []gokafka.Message {
	if !msg.Type.IsInsert() || msg.NewData == nil {
		return nil
	}
	key, ok := msg.NewData[keyColumn].(string)
	if !ok {
		badRows.Add(1)
		slog.Error("row without text aggregateid", "type", fmt.Sprintf("%T", msg.NewData[keyColumn]))
		return nil
	}
	val, err := rawBytes(msg.NewData[valColumn])
	if err != nil {
		badRows.Add(1)
		slog.Error("payload", "error", err)
		return nil
	}
	produced.Add(1)
	return []gokafka.Message{{Key: []byte(key), Value: val}}
}

// rawBytes returns the bytea column as the original bytes. pgoutput sends columns in text
// format; the core library decodes them with pgx's type map, which turns bytea into []byte. A
// string would be the undecoded text form ("\x" + hex), handled in case a version skips decoding.
func rawBytes(v any) ([]byte, error) {
	switch b := v.(type) {
	case []byte:
		return b, nil
	case string:
		if strings.HasPrefix(b, `\x`) {
			return hex.DecodeString(b[2:])
		}
		return nil, fmt.Errorf("bytea arrived as a string not in hex form (%d bytes)", len(b))
	default:
		return nil, fmt.Errorf("bytea arrived as %T", v)
	}
}

// topicPartitions asks the cluster how many partitions the topic has (for batch sizing).
func topicPartitions(brokers []string, topic string) int {
	for _, b := range brokers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := (&gokafka.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", b)
		cancel()
		if err != nil {
			continue
		}
		parts, err := conn.ReadPartitions(topic)
		conn.Close()
		if err == nil && len(parts) > 0 {
			return len(parts)
		}
	}
	slog.Warn("could not read the topic's partitions; assuming 1", "topic", topic)
	return 1
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 18089
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func moduleVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path == path {
			if d.Replace != nil {
				return d.Version + " => " + d.Replace.Path + " " + d.Replace.Version
			}
			return d.Version
		}
	}
	return "unknown"
}

func runtimeVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envInt(k string, def int) int {
	if v := os.Getenv(k); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fail("%s=%q is not an integer", k, v)
		}
		return n
	}
	return def
}

func need(k string) string {
	v := os.Getenv(k)
	if v == "" {
		fail("%s is not set", k)
	}
	return v
}

func fail(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "pqcdc runner: "+f+"\n", a...)
	os.Exit(1)
}
