// Command verify checks a benchmark peer runner (bench/peers/<name>/run.sh) end to end against the
// runner contract in bench/peers/README.md: it creates its own schema, outbox table, publication,
// slot and topic (all prefixed bench_peer_), inserts rows, runs the runner, reads the topic back and
// checks exactly-once delivery, key and value bytes, and per-key order; then it SIGTERMs the runner,
// times its exit, and drops what it created.
//
//	go run . -peer debezium -rows 50000 -keys 1000 -mode drain
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

type row struct {
	id    [16]byte
	key   string
	value []byte
	seq   int // insert order within its key
}

type result struct {
	Peer            string          `json:"peer"`
	Mode            string          `json:"mode"`
	Rows            int             `json:"rows"`
	Keys            int             `json:"keys"`
	Partitions      int             `json:"partitions"`
	PayloadBytes    int             `json:"payload_bytes"`
	Received        int             `json:"received"`
	Missing         int             `json:"missing"`
	Duplicates      int             `json:"duplicates"`
	Unknown         int             `json:"unknown"`
	KeyMismatch     int             `json:"key_mismatch"`
	OrderViolations int             `json:"order_violations"`
	KeysSplit       int             `json:"keys_in_several_partitions"`
	ReadySeconds    float64         `json:"ready_seconds"`
	FirstToLastSec  float64         `json:"first_to_last_seconds"`
	RowsPerSecond   float64         `json:"rows_per_second"`
	StartToLastSec  float64         `json:"start_to_last_seconds"`
	InsertSeconds   float64         `json:"insert_seconds"`
	ExitSeconds     float64         `json:"sigterm_exit_seconds"`
	ExitCode        int             `json:"exit_code"`
	Settings        json.RawMessage `json:"settings,omitempty"`
	OK              bool            `json:"ok"`
}

func main() {
	var (
		peer       = flag.String("peer", "", "runner name under bench/peers (debezium, pqcdc)")
		runner     = flag.String("runner", "", "path to run.sh (default ../<peer>/run.sh next to this program's directory)")
		nrows      = flag.Int("rows", 50000, "rows to insert")
		nkeys      = flag.Int("keys", 1000, "distinct aggregateid keys")
		payload    = flag.Int("payload", 1024, "payload bytes per row")
		partitions = flag.Int("partitions", 6, "topic partitions")
		mode       = flag.String("mode", "drain", "drain: insert before the runner starts; steady: insert while it runs")
		txRows     = flag.Int("tx-rows", 500, "rows per insert transaction")
		idle       = flag.Duration("idle", 60*time.Second, "give up when nothing new arrives for this long")
		keep       = flag.Bool("keep", false, "keep schema/topic (slot is always dropped)")
	)
	flag.Parse()
	if *peer == "" {
		fatalf("-peer is required")
	}
	if *runner == "" {
		wd, _ := os.Getwd()
		*runner = filepath.Join(wd, "..", *peer, "run.sh")
	}
	res, err := run(*peer, *runner, *mode, *nrows, *nkeys, *payload, *partitions, *txRows, *idle, *keep)
	out, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(out))
	if err != nil {
		fatalf("%v", err)
	}
	if !res.OK {
		os.Exit(1)
	}
}

func fatalf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "verify: "+f+"\n", a...)
	os.Exit(1)
}

func logf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "verify: %s "+f+"\n", append([]any{time.Now().Format("15:04:05.000")}, a...)...)
}

func run(peer, runner, mode string, nrows, nkeys, payload, partitions, txRows int, idle time.Duration, keep bool) (*result, error) {
	ctx := context.Background()
	res := &result{Peer: peer, Mode: mode, Rows: nrows, Keys: nkeys, Partitions: partitions, PayloadBytes: payload}

	dbURL := os.Getenv("DATABASE_URL")
	if dbURL == "" {
		dbURL = "postgres://postgres:relaybox@127.0.0.1:55432/postgres?sslmode=disable"
	}
	brokers := os.Getenv("KAFKA_BROKERS")
	if brokers == "" {
		brokers = "127.0.0.1:19092"
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		return res, err
	}
	pw, _ := u.User.Password()

	suffix := fmt.Sprintf("%s_%d", peer, time.Now().Unix())
	schema := "bench_peer_" + suffix
	table := schema + ".outbox"
	pub := "bench_peer_pub_" + suffix
	slot := "bench_peer_slot_" + suffix
	topic := "bench_peer_" + suffix

	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return res, fmt.Errorf("postgres: %w", err)
	}
	defer conn.Close(ctx)

	for _, q := range []string{
		"CREATE SCHEMA " + schema,
		"CREATE TABLE " + table + " (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL, payload bytea NOT NULL)",
		"CREATE PUBLICATION " + pub + " FOR TABLE " + table,
		"SELECT pg_create_logical_replication_slot('" + slot + "', 'pgoutput')",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return res, fmt.Errorf("%s: %w", q, err)
		}
	}
	logf("created %s, publication %s, slot %s", table, pub, slot)
	defer func() {
		dropSlot(ctx, conn, slot)
		if !keep {
			conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pub)
			conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
		}
	}()

	kc, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		return res, err
	}
	defer kc.Close()
	adm := kadm.NewClient(kc)
	if _, err := adm.CreateTopic(ctx, int32(partitions), 1, nil, topic); err != nil {
		return res, fmt.Errorf("create topic: %w", err)
	}
	if !keep {
		defer adm.DeleteTopics(context.Background(), topic)
	}

	// Rows: random payloads (all byte values, including 0x00 and '\\'), keys round-robin-ish at random.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 42))
	rows := make([]row, nrows)
	perKey := map[string]int{}
	for i := range rows {
		k := fmt.Sprintf("k-%05d", rng.IntN(nkeys))
		v := make([]byte, payload)
		for j := range v {
			v[j] = byte(rng.UintN(256))
		}
		var id [16]byte
		for j := range id {
			id[j] = byte(rng.UintN(256))
		}
		id[6] = id[6]&0x0f | 0x40
		id[8] = id[8]&0x3f | 0x80
		rows[i] = row{id: id, key: k, value: v, seq: perKey[k]}
		perKey[k]++
	}
	byValue := make(map[[32]byte]int, nrows)
	for i := range rows {
		byValue[sha256.Sum256(rows[i].value)] = i
	}

	insert := func() error {
		start := time.Now()
		for off := 0; off < len(rows); off += txRows {
			end := min(off+txRows, len(rows))
			src := make([][]any, 0, end-off)
			for _, r := range rows[off:end] {
				src = append(src, []any{pgtype.UUID{Bytes: r.id, Valid: true}, "bench", r.key, "BenchEvent", r.value})
			}
			if _, err := conn.CopyFrom(ctx, pgx.Identifier{schema, "outbox"},
				[]string{"id", "aggregatetype", "aggregateid", "type", "payload"}, pgx.CopyFromRows(src)); err != nil {
				return err
			}
		}
		res.InsertSeconds = time.Since(start).Seconds()
		logf("inserted %d rows in %.2fs", len(rows), res.InsertSeconds)
		return nil
	}

	if mode == "drain" {
		if err := insert(); err != nil {
			return res, err
		}
	}

	runDir, err := os.MkdirTemp("", "bench_peer_run_")
	if err != nil {
		return res, err
	}
	cmd := exec.Command(runner)
	cmd.Env = append(os.Environ(),
		"BENCH_PG_HOST="+u.Hostname(), "BENCH_PG_PORT="+u.Port(), "BENCH_PG_USER="+u.User.Username(),
		"BENCH_PG_PASSWORD="+pw, "BENCH_PG_DB="+strings.TrimPrefix(u.Path, "/"),
		"BENCH_TABLE="+table, "BENCH_SLOT="+slot, "BENCH_PUBLICATION="+pub,
		"BENCH_KAFKA_BROKERS="+brokers, "BENCH_TOPIC="+topic, "BENCH_RUN_DIR="+runDir)
	stderrFile, err := os.Create(filepath.Join(runDir, "runner.stderr"))
	if err != nil {
		return res, err
	}
	cmd.Stderr = stderrFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	startAt := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	logf("started %s (pid %d), run dir %s", runner, cmd.Process.Pid, runDir)
	exited := make(chan error, 1)
	readyCh := make(chan struct{})
	var settingsCount int
	var stdoutWG sync.WaitGroup
	stdoutWG.Add(1)
	go func() {
		defer stdoutWG.Done()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		readyClosed := false
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "BENCH_SETTINGS "):
				settingsCount++
				res.Settings = json.RawMessage(strings.TrimPrefix(line, "BENCH_SETTINGS "))
				logf("settings: %s", strings.TrimPrefix(line, "BENCH_SETTINGS "))
			case line == "BENCH_READY":
				if !readyClosed {
					res.ReadySeconds = time.Since(startAt).Seconds()
					logf("BENCH_READY after %.2fs", res.ReadySeconds)
					close(readyCh)
					readyClosed = true
				}
			default:
				logf("unexpected stdout line: %q", line)
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	go func() { stdoutWG.Wait(); exited <- cmd.Wait() }()

	tail := func() {
		b, _ := os.ReadFile(filepath.Join(runDir, "runner.stderr"))
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintln(os.Stderr, "---- runner stderr (tail) ----\n"+strings.Join(lines, "\n")+"\n----")
	}

	select {
	case <-readyCh:
	case err := <-exited:
		tail()
		return res, fmt.Errorf("runner exited before BENCH_READY: %v", err)
	case <-time.After(120 * time.Second):
		tail()
		cmd.Process.Signal(syscall.SIGKILL)
		return res, errors.New("no BENCH_READY within 120s")
	}

	insertErr := make(chan error, 1)
	if mode == "steady" {
		go func() { insertErr <- insert() }()
	} else {
		insertErr <- nil
	}

	// Consume everything from the start of the topic.
	cons, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(64<<20), kgo.FetchMaxPartitionBytes(16<<20))
	if err != nil {
		return res, err
	}
	defer cons.Close()
	seen := make([]int, nrows)
	lastSeq := map[string]int{}
	keyPart := map[string]int32{}
	var firstTS, lastTS time.Time
	lastProgress := time.Now()
	var runnerErr error
	runnerDone := false
	for res.Received < nrows+res.Duplicates+res.Unknown || res.Received == 0 {
		if time.Since(lastProgress) > idle {
			logf("no new records for %s", idle)
			break
		}
		select {
		case runnerErr = <-exited:
			runnerDone = true
		default:
		}
		if runnerDone {
			tail()
			return res, fmt.Errorf("runner exited early: %v", runnerErr)
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fs := cons.PollFetches(pctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			lastProgress = time.Now()
			res.Received++
			if firstTS.IsZero() || r.Timestamp.Before(firstTS) {
				firstTS = r.Timestamp
			}
			if r.Timestamp.After(lastTS) {
				lastTS = r.Timestamp
			}
			i, ok := byValue[sha256.Sum256(r.Value)]
			if !ok {
				res.Unknown++
				return
			}
			seen[i]++
			if seen[i] > 1 {
				res.Duplicates++
				return
			}
			if string(r.Key) != rows[i].key {
				res.KeyMismatch++
			}
			if p, ok := keyPart[rows[i].key]; ok && p != r.Partition {
				res.KeysSplit++
			}
			keyPart[rows[i].key] = r.Partition
			// Records of a key are all in one partition, read in offset order: seq must increase.
			if prev, ok := lastSeq[rows[i].key]; ok && rows[i].seq <= prev {
				res.OrderViolations++
			}
			lastSeq[rows[i].key] = rows[i].seq
		})
		if res.Received-res.Duplicates-res.Unknown >= nrows {
			break
		}
	}
	if err := <-insertErr; err != nil {
		return res, fmt.Errorf("insert: %w", err)
	}
	for i := range seen {
		if seen[i] == 0 {
			res.Missing++
		}
	}
	if !firstTS.IsZero() {
		res.FirstToLastSec = lastTS.Sub(firstTS).Seconds()
		res.StartToLastSec = lastTS.Sub(startAt).Seconds()
		if res.FirstToLastSec > 0 {
			res.RowsPerSecond = float64(res.Received-res.Duplicates-res.Unknown) / res.FirstToLastSec
		}
	}
	logf("received %d (missing %d, dup %d, unknown %d, key mismatch %d, order violations %d); %.0f rows/s over %.2fs (producer timestamps)",
		res.Received, res.Missing, res.Duplicates, res.Unknown, res.KeyMismatch, res.OrderViolations, res.RowsPerSecond, res.FirstToLastSec)

	// Graceful stop.
	sigAt := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		res.ExitSeconds = time.Since(sigAt).Seconds()
		res.ExitCode = cmd.ProcessState.ExitCode()
		logf("runner exited %.2fs after SIGTERM (code %d, %v)", res.ExitSeconds, res.ExitCode, err)
	case <-time.After(30 * time.Second):
		res.ExitSeconds = time.Since(sigAt).Seconds()
		res.ExitCode = -1
		logf("runner did not exit within 30s of SIGTERM: killing")
		cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
	if settingsCount != 1 {
		logf("expected exactly one BENCH_SETTINGS line, got %d", settingsCount)
	}
	res.OK = res.Missing == 0 && res.Duplicates == 0 && res.Unknown == 0 && res.KeyMismatch == 0 &&
		res.OrderViolations == 0 && res.KeysSplit == 0 && settingsCount == 1 && res.ExitSeconds <= 10
	if !res.OK {
		tail()
	}
	return res, nil
}

func dropSlot(ctx context.Context, conn *pgx.Conn, slot string) {
	for i := 0; i < 100; i++ {
		_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot)
		if err == nil {
			logf("dropped slot %s", slot)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	logf("WARNING: could not drop slot %s (still active?): drop it by hand", slot)
}
