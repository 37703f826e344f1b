// Command watermill-relay is the Watermill peer of the relaybox benchmark: the outbox
// forwarder of Watermill (github.com/ThreeDotsLabs/watermill/components/forwarder)
// reading watermill-sql's Postgres table and publishing with watermill-kafka, the
// record key taken from the message's "key" metadata (per-key partitioning), acks=all.
//
// Environment: BENCH_DATABASE_URL, BENCH_SCHEMA (the Postgres schema holding the
// watermill_<topic> and watermill_offsets_<topic> tables), BENCH_FORWARDER_TOPIC,
// BENCH_KAFKA_BROKERS (comma-separated), and the tuning WATERMILL_POLL_INTERVAL
// (default 10ms) and WATERMILL_BATCH_SIZE (default 1000). It prints one line
// "BENCH_SETTINGS {json}" and "BENCH_READY" on stdout, and runs until SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "watermill-relay:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	poll, err := time.ParseDuration(env("WATERMILL_POLL_INTERVAL", "10ms"))
	if err != nil {
		return err
	}
	batch, err := strconv.Atoi(env("WATERMILL_BATCH_SIZE", "1000"))
	if err != nil {
		return err
	}
	schema, fwdTopic := os.Getenv("BENCH_SCHEMA"), env("BENCH_FORWARDER_TOPIC", "forwarder")
	brokers := strings.Split(os.Getenv("BENCH_KAFKA_BROKERS"), ",")

	pool, err := pgxpool.New(ctx, os.Getenv("BENCH_DATABASE_URL"))
	if err != nil {
		return err
	}
	defer pool.Close()
	logger := watermill.NewSlogLogger(nil)
	if os.Getenv("WATERMILL_DEBUG") == "" {
		logger = watermill.NopLogger{}
	}

	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), wsql.SubscriberConfig{
		ConsumerGroup: "bench",
		PollInterval:  poll,
		SchemaAdapter: wsql.DefaultPostgreSQLSchema{
			GenerateMessagesTableName: func(topic string) string { return pgx.Identifier{schema, "watermill_" + topic}.Sanitize() },
			SubscribeBatchSize:        batch,
		},
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{
			GenerateMessagesOffsetsTableName: func(topic string) string {
				return pgx.Identifier{schema, "watermill_offsets_" + topic}.Sanitize()
			},
		},
		InitializeSchema: false, // the harness created the tables before writing rows
	}, logger)
	if err != nil {
		return err
	}

	sc := kafka.DefaultSaramaSyncPublisherConfig()
	sc.Version = sarama.V3_6_0_0 // Kafka 4 refuses the default's old protocol versions
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Compression = sarama.CompressionSnappy // every system of the benchmark compresses alike
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers: brokers,
		Marshaler: kafka.NewWithPartitioningMarshaler(func(_ string, msg *message.Message) (string, error) {
			return msg.Metadata.Get("key"), nil
		}),
		OverwriteSaramaConfig: sc,
	}, logger)
	if err != nil {
		return err
	}
	defer pub.Close()

	fwd, err := forwarder.NewForwarder(sub, pub, logger, forwarder.Config{ForwarderTopic: fwdTopic, CloseTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	settings, _ := json.Marshal(map[string]any{
		"watermill": "v1.5.1", "watermill_sql": "v4.1.2 (pgx adapter, DefaultPostgreSQLSchema, DefaultPostgreSQLOffsetsAdapter)",
		"watermill_kafka": "v3.0.6 (sarama sync producer)", "forwarder": "components/forwarder",
		"producer_design": "watermill-kafka's Publisher is a sarama SyncProducer (its design; it has no asynchronous publisher): each Publish waits for its acks before the forwarder takes the next message",
		"compression":     sc.Producer.Compression.String(),
		"poll_interval":   poll.String(), "subscribe_batch_size": batch, "acks": "all",
		"partitioning":   "NewWithPartitioningMarshaler(key metadata), sarama hash partitioner",
		"sarama_version": sc.Version.String(), "idempotent": sc.Producer.Idempotent, "pool_max_conns": pool.Config().MaxConns,
	})
	fmt.Println("BENCH_SETTINGS " + string(settings))
	go func() {
		<-fwd.Running()
		fmt.Println("BENCH_READY")
	}()
	err = fwd.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
