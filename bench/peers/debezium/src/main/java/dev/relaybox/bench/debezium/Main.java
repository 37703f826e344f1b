package dev.relaybox.bench.debezium;

import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArraySerializer;

import io.debezium.embedded.ClientProvided;
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.Header;
import io.debezium.engine.format.KeyValueHeaderChangeEventFormat;

/**
 * Benchmark runner: Debezium's PostgreSQL connector with the Outbox Event Router, hosted in the
 * Debezium embedded (async) engine, with a Kafka producer sink that behaves like Debezium Server's
 * Kafka sink: send the whole batch, wait for every acknowledgement, then mark the batch processed
 * (offsets, and so the slot's confirmed LSN, only move past records Kafka has acknowledged).
 *
 * Configuration comes from the BENCH_* environment (see bench/peers/README.md); tuning knobs can be
 * overridden with DBZ_* variables. Logs go to stderr; stdout carries only BENCH_SETTINGS and
 * BENCH_READY.
 */
public final class Main {

    private static final String DEBEZIUM_VERSION = "3.6.1.Final";

    public static void main(String[] args) throws Exception {
        String pgHost = env("BENCH_PG_HOST", "127.0.0.1");
        String pgPort = env("BENCH_PG_PORT", "5432");
        String pgUser = env("BENCH_PG_USER", "postgres");
        String pgPassword = env("BENCH_PG_PASSWORD", "");
        String pgDb = env("BENCH_PG_DB", "postgres");
        String table = required("BENCH_TABLE");
        String slot = required("BENCH_SLOT");
        String publication = required("BENCH_PUBLICATION");
        String brokers = required("BENCH_KAFKA_BROKERS");
        String topic = required("BENCH_TOPIC");
        Path runDir = Path.of(required("BENCH_RUN_DIR"));

        // Tuning (defaults chosen for throughput on a 2-core box; see README).
        String maxBatchSize = env("DBZ_MAX_BATCH_SIZE", "8192");
        String maxQueueSize = env("DBZ_MAX_QUEUE_SIZE", "65536");
        String pollIntervalMs = env("DBZ_POLL_INTERVAL_MS", "10");
        String offsetFlushMs = env("DBZ_OFFSET_FLUSH_INTERVAL_MS", "5000");
        String snapshotMode = env("DBZ_SNAPSHOT_MODE", "no_data");
        String lingerMs = env("DBZ_PRODUCER_LINGER_MS", "5");
        String batchSize = env("DBZ_PRODUCER_BATCH_SIZE", "262144");
        String bufferMemory = env("DBZ_PRODUCER_BUFFER_MEMORY", "134217728");
        String compression = env("DBZ_PRODUCER_COMPRESSION", "snappy");
        String maxInFlight = env("DBZ_PRODUCER_MAX_IN_FLIGHT", "5");

        Properties props = new Properties();
        props.setProperty("name", "bench-peer-debezium");
        props.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        props.setProperty("topic.prefix", "bench_peer_dbz");
        props.setProperty("database.hostname", pgHost);
        props.setProperty("database.port", pgPort);
        props.setProperty("database.user", pgUser);
        props.setProperty("database.password", pgPassword);
        props.setProperty("database.dbname", pgDb);
        props.setProperty("plugin.name", "pgoutput");
        props.setProperty("slot.name", slot);
        props.setProperty("slot.drop.on.stop", "false");
        props.setProperty("publication.name", publication);
        props.setProperty("publication.autocreate.mode", "disabled");
        props.setProperty("snapshot.mode", snapshotMode);
        props.setProperty("table.include.list", table.replace(".", "\\."));
        props.setProperty("tombstones.on.delete", "false");
        props.setProperty("binary.handling.mode", "bytes");
        props.setProperty("max.batch.size", maxBatchSize);
        props.setProperty("max.queue.size", maxQueueSize);
        props.setProperty("poll.interval.ms", pollIntervalMs);
        props.setProperty("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
        props.setProperty("offset.storage.file.filename", runDir.resolve("debezium-offsets.dat").toString());
        props.setProperty("offset.flush.interval.ms", offsetFlushMs);
        props.setProperty("offset.flush.timeout.ms", "5000");

        // Outbox Event Router: key = aggregateid, value = payload column, every event to BENCH_TOPIC.
        props.setProperty("transforms", "outbox");
        props.setProperty("transforms.outbox.type", "io.debezium.transforms.outbox.EventRouter");
        props.setProperty("transforms.outbox.table.field.event.id", "id");
        props.setProperty("transforms.outbox.table.field.event.key", "aggregateid");
        props.setProperty("transforms.outbox.table.field.event.payload", "payload");
        props.setProperty("transforms.outbox.route.by.field", "aggregatetype");
        props.setProperty("transforms.outbox.route.topic.replacement", topic);
        props.setProperty("transforms.outbox.table.expand.json.payload", "false");

        // Converters as a Kafka Connect / Debezium Server deployment would set them.
        props.setProperty("key.converter.class", "org.apache.kafka.connect.storage.StringConverter");
        props.setProperty("value.converter.class", "org.apache.kafka.connect.converters.ByteArrayConverter");
        props.setProperty("header.converter.class", "org.apache.kafka.connect.storage.SimpleHeaderConverter");

        Map<String, Object> producerConfig = new LinkedHashMap<>();
        producerConfig.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        producerConfig.put(ProducerConfig.CLIENT_ID_CONFIG, "bench-peer-debezium");
        producerConfig.put(ProducerConfig.ACKS_CONFIG, "all");
        producerConfig.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        producerConfig.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, maxInFlight);
        producerConfig.put(ProducerConfig.LINGER_MS_CONFIG, lingerMs);
        producerConfig.put(ProducerConfig.BATCH_SIZE_CONFIG, batchSize);
        producerConfig.put(ProducerConfig.BUFFER_MEMORY_CONFIG, bufferMemory);
        producerConfig.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        producerConfig.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        producerConfig.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

        printSettings(props, producerConfig);

        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerConfig);
        AtomicLong produced = new AtomicLong();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        CountDownLatch engineDone = new CountDownLatch(1);
        AtomicBoolean stopping = new AtomicBoolean(false);
        AtomicInteger exitCode = new AtomicInteger(0);

        DebeziumEngine<ChangeEvent<Object, Object>> engine = DebeziumEngine
                .create(KeyValueHeaderChangeEventFormat.of(ClientProvided.class, ClientProvided.class, ClientProvided.class))
                .using(props)
                .notifying((records, committer) -> {
                    handleBatch(producer, records, committer, produced);
                })
                .using((success, message, error) -> {
                    if (!success && !stopping.get()) {
                        failure.set(error != null ? error : new RuntimeException(message));
                    }
                    log("engine stopped: success=" + success + " " + (message == null ? "" : message));
                    engineDone.countDown();
                })
                .build();

        ExecutorService executor = Executors.newSingleThreadExecutor(r -> new Thread(r, "debezium-engine"));
        executor.execute(engine);

        Thread ready = new Thread(() -> waitSlotActive(pgHost, pgPort, pgUser, pgPassword, pgDb, slot, engineDone), "bench-ready");
        ready.setDaemon(true);
        ready.start();

        Thread stats = new Thread(() -> {
            long last = 0;
            while (true) {
                try {
                    Thread.sleep(5000);
                }
                catch (InterruptedException e) {
                    return;
                }
                long now = produced.get();
                log("produced total=" + now + " rate=" + (now - last) / 5 + "/s");
                last = now;
            }
        }, "bench-stats");
        stats.setDaemon(true);
        stats.start();

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            stopping.set(true);
            log("signal: stopping engine");
            Thread watchdog = new Thread(() -> {
                try {
                    Thread.sleep(8000);
                    log("shutdown took over 8 s: halting");
                    Runtime.getRuntime().halt(1);
                }
                catch (InterruptedException ignored) {
                    // finished in time
                }
            }, "bench-watchdog");
            watchdog.setDaemon(true);
            watchdog.start();
            try {
                engine.close();
                engineDone.await(6, TimeUnit.SECONDS);
            }
            catch (Exception e) {
                log("engine close: " + e);
            }
            producer.close(Duration.ofSeconds(2));
            log("stopped after producing " + produced.get() + " records");
            System.err.flush();
            System.out.flush();
            Runtime.getRuntime().halt(exitCode.get());
        }, "bench-shutdown"));

        engineDone.await();
        if (!stopping.get()) {
            Throwable t = failure.get();
            log("engine ended on its own" + (t == null ? "" : ": " + t));
            if (t != null) {
                t.printStackTrace();
            }
            exitCode.set(1);
            System.exit(1);
        }
        // stopping: the shutdown hook finishes and halts.
        Thread.sleep(Long.MAX_VALUE);
    }

    /** Send a batch, wait for every ack (acks=all), then commit it - Debezium Server's Kafka sink pattern. */
    private static void handleBatch(KafkaProducer<byte[], byte[]> producer, List<ChangeEvent<Object, Object>> records,
                                    DebeziumEngine.RecordCommitter<ChangeEvent<Object, Object>> committer, AtomicLong produced)
            throws InterruptedException {
        List<Future<RecordMetadata>> acks = new ArrayList<>(records.size());
        for (ChangeEvent<Object, Object> r : records) {
            List<org.apache.kafka.common.header.Header> headers = new ArrayList<>();
            for (Header<?> h : r.headers()) {
                Object v = h.getValue();
                headers.add(new RecordHeader(h.getKey(), v instanceof byte[] ? (byte[]) v : null));
            }
            acks.add(producer.send(new ProducerRecord<>(r.destination(), null, (byte[]) r.key(), (byte[]) r.value(), headers)));
        }
        for (Future<RecordMetadata> f : acks) {
            try {
                f.get();
            }
            catch (java.util.concurrent.ExecutionException e) {
                throw new RuntimeException("kafka send failed", e.getCause());
            }
        }
        for (ChangeEvent<Object, Object> r : records) {
            committer.markProcessed(r);
        }
        committer.markBatchFinished();
        produced.addAndGet(records.size());
    }

    /** BENCH_READY once the connector holds the replication slot (START_REPLICATION issued). */
    private static void waitSlotActive(String host, String port, String user, String password, String db, String slot,
                                       CountDownLatch engineDone) {
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + db;
        try (Connection c = DriverManager.getConnection(url, user, password);
             PreparedStatement st = c.prepareStatement("SELECT active FROM pg_replication_slots WHERE slot_name = ?")) {
            st.setString(1, slot);
            while (engineDone.getCount() > 0) {
                try (ResultSet rs = st.executeQuery()) {
                    if (rs.next() && rs.getBoolean(1)) {
                        System.out.println("BENCH_READY");
                        System.out.flush();
                        return;
                    }
                }
                Thread.sleep(100);
            }
        }
        catch (Exception e) {
            log("ready check failed: " + e);
        }
    }

    private static void printSettings(Properties props, Map<String, Object> producerConfig) {
        Map<String, String> s = new TreeMap<>();
        for (String k : new String[]{ "max.batch.size", "max.queue.size", "poll.interval.ms", "offset.flush.interval.ms",
                "snapshot.mode", "plugin.name", "binary.handling.mode" }) {
            s.put(k, props.getProperty(k));
        }
        for (String k : new String[]{ "acks", "enable.idempotence", "linger.ms", "batch.size", "buffer.memory", "compression.type",
                "max.in.flight.requests.per.connection" }) {
            s.put("producer." + k, String.valueOf(producerConfig.get(k)));
        }
        s.put("transforms.outbox.table.field.event.key", props.getProperty("transforms.outbox.table.field.event.key"));
        s.put("transforms.outbox.route.topic.replacement", props.getProperty("transforms.outbox.route.topic.replacement"));
        s.put("key.converter", props.getProperty("key.converter.class"));
        s.put("value.converter", props.getProperty("value.converter.class"));
        s.put("engine", "embedded-async (io.debezium.embedded.async)");
        s.put("partitioner", "kafka default (murmur2 of key)");
        s.put("debezium.version", DEBEZIUM_VERSION);
        s.put("kafka.clients.version", org.apache.kafka.common.utils.AppInfoParser.getVersion());
        s.put("java.version", System.getProperty("java.version"));
        s.put("jvm.max.heap.mb", String.valueOf(Runtime.getRuntime().maxMemory() / (1024 * 1024)));
        StringBuilder sb = new StringBuilder("BENCH_SETTINGS {\"peer\":\"debezium\"");
        for (Map.Entry<String, String> e : s.entrySet()) {
            sb.append(",\"").append(json(e.getKey())).append("\":\"").append(json(e.getValue())).append('"');
        }
        sb.append('}');
        System.out.println(sb);
        System.out.flush();
    }

    private static String json(String s) {
        StringBuilder b = new StringBuilder();
        for (char ch : String.valueOf(s).toCharArray()) {
            if (ch == '"' || ch == '\\') {
                b.append('\\').append(ch);
            }
            else if (ch < 0x20) {
                b.append(String.format("\\u%04x", (int) ch));
            }
            else {
                b.append(ch);
            }
        }
        return b.toString();
    }

    private static String env(String name, String def) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? def : v;
    }

    private static String required(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            System.err.println("debezium runner: " + name + " is not set");
            System.exit(2);
        }
        return v;
    }

    private static void log(String msg) {
        System.err.println("[bench-debezium] " + msg);
    }
}
