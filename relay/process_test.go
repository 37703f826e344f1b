package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
)

func testEnvTopic(t *testing.T, n int32) string { return testenv.Topic(t, n) }

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// relayBinary builds cmd/relaybox once per test process.
func relayBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relaybox-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "relaybox")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/relaybox").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type proc struct {
	cmd *exec.Cmd
	log string
	id  string
}

func (e *env) startRelayProcess(t *testing.T, id string, extra ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), id+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"relay", "--database-url", testDatabaseURL(t), "--schema", e.schema,
		"--brokers", strings.Join(e.brokers, ","), "--registry-url", e.registry, "--replica-id", id,
		"--lease-ttl", "4s", "--heartbeat-interval", "500ms", "--poll-interval", "200ms", "--batch-size", "500",
		"--metrics-addr", "", "--log-level", "debug", "--pool-size", "8"}, extra...)
	cmd := exec.Command(relayBinary(t), args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logPath, id: id}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Errorf("relay %s ignored SIGTERM for 20s", id)
		}
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("tail of %s log:\n%s", id, strings.Join(lines, "\n"))
		}
	})
	return p
}

func testDatabaseURL(t *testing.T) string { return os.Getenv("DATABASE_URL") }

// writeFlow writes keys×perKey events, one transaction per round across all keys,
// pausing between rounds, so events keep flowing while faults happen.
func (e *env) writeFlow(t *testing.T, topic string, keys, perKey int, pause time.Duration) {
	t.Helper()
	ctx := context.Background()
	for s := 1; s <= perKey; s++ {
		evs := make([]outbox.Event, 0, keys)
		for k := 0; k < keys; k++ {
			key := "key-" + strconv.Itoa(k)
			evs = append(evs, outbox.Event{Topic: topic, Key: key, Type: "Seq", Value: Seq{Key: key, Seq: int64(s)}})
		}
		if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error { return e.w.Write(ctx, tx, evs...) }); err != nil {
			t.Error(err)
			return
		}
		time.Sleep(pause)
	}
}

func (e *env) owners(t *testing.T) map[string]int {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT owner, count(*) FROM `+pgx.Identifier{e.schema, "shard_leases"}.Sanitize()+
		` WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var o string
		var n int
		rows.Scan(&o, &n)
		out[o] = n
	}
	return out
}

func balanced(o map[string]int, replicas int) bool {
	if len(o) != replicas {
		return false
	}
	total := 0
	for _, n := range o {
		total += n
		if n < 64/replicas || n > 64/replicas+1 {
			return false
		}
	}
	return total == 64
}

func TestRelay_ThreeReplicaProcessesShareShardsAndKeepKeyOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testEnvTopic(t, 6)
	for i := range 3 {
		e.startRelayProcess(t, fmt.Sprintf("r%d", i))
	}
	deadline := time.Now().Add(30 * time.Second)
	for !balanced(e.owners(t), 3) {
		if time.Now().After(deadline) {
			t.Fatalf("shards not balanced across 3 replicas: %v", e.owners(t))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("leases: %v", e.owners(t))
	go e.writeFlow(t, topic, 500, 40, 20*time.Millisecond) // 20k events on 500 keys
	got := readBack(t, topic, 20000, 120*time.Second)
	if got.distinct != 20000 || got.violations != 0 || len(got.byKey) != 500 {
		t.Fatalf("distinct %d/20000, keys %d, order violations %d, duplicates %d", got.distinct, len(got.byKey), got.violations, got.duplicates)
	}
	t.Logf("20000 events, 500 keys, 3 replica processes: %d duplicates, 0 order violations", got.duplicates)
	if !balanced(e.owners(t), 3) {
		t.Fatalf("leases unbalanced after the run: %v", e.owners(t))
	}
}

func TestRelay_KilledAndPausedReplicasLoseNothingAndZombieChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic := testEnvTopic(t, 6)
	// Every delete from the outbox is audited with the deleting replica (its session's
	// application_name) and the shard's lease owner at that moment: a replica deleting
	// rows of a shard it does not hold is what fencing must make impossible.
	ctx := context.Background()
	q := func(n string) string { return pgx.Identifier{e.schema, n}.Sanitize() }
	if _, err := e.pool.Exec(ctx, `CREATE TABLE `+q("audit")+` (shard int, deleter text, owner text);
		CREATE FUNCTION `+q("audit_delete")+`() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			INSERT INTO `+q("audit")+` SELECT OLD.shard, current_setting('application_name'), l.owner
			FROM `+q("shard_leases")+` l WHERE l.shard = OLD.shard; RETURN OLD; END $$;
		CREATE TRIGGER audit BEFORE DELETE ON `+q("outbox")+` FOR EACH ROW EXECUTE FUNCTION `+q("audit_delete")+`()`); err != nil {
		t.Fatal(err)
	}
	ps := make([]*proc, 3)
	for i := range ps {
		id := fmt.Sprintf("r%d", i)
		ps[i] = e.startRelayProcess(t, id, "--database-url", withAppName(testDatabaseURL(t), id))
	}
	waitFor(t, 30*time.Second, "three replicas sharing the shards", func() bool { return balanced(e.owners(t), 3) })
	writing := make(chan struct{})
	go func() { defer close(writing); e.writeFlow(t, topic, 500, 40, 250*time.Millisecond) }() // ~10s of flow

	waitFor(t, 30*time.Second, "events flowing", func() bool { return published(t, topic) > 1000 })
	if err := ps[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Log("SIGKILL r0")
	at := published(t, topic)
	waitFor(t, 30*time.Second, "more events flowing", func() bool { return published(t, topic) > at+1000 })
	zombieShards := e.owners(t)["r1"]
	if err := ps[1].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGSTOP r1 (holding %d shards), lease TTL 4s", zombieShards)
	waitFor(t, 60*time.Second, "r2 to hold every shard (r0 dead, r1 stopped)", func() bool { return e.owners(t)["r2"] == 64 })
	if err := ps[1].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Log("SIGCONT r1")
	<-writing
	got := readBack(t, topic, 20000, 120*time.Second)
	if got.distinct != 20000 || got.violations != 0 {
		t.Fatalf("distinct %d/20000, order violations (first occurrences) %d, duplicates %d", got.distinct, got.violations, got.duplicates)
	}
	t.Logf("nothing lost, first-occurrence key order intact; duplicates on the topic after SIGKILL+SIGSTOP: %d, stale after newer: %d",
		got.duplicates, got.stale)
	waitFor(t, 60*time.Second, "r1 and r2 to rebalance", func() bool { return balanced(e.owners(t), 2) })
	// A record is on the topic before its row is deleted: the audit is read once the
	// outbox is empty (reading it at once saw 19,528-19,989 of the 20,000 deletes).
	waitFor(t, 60*time.Second, "the outbox to empty", func() bool { p, _ := e.backlog(t); return p == 0 })

	// No replica deleted a row of a shard whose lease it did not hold.
	var rows, foreign int
	var example string
	if err := e.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE deleter IS DISTINCT FROM owner),
		coalesce(max(format('shard %s deleted by %s while %s held it', shard, deleter, owner)) FILTER (WHERE deleter IS DISTINCT FROM owner), '')
		FROM `+q("audit")).Scan(&rows, &foreign, &example); err != nil {
		t.Fatal(err)
	}
	if rows < 20000 {
		t.Fatalf("the audit saw %d deletes, want at least 20000", rows)
	}
	if foreign != 0 {
		t.Fatalf("%d of %d deletes by a replica that did not hold the shard's lease, e.g. %s", foreign, rows, example)
	}
}

// withAppName sets application_name on a Postgres URL.
func withAppName(u, name string) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + "application_name=" + name
}

// Regression (found by the chaos run): a relay process started while Kafka is down used
// to exit. It must wait, unready, and publish once Kafka is back.
func TestRelayProcess_StartedDuringKafkaOutageWaitsThenPublishes(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"at-least-once", "exactly-once"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			var extra []string
			if mode == "exactly-once" {
				extra = []string{"--exactly-once"}
			}
			startedDuringKafkaOutage(t, extra)
		})
	}
}

func startedDuringKafkaOutage(t *testing.T, extra []string) {
	e := newEnv(t)
	kafka, brokers := testenv.OwnKafka(t)
	cl := testenv.Client(t, kgo.SeedBrokers(brokers))
	if _, err := kadm.NewClient(cl).CreateTopic(context.Background(), 1, 1, nil, "waits"); err != nil {
		t.Fatal(err)
	}
	kafka.Stop(true)
	e.writeOne(t, "waits", "k", 1, 0, "")
	port := testenv.FreePort(t)
	p := e.startRelayProcess(t, "waiter", append([]string{"--brokers", brokers, "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", port)}, extra...)...)
	exited := make(chan struct{})
	go func() { p.cmd.Process.Wait(); close(exited) }()
	readyz := func() int {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	time.Sleep(4 * time.Second)
	select {
	case <-exited:
		t.Fatal("relay exited while Kafka was down")
	default:
	}
	if code := readyz(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d while Kafka is down, want 503", code)
	}
	kafka.Start()
	got := readBackFrom(t, brokers, e.registry, []string{"waits"}, 1, 60*time.Second)
	if got.distinct != 1 {
		t.Fatal("event not published after Kafka came back")
	}
	deadline := time.Now().Add(20 * time.Second)
	for readyz() != http.StatusOK && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if code := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz = %d after Kafka came back", code)
	}
}
