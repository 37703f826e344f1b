package consumer_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/testenv"
)

// A child is a consumer in another process (this test binary, re-executed), so a
// test can kill it with SIGKILL: a real crash, with transactions committed and
// offsets not, and a group member that stops heartbeating.
const childEnv = "RELAYBOX_CONSUMER_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(childMain(spec))
	}
	os.Exit(m.Run())
}

// childSpec is passed to the child as "schema|topic|group|name|commitInterval".
type childSpec struct {
	schema, topic, group, name string
	commitInterval             time.Duration
}

func (s childSpec) String() string {
	return strings.Join([]string{s.schema, s.topic, s.group, s.name, s.commitInterval.String()}, "|")
}

// childMain runs a consumer applying Seq events as s.name, printing "P" for each
// processed event and "D" for each duplicate, until killed.
func childMain(spec string) int {
	f := strings.Split(spec, "|")
	ci, _ := time.ParseDuration(f[4])
	s := childSpec{schema: f[0], topic: f[1], group: f[2], name: f[3], commitInterval: ci}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	e := &env{pool: pool, schema: s.schema}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	emit := func(b byte) {
		mu.Lock()
		out.WriteByte(b)
		out.WriteByte('\n')
		out.Flush()
		mu.Unlock()
	}
	c, err := consumer.New(pool, &consumer.Config{
		Group: s.group, Topics: []string{s.topic}, Brokers: strings.Split(os.Getenv("KAFKA_BROKERS"), ","),
		RegistryURL: os.Getenv("SCHEMA_REGISTRY_URL"), Schema: s.schema, CommitInterval: s.commitInterval,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		KafkaOpts: []kgo.Opt{kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.SessionTimeout(6 * time.Second), kgo.RebalanceTimeout(10 * time.Second), kgo.HeartbeatInterval(time.Second)},
		Hooks: consumer.Hooks{
			OnProcessed: func(consumer.RecordEvent) { emit('P') },
			OnDuplicate: func(consumer.RecordEvent) { emit('D') },
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	consumer.Handle(c, "Seq", e.applySeq(s.name, nil))
	if err := c.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// child is a running child consumer.
type child struct {
	cmd                  *exec.Cmd
	processed, duplicate atomic.Int64
	exited               chan struct{}
}

func startChild(t *testing.T, s childSpec) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+s.String())
	cmd.Stderr = testenv.Writer(t)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, exited: make(chan struct{})}
	go func() {
		defer close(ch.exited)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			switch sc.Text() {
			case "P":
				ch.processed.Add(1)
			case "D":
				ch.duplicate.Add(1)
			}
		}
	}()
	t.Cleanup(ch.kill)
	return ch
}

// kill sends SIGKILL and reaps the process.
func (ch *child) kill() {
	if ch.cmd.ProcessState != nil {
		return
	}
	_ = ch.cmd.Process.Signal(syscall.SIGKILL)
	<-ch.exited
	_ = ch.cmd.Wait()
}
