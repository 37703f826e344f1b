package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relaybox/relaybox/consumer"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/metrics"
	"github.com/relaybox/relaybox/outbox"
)

// order is the event the load writes.
type order struct {
	ID  string `avro:"id"`
	Seq int64  `avro:"seq"`
}

// grafanaVars are Grafana's macros and the dashboard's variables as the test
// substitutes them: the scrape interval is 1s, so 10s holds several samples.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "10s", "${__rate_interval}", "10s",
	"$__interval", "2s", "${__interval}", "2s",
	"$__range", "5m", "${__range}", "5m",
	"${job}", "relaybox", "$job", "relaybox",
	"${consumer_job}", consumerJob, "$consumer_job", consumerJob,
)

// consumerJob is the scrape job of the test's consumer.
const consumerJob = "relaybox-consumer"

type dashboard struct {
	SchemaVersion int `json:"schemaVersion"`
	Panels        []struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("grafana/relaybox.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/relaybox.json: %v", err)
	}
	return d
}

// dashboardQueries returns panel title -> substituted PromQL expressions.
func dashboardQueries(t *testing.T) map[string][]string {
	t.Helper()
	d := readDashboard(t)
	if d.SchemaVersion < 39 {
		t.Fatalf("grafana/relaybox.json: schemaVersion %d, want >= 39", d.SchemaVersion)
	}
	out := map[string][]string{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			e := grafanaVars.Replace(tg.Expr)
			if strings.Contains(e, "$") {
				t.Errorf("panel %q: unsubstituted variable in %q", p.Title, e)
			}
			out[p.Title] = append(out[p.Title], e)
		}
	}
	return out
}

// TestDashboard_Static: the dashboard's shape, without services: schema version, every
// panel queries something, every variable known, titles unique.
func TestDashboard_Static(t *testing.T) {
	q := dashboardQueries(t)
	if len(q) < 10 {
		t.Fatalf("only %d panels with queries", len(q))
	}
	d := readDashboard(t)
	seen := map[string]bool{}
	for _, p := range d.Panels {
		if seen[p.Title] {
			t.Errorf("two panels titled %q", p.Title)
		}
		seen[p.Title] = true
	}
}

// TestDashboard_EveryPanelDocumented: docs/operations.md's dashboard tour has a row for
// each panel, and no row for a panel that is gone.
func TestDashboard_EveryPanelDocumented(t *testing.T) {
	b, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "### The dashboard")
	end := strings.Index(doc, "### Deploying with Helm")
	if start < 0 || end < start {
		t.Fatal(`docs/operations.md: no "### The dashboard" section before "### Deploying with Helm"`)
	}
	rows := map[string]bool{}
	for _, l := range strings.Split(doc[start:end], "\n") {
		cells := strings.Split(l, "|")
		if len(cells) == 4 && strings.TrimSpace(cells[1]) != "Panel" && !strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			rows[strings.TrimSpace(cells[1])] = true
		}
	}
	for title := range dashboardQueries(t) {
		if !rows[title] {
			t.Errorf("panel %q has no row in docs/operations.md's dashboard tour", title)
		}
		delete(rows, title)
	}
	for title := range rows {
		t.Errorf("docs/operations.md's dashboard tour describes %q, which the dashboard does not have", title)
	}
}

// TestLive_PrometheusEvaluatesDashboardAndRules runs two `relaybox relay` processes on
// the services of `make env` (their own schema, migrated by `relaybox migrate up`)
// under load, and a consumer of their topic (in batch mode) serving package metrics'
// collectors, a real Prometheus scraping all three every second with alerts.yml
// loaded, and checks that every PromQL expression of the dashboard and of the rules
// parses and evaluates without error, that every rule evaluates healthy, and that
// every dashboard query returns series, and `promtool check metrics` is clean on each
// relay's and the consumer's /metrics. A parked event (too large), a fenced
// write (a replica paused past its lease), handler retries and dead letters are
// provoked so that those panels have data.
func TestLive_PrometheusEvaluatesDashboardAndRules(t *testing.T) {
	prom := tool(t, "prometheus", promInstall)
	dbURL := testenv.DatabaseURL(t)
	brokers := strings.Join(testenv.Brokers(t), ",")
	registry := testenv.RegistryURL(t)
	pool := testenv.Pool(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	bin := buildRelaybox(t)
	schema := testenv.Name(t, "deploy")
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	if out, err := runCmd(bin, []string{"DATABASE_URL=" + dbURL}, "migrate", "up", "--schema", schema); err != nil {
		t.Fatalf("relaybox migrate up: %v\n%s", err, out)
	}
	topic := testenv.Topic(t, 4)
	// An event over --max-record-bytes parks as too_large, at once and whatever
	// Kafka does. (A missing topic parks only once franz-go has seen it unknown in 5
	// metadata responses within one batch, which a 3s lease does not leave time for.)
	const maxRecordBytes = 4096
	big := strings.Repeat("x", maxRecordBytes)

	// Two replicas; credentials go in the environment, as the Helm chart does.
	env := []string{"DATABASE_URL=" + dbURL, "KAFKA_BROKERS=" + brokers, "SCHEMA_REGISTRY_URL=" + registry}
	var targets []string
	var relays []*exec.Cmd
	for i := range 2 {
		port := testenv.FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		targets = append(targets, addr)
		relays = append(relays, startRelay(t, bin, env, fmt.Sprintf("r%d", i), "--schema", schema, "--metrics-addr", addr,
			"--lease-ttl", "3s", "--heartbeat-interval", "500ms", "--poll-interval", "200ms", "--batch-size", "200",
			"--max-record-bytes", strconv.Itoa(maxRecordBytes)))
	}

	consumerTarget := startConsumer(ctx, t, pool, schema, topic)
	promURL := startPrometheus(t, prom, targets, []string{consumerTarget})

	// Load: a writer keeps writing small transactions until the test ends; a few
	// events go to a topic that does not exist, so they park.
	w, err := outbox.New(pool, &outbox.Config{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := int64(0); ctx.Err() == nil; seq++ {
			evs := make([]outbox.Event, 0, 20)
			for k := range 20 {
				id := "order-" + strconv.Itoa(k)
				evs = append(evs, outbox.Event{Topic: topic, Key: id, Type: "OrderPlaced", Value: order{ID: id, Seq: seq}})
			}
			if seq%50 == 0 {
				evs = append(evs, outbox.Event{Topic: topic, Key: "big", Type: "OrderPlaced", Value: order{ID: big, Seq: seq}})
			}
			if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return w.Write(ctx, tx, evs...) }); err != nil && ctx.Err() == nil {
				t.Errorf("writing events: %v", err)
				return
			}
			time.Sleep(20 * time.Millisecond) // pacing of the load, not synchronisation
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	api := promAPI{t: t, base: promURL}
	waitFor(t, 2*time.Minute, "events published, seen by Prometheus", func() bool {
		return api.has(`sum(relaybox_relay_published_total{job="relaybox"}) > 0`)
	})
	waitFor(t, 4*time.Minute, "an event parked (too large), seen by Prometheus", func() bool {
		return api.has(`max(relaybox_outbox_parked{job="relaybox"}) > 0`)
	})
	for what, q := range map[string]string{
		"events applied by the consumer": `sum(relaybox_consumer_records_total{job="` + consumerJob + `", outcome="applied"}) > 0`,
		"handler retries":                `sum(relaybox_consumer_retries_total{job="` + consumerJob + `"}) > 0`,
		"dead letters":                   `sum(relaybox_consumer_dead_letters_total{job="` + consumerJob + `", reason="permanent"}) > 0`,
		"consumer lag reported":          `count(relaybox_consumer_lag{job="` + consumerJob + `"}) > 0`,
		"batch sizes":                    `sum(relaybox_consumer_batch_size_count{job="` + consumerJob + `"}) > 0`,
	} {
		waitFor(t, 2*time.Minute, what+", seen by Prometheus", func() bool { return api.has(q) })
	}

	// Fencing: pause one replica past its lease while it is mid-batch; when it resumes
	// its outcome write is refused. Whether a batch was in flight at the pause is
	// chance, so pause again until Prometheus has seen a fenced write.
	const fencedQ = `sum(relaybox_relay_fenced_writes_total{job="relaybox"})`
	for try := 0; !api.has(fencedQ); try++ {
		if try == 8 {
			t.Fatalf("no fenced write after %d pauses of a replica under load", try)
		}
		p := relays[try%2].Process
		if err := p.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// The lease (3s) must expire and the other replica take the shards.
		waitFor(t, time.Minute, "the other replica owning every shard", func() bool {
			return api.has(fmt.Sprintf(`relaybox_relay_owned_shards{instance=%q} == %d`, targets[(try+1)%2], outbox.Shards))
		})
		if err := p.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Minute, "the resumed replica scraped again", func() bool {
			return api.has(fmt.Sprintf(`up{instance=%q} == 1`, targets[try%2]))
		})
		api.waitAbsentOrPresent(fencedQ, 15*time.Second)
	}
	t.Logf("fenced writes seen")

	// The relays' and the consumer's expositions follow Prometheus's naming conventions.
	promtool := tool(t, "promtool", promInstall)
	for _, target := range append(targets[:len(targets):len(targets)], consumerTarget) {
		resp, err := http.Get("http://" + target + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = resp.Body
		out, err := cmd.CombinedOutput()
		resp.Body.Close()
		if err != nil || len(out) > 0 {
			t.Errorf("promtool check metrics on %s: %v\n%s", target, err, out)
		}
	}

	// Every dashboard query: parses, evaluates, returns series (under load).
	queries := dashboardQueries(t)
	titles := make([]string, 0, len(queries))
	for title := range queries {
		titles = append(titles, title)
	}
	sort.Strings(titles)
	for _, title := range titles {
		for _, q := range queries[title] {
			var n int
			var lastErr string
			ok := poll(30*time.Second, func() bool {
				n, lastErr = api.query(q)
				return lastErr == "" && n > 0
			})
			if !ok {
				t.Errorf("panel %q: %q: %d series, error %q", title, q, n, lastErr)
			}
		}
	}

	t.Logf("%d panels' queries checked", len(titles))

	// Every rule expression evaluates (an alert whose condition is false returns
	// nothing, as it should), and Prometheus evaluated every rule healthy.
	rf := readRules(t)
	nRules := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			nRules++
			if _, e := api.query(r.Expr); e != "" {
				t.Errorf("rule %s: %q: %s", r.Alert+r.Record, r.Expr, e)
			}
		}
	}
	waitFor(t, time.Minute, "every rule evaluated by Prometheus", func() bool {
		rules := api.rules()
		return len(rules) == nRules && !strings.Contains(strings.Join(rules, ","), "unknown")
	})
	for _, r := range api.rules() {
		if !strings.HasSuffix(r, "=ok") {
			t.Errorf("rule health: %s", r)
		}
	}
	t.Logf("%d rules evaluated", nRules)
	// Under this load the parked event is the one alert that must be pending or firing.
	waitFor(t, time.Minute, "RelayboxParkedEvents active", func() bool {
		return api.has(`ALERTS{alertname="RelayboxParkedEvents"}`)
	})
}

func buildRelaybox(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "relaybox")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/relaybox").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ../cmd/relaybox: %v\n%s", err, out)
	}
	return bin
}

func runCmd(bin string, env []string, args ...string) ([]byte, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd.CombinedOutput()
}

// startRelay starts `relaybox relay`, stopped (SIGCONT, then SIGTERM) when the test ends.
func startRelay(t *testing.T, bin string, env []string, id string, args ...string) *exec.Cmd {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), id+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"relay", "--replica-id", id, "--log-format", "text"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("relay %s ignored SIGTERM for 30s", id)
		}
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("tail of relay %s log:\n%s", id, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	})
	return cmd
}

// startConsumer runs a consumer of topic in batch mode until ctx ends, its metrics
// (package metrics) served on a free 127.0.0.1 port, whose address it returns. Its
// handler fails the first attempt of some events (retries) and fails others for good
// (dead letters, reason permanent).
func startConsumer(ctx context.Context, t *testing.T, pool *pgxpool.Pool, schema, topic string) string {
	t.Helper()
	testenv.TopicNamed(t, topic+".dlq", 1)
	m, err := metrics.NewConsumer(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &consumer.Config{
		Group: testenv.Name(t, "g"), Topics: []string{topic}, Brokers: testenv.Brokers(t), RegistryURL: testenv.RegistryURL(t),
		Schema: schema, Logger: slog.New(slog.NewTextHandler(testenv.Writer(t), &slog.HandlerOptions{Level: slog.LevelError})),
		BatchMode: true, MaxAttempts: 3,
		RetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 100 * time.Millisecond,
		KafkaOpts: []kgo.Opt{kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())},
	}
	m.Install(cfg)
	c, err := consumer.New(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var calls sync.Map // event id -> *atomic.Int32: handler calls
	consumer.Handle(c, "OrderPlaced", func(_ context.Context, _ pgx.Tx, ev consumer.Event[order]) error {
		switch {
		case ev.Value.ID == "order-5" && ev.Value.Seq%25 == 0:
			return consumer.Permanent(errors.New("order-5 is refused for good"))
		case ev.Value.ID == "order-3" && ev.Value.Seq%5 == 0:
			// Twice: a batch's first pass does not count as an attempt (its failure
			// sends the batch to the savepoint path, which retries).
			n, _ := calls.LoadOrStore(ev.ID, new(atomic.Int32))
			if n.(*atomic.Int32).Add(1) <= 2 {
				return errors.New("order-3 fails its first calls")
			}
		}
		return nil
	})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		stop()
		if err := <-done; err != nil {
			t.Errorf("consumer: %v", err)
		}
	})
	return ln.Addr().String()
}

// startPrometheus runs Prometheus on a free 127.0.0.1 port with its own data dir,
// scraping the relays' targets every second as job="relaybox" and the consumers' as
// job=consumerJob, with alerts.yml loaded.
func startPrometheus(t *testing.T, prom string, targets, consumers []string) string {
	t.Helper()
	dir := t.TempDir()
	rules, err := filepath.Abs("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	quote := func(ts []string) string {
		q := make([]string, len(ts))
		for i, tg := range ts {
			q[i] = strconv.Quote(tg)
		}
		return strings.Join(q, ", ")
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: relaybox
    static_configs:
      - targets: [%s]
  - job_name: %s
    static_configs:
      - targets: [%s]
`, rules, quote(targets), consumerJob, quote(consumers))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	logPath := filepath.Join(dir, "prometheus.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr,
		"--web.console.templates="+dir, "--web.console.libraries="+dir)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("tail of prometheus log:\n%s", strings.Join(lines[max(0, len(lines)-20):], "\n"))
		}
	})
	base := "http://" + addr
	waitFor(t, time.Minute, "prometheus ready", func() bool {
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("prometheus exited:\n%s", b)
		default:
		}
		resp, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return base
}

type promAPI struct {
	t    *testing.T
	base string
}

// query evaluates expr now: the number of series, or Prometheus's error.
func (a promAPI) query(expr string) (int, string) {
	resp, err := http.Get(a.base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, err.Error()
	}
	if r.Status != "success" {
		return 0, r.Status + ": " + r.Error
	}
	if r.Data.ResultType != "vector" {
		return 0, "result type " + r.Data.ResultType + ", want vector"
	}
	return len(r.Data.Result), ""
}

// has reports whether expr returns series; an error fails the test.
func (a promAPI) has(expr string) bool {
	n, e := a.query(expr)
	if e != "" {
		a.t.Fatalf("query %q: %s", expr, e)
	}
	return n > 0
}

// waitAbsentOrPresent gives a scrape or two the chance to carry expr's series.
func (a promAPI) waitAbsentOrPresent(expr string, d time.Duration) {
	poll(d, func() bool { return a.has(expr) })
}

// rules returns "name=health" of every rule Prometheus loaded.
func (a promAPI) rules() []string {
	resp, err := http.Get(a.base + "/api/v1/rules")
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		a.t.Fatal(err)
	}
	var out []string
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			s := rule.Name + "=" + rule.Health
			if rule.LastError != "" {
				s += " (" + rule.LastError + ")"
			}
			out = append(out, s)
		}
	}
	return out
}

// poll checks cond every 200ms until it holds or d passes.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, cond) {
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}
