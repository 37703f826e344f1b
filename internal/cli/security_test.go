package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/relay"
)

type Note struct {
	N int64 `avro:"n"`
}

// On a broker that takes clients only over TLS with SASL/SCRAM-SHA-256: the relay
// publishes with the right credentials; with wrong ones it says so in one line, turns
// unready, publishes nothing and loses nothing; no secret reaches a log or an error.
func TestSecurity_RelayOverSCRAMAndTLS(t *testing.T) {
	t.Parallel()
	sk := testenv.OwnSecureKafka(t)
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	reg := testenv.RegistryURL(t)
	ctx := context.Background()

	good := kafkaOpts{brokers: sk.Brokers, tlsCA: sk.CAFile, saslMechanism: "SCRAM-SHA-256", saslUser: sk.User, saslPassword: sk.Password}
	kopts, err := good.opts()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kgo.NewClient(kopts...)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	topic := testenv.Name(t, "sec")
	if _, err := kadm.NewClient(admin).CreateTopic(ctx, 2, 1, nil, topic); err != nil {
		t.Fatalf("creating topic over SCRAM+TLS: %v", err)
	}
	w, _ := outbox.New(pool, &outbox.Config{Schema: schema})
	for i := range 10 {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return outbox.Publish(ctx, w, tx, topic, "k", "Note", Note{N: int64(i)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	backlog := func() int {
		var n int
		pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{schema, "outbox"}.Sanitize()).Scan(&n)
		return n
	}

	// Wrong password: one clear line from `relaybox relay --check`, no secret in it.
	var logs strings.Builder
	code, _, stderr := run(t, "relay", "--check", "--metrics-addr", "", "--log-level", "debug", "--database-url", testenv.DatabaseURL(t),
		"--schema", schema, "--brokers", sk.Brokers, "--kafka-tls-ca", sk.CAFile, "--kafka-sasl-mechanism", "SCRAM-SHA-256",
		"--kafka-sasl-username", sk.User, "--kafka-sasl-password", "wrong-"+sk.Password, "--registry-url", reg,
		"--registry-username", "u", "--registry-password", "registry-s3cret", "--allow-plaintext-credentials") // the test registry is http://
	logs.WriteString(stderr)
	if line := lastLine(stderr); code != 1 || !strings.HasPrefix(line, "relaybox: kafka unreachable: ") || !strings.Contains(strings.ToLower(line), "sasl") {
		t.Fatalf("wrong SASL password: exit %d, last line %q", code, line)
	}

	// Wrong password, relay running: unready, nothing published, nothing lost.
	bad := good
	bad.saslPassword = "wrong-" + sk.Password
	bopts, _ := bad.opts()
	rb, err := relay.New(pool, &relay.Config{Schema: schema, KafkaOpts: bopts, RegistryURL: reg,
		UnreadyAfter: 2 * time.Second, DeliveryTimeout: 3 * time.Second, HeartbeatInterval: 500 * time.Millisecond, LeaseTTL: 3 * time.Second,
		Logger: newTestLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(ctx)
	bdone := make(chan error, 1)
	go func() { bdone <- rb.Run(bctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for rb.Ready() == nil && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if rb.Ready() == nil {
		t.Error("relay with a wrong SASL password still ready after 30s")
	}
	bcancel()
	<-bdone
	if n := backlog(); n != 10 {
		t.Fatalf("backlog %d after the wrong-credentials relay, want all 10 kept", n)
	}

	// Right credentials: everything published over SCRAM + TLS.
	r, err := relay.New(pool, &relay.Config{Schema: schema, KafkaOpts: kopts, RegistryURL: reg,
		PollInterval: 200 * time.Millisecond, Logger: newTestLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	rdone := make(chan error, 1)
	go func() { rdone <- r.Run(rctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			rcancel()
			<-rdone
		}
	}
	defer stop()
	cons, err := kgo.NewClient(append(kopts, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	got := 0
	cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
	defer ccancel()
	for got < 10 && cctx.Err() == nil {
		got += len(cons.PollFetches(cctx).Records())
	}
	if got != 10 {
		t.Fatalf("read %d of 10 events over SCRAM+TLS", got)
	}
	stop() // the relay no longer writes to logs
	for _, secret := range []string{sk.Password, "registry-s3cret"} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("a secret reached the logs")
		}
	}
}
