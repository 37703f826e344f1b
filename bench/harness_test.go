package main

import (
	"strings"
	"testing"
	"time"
)

// A trimmed `relaybox relay -h`: zero values carry no "(default ...)".
const relayHelp = `Usage of relaybox relay:
  -batch-size int
    	rows read per shard per batch [$RELAYBOX_BATCH_SIZE] (default 4000)
  -compression string
    	compression of produced batches: snappy, lz4, zstd, gzip or none [$RELAYBOX_COMPRESSION] (default "snappy")
  -database-url string
    	Postgres URL [$DATABASE_URL] (default "postgres://u:secret@h/db")
  -delivery-timeout duration
    	fail records that wait longer for Kafka [$RELAYBOX_DELIVERY_TIMEOUT]
  -exactly-once
    	publish in Kafka transactions [$RELAYBOX_EXACTLY_ONCE]
  -linger duration
    	how long a batch waits [$RELAYBOX_LINGER] (default 2ms)
  -max-inflight-batches int
    	shards with a backlog [$RELAYBOX_MAX_INFLIGHT_BATCHES] (default 4)
  -max-record-bytes int
    	largest record [$RELAYBOX_MAX_RECORD_BYTES] (default 1048576)
  -pool-size int
    	Postgres connections (0: max-inflight-batches + 8, at least 16) [$RELAYBOX_POOL_SIZE]
`

func TestParseRelayHelp(t *testing.T) {
	c, err := parseRelayHelp(relayHelp, []string{"PATH=/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if c.BatchSize != 4000 || c.MaxInFlight != 4 || c.PoolSizeFlag != 0 || c.PoolSize != 16 || c.MaxRecordBytes != 1<<20 ||
		c.Compression != "snappy" || c.Linger != 2*time.Millisecond {
		t.Errorf("parsed %+v", c)
	}
	if !c.hasExactlyOnce || c.ExactlyOnce || c.exactlyOnceEnv != "RELAYBOX_EXACTLY_ONCE" {
		t.Errorf("exactly-once: has %v on %v env %q", c.hasExactlyOnce, c.ExactlyOnce, c.exactlyOnceEnv)
	}
	if c.flags["delivery-timeout"] != "0s" {
		t.Errorf("a zero duration reads %q, want 0s", c.flags["delivery-timeout"])
	}
	for k, v := range c.settings() {
		if s, ok := v.(string); ok && strings.Contains(s, "secret") {
			t.Errorf("settings[%s] carries the database URL", k)
		}
	}
	// The relay's environment sets flags (the last value of a variable wins).
	c, err = parseRelayHelp(relayHelp, []string{"RELAYBOX_EXACTLY_ONCE=1", "RELAYBOX_POOL_SIZE=8", "RELAYBOX_POOL_SIZE=40",
		"RELAYBOX_LINGER=10ms", "RELAYBOX_COMPRESSION=none", "DATABASE_URL=postgres://x"})
	if err != nil {
		t.Fatal(err)
	}
	if !c.ExactlyOnce || c.PoolSize != 40 || c.Linger != 10*time.Millisecond || c.Compression != "none" || c.BatchSize != 4000 {
		t.Errorf("from the environment: %+v", c)
	}
	if _, err := parseRelayHelp(relayHelp, []string{"RELAYBOX_BATCH_SIZE=many"}); err == nil {
		t.Error("a batch size the CLI refuses parsed")
	}
	if _, err := parseRelayHelp("Usage of relaybox relay:\n  -linger duration\n    \tx (default 2ms)\n", nil); err == nil {
		t.Error("help without --batch-size parsed")
	}
}

func TestCPUSeriesInterpolates(t *testing.T) {
	var s cpuSeries
	if _, ok := s.between(0, 1); ok {
		t.Error("an empty series answered")
	}
	s.add(0, 0)
	s.add(100, 1)
	s.add(200, 3)
	for _, c := range []struct {
		from, to int64
		want     float64
	}{{0, 100, 1}, {50, 150, 1.5}, {-10, 300, 3}, {150, 150, 0}} {
		if got, ok := s.between(c.from, c.to); !ok || got != c.want {
			t.Errorf("between(%d, %d) = %v, want %v", c.from, c.to, got, c.want)
		}
	}
	if busy, err := machineBusySeconds(); err != nil || busy <= 0 {
		t.Errorf("machineBusySeconds = %v, %v", busy, err)
	}
	if got := usPerEvent(0.5, 250000); got != 2 {
		t.Errorf("usPerEvent = %v, want 2", got)
	}
}

func TestBrokenLimits(t *testing.T) {
	l := &limitsResult{KafkaProduceEPS: ptr(39000), PGDrainEPS: ptr(175000)}
	res := &systemResult{DrainEPS: ptr(53000)}
	b := brokenLimits(l, "relaybox", res)
	if len(b) != 1 || !strings.Contains(b[0], "kafka_produce_eps") || !strings.Contains(b[0], "broken") {
		t.Errorf("a Kafka limit below the drain: %q", b)
	}
	res.DrainEPS = ptr(30000)
	if b := brokenLimits(l, "relaybox", res); len(b) != 0 {
		t.Errorf("limits above the drain flagged: %q", b)
	}
}

func TestWithApplicationName(t *testing.T) {
	u, err := withApplicationName("postgres://u:p@127.0.0.1:5432/db?sslmode=disable", "bench_x")
	if err != nil || !strings.Contains(u, "application_name=bench_x") || !strings.Contains(u, "sslmode=disable") {
		t.Errorf("url: %q, %v", u, err)
	}
	if d, _ := withApplicationName("host=h dbname=db", "bench_x"); d != "host=h dbname=db application_name=bench_x" {
		t.Errorf("dsn: %q", d)
	}
}
