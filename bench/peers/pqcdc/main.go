// Command pqcdc is the benchmark runner for Trendyol's go-pq-cdc-kafka: it streams the outbox
// table from an existing slot/publication (no snapshot) and produces one Kafka record per INSERT,
// key = aggregateid, value = payload bytes, acks=all. Contract: bench/peers/README.md.
//
// The connector config is generated as YAML (written to BENCH_RUN_DIR) and decoded into the
// library's own config struct, so the same source builds across library versions whose Go field
// names moved; the message mapper is the only code that touches the library's types.
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
	gokafka "github.com/segmentio/kafka-go"
	"gopkg.in/yaml.v3"
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
	batchSize := envInt("PQCDC_BATCH_SIZE", 20000)
	ticker := env("PQCDC_BATCH_TICKER", "20ms")
	metricPort := envInt("PQCDC_METRIC_PORT", freePort())

	cfgDoc := map[string]any{
		"cdc": map[string]any{
			"host":     env("BENCH_PG_HOST", "127.0.0.1"),
			"port":     port,
			"username": env("BENCH_PG_USER", "postgres"),
			"password": os.Getenv("BENCH_PG_PASSWORD"),
			"database": env("BENCH_PG_DB", "postgres"),
			// existing publication: the library reads its tables from pg_publication_tables
			"publication": map[string]any{"name": need("BENCH_PUBLICATION"), "createIfNotExists": false},
			"slot": map[string]any{
				"name":                        need("BENCH_SLOT"),
				"createIfNotExists":           false,
				"slotActivityCheckerInterval": 3000,
			},
			"snapshot": map[string]any{"enabled": false, "mode": "never"},
			"metric":   map[string]any{"port": metricPort},
		},
		"kafka": map[string]any{
			"brokers":                     brokers,
			"tableTopicMapping":           map[string]string{schema + "." + name: topic},
			"requiredAcks":                -1,
			"balancer":                    "Murmur2Balancer",
			"producerBatchSize":           batchSize,
			"producerBatchBytes":          strconv.Itoa(batchBytes/1024) + "kb",
			"producerBatchTickerDuration": ticker,
			"compression":                 0,
			"clientID":                    "bench-peer-pqcdc",
		},
	}
	raw, err := yaml.Marshal(cfgDoc)
	if err != nil {
		fail("config yaml: %v", err)
	}
	genPath := filepath.Join(runDir, "pqcdc-config.yml")
	if err := os.WriteFile(genPath, redact(raw), 0o600); err != nil {
		fail("write %s: %v", genPath, err)
	}
	var cfg config.Connector
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		fail("decode config into config.Connector: %v", err)
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
		"producerBatchTickerDuration":   ticker,
		"compression":                   "none",
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

func redact(y []byte) []byte {
	var out []string
	for _, l := range strings.Split(string(y), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "password:") {
			l = l[:strings.Index(l, "password:")] + "password: '*****'"
		}
		out = append(out, l)
	}
	return []byte(strings.Join(out, "\n"))
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
