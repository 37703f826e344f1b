package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relaybox/relaybox/internal/redact"
	"github.com/relaybox/relaybox/internal/testenv"
)

// leak is the attacker's marker: the password in every secret input. Its tail is
// what the test looks for, so that any encoding of the head is caught too.
const (
	leak     = "Zq9@leak-s3cret"
	leakMark = "leak-s3cret"
	// otlpLeak is the OTLP token: a value of its own, so that no other input's
	// registration masks it by chance.
	otlpLeak = "Tk4@otlp-t0ken"
	otlpMark = "otlp-t0ken"
)

// invoke runs the command line under a deadline and returns its exit code and
// everything it wrote.
func invoke(t *testing.T, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var b strings.Builder
	w := &lockedWriter{b: &b}
	// What bypasses the command's writers (the default logger) is caught too.
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})))
	code := mainContext(ctx, args, w, w)
	w.mu.Lock()
	defer w.mu.Unlock()
	return code, b.String()
}

var flagLine = regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`)

// acceptedFlags reads the flags a command line accepts from its -h output.
func acceptedFlags(t *testing.T, args ...string) map[string]bool {
	t.Helper()
	_, out := invoke(t, 10*time.Second, append(args, "-h")...)
	got := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(out, -1) {
		got[m[1]] = true
	}
	if len(got) == 0 && !strings.HasPrefix(out, "usage: relaybox "+args[0]) { // a command may take no flag (version)
		t.Fatalf("%v -h lists no flags: %q", args, out)
	}
	return got
}

// secretInputs are the ways a secret reaches relaybox: env holds variables,
// flags flag values (given only to commands that take them).
type secretInputs struct {
	name  string
	env   map[string]string
	flags map[string]string
}

func attackerInputs(t *testing.T) []secretInputs {
	dead := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) // nothing listens there
	esc := url.QueryEscape(leak)
	urls := map[string]string{
		"DATABASE_URL":        "postgres://relaybox:" + esc + "@" + dead + "/app?sslmode=disable",
		"KAFKA_BROKERS":       dead,
		"SCHEMA_REGISTRY_URL": "http://reg:" + esc + "@" + dead + "/apis/ccompat/v7",
	}
	common := map[string]string{
		"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "relay",
		"RELAYBOX_ALLOW_PLAINTEXT_CREDENTIALS": "true", "RELAYBOX_METRICS_ADDR": "",
		"RELAYBOX_REDRIVE_GROUP": "g", "SCHEMA_REGISTRY_USERNAME": "",
	}
	env := map[string]string{"KAFKA_SASL_PASSWORD": leak, "SCHEMA_REGISTRY_PASSWORD": leak,
		// OTLP: a token in the headers (both variables) and in the collector URL.
		"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20" + url.QueryEscape(otlpLeak), "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-api-key=" + url.QueryEscape(otlpLeak),
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:" + url.QueryEscape(otlpLeak) + "@" + dead}
	for k, v := range urls {
		env[k] = v
	}
	dsn := map[string]string{}
	for k, v := range env {
		dsn[k] = v
	}
	host, port, _ := strings.Cut(dead, ":")
	dsn["DATABASE_URL"] = "host=" + host + " port=" + port + " user=relaybox password=" + leak + " dbname=app sslmode=disable"
	// libpq's own sources of the password, which pgx reads: PGPASSWORD and a .pgpass file.
	pgpass := map[string]string{}
	for k, v := range env {
		pgpass[k] = v
	}
	passfile := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(passfile, []byte(host+":"+port+":*:relaybox:"+leak+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pgpass["DATABASE_URL"] = "postgres://relaybox@" + dead + "/app?sslmode=disable"
	pgpass["PGPASSFILE"] = passfile
	pgpass["PGPASSWORD"] = leak
	flagEnv := map[string]string{"KAFKA_BROKERS": dead, "DATABASE_URL": "", "SCHEMA_REGISTRY_URL": "", "KAFKA_SASL_PASSWORD": "", "SCHEMA_REGISTRY_PASSWORD": "",
		"OTEL_EXPORTER_OTLP_HEADERS": "", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
	out := []secretInputs{
		{name: "env", env: env},
		{name: "env-dsn", env: dsn},
		{name: "pgpass", env: pgpass},
		{name: "flags", env: flagEnv, flags: map[string]string{
			"database-url": urls["DATABASE_URL"], "registry-url": urls["SCHEMA_REGISTRY_URL"],
			"kafka-sasl-password": leak, "registry-password": leak,
			"otlp-headers": "authorization=Bearer " + otlpLeak, "otlp-endpoint": "http://otel:" + url.QueryEscape(otlpLeak) + "@" + dead,
		}},
	}
	for _, in := range out {
		for k, v := range common {
			in.env[k] = v
		}
	}
	return out
}

// requiredArgs are flags some command lines need before they connect anywhere.
var requiredArgs = map[string]string{"topic": "orders.dlq", "all": "true"}

// The attacker's table: a distinctive password in every secret input (variables,
// flags, URL userinfo, a key/value connection string), every command and
// subcommand of the command table run with -h, with a bad flag, without a
// subcommand and against unreachable Postgres, Kafka and registry: no output
// carries the password. A new command or subcommand is covered by being in the
// table.
func TestSecrets_NoCommandPrintsAPassword(t *testing.T) {
	for _, in := range attackerInputs(t) {
		t.Run(in.name, func(t *testing.T) {
			for k, v := range in.env {
				t.Setenv(k, v)
			}
			var lines [][]string
			for _, c := range commands() {
				lines = append(lines, []string{c.name, "-h"}, []string{c.name, "--no-such-flag"})
				paths := [][]string{{c.name}}
				if len(c.subs) > 0 {
					lines = append(lines, []string{c.name}) // no subcommand: usage
					paths = nil
					for _, sub := range c.subs {
						paths = append(paths, []string{c.name, sub})
						lines = append(lines, []string{c.name, sub, "-h"}, []string{c.name, sub, "--no-such-flag"})
					}
				}
				for _, p := range paths {
					accepted := acceptedFlags(t, p...)
					run := append([]string{}, p...)
					for name, v := range in.flags {
						if accepted[name] {
							run = append(run, "--"+name+"="+v)
						}
					}
					for name, v := range requiredArgs {
						if accepted[name] {
							run = append(run, "--"+name+"="+v)
						}
					}
					lines = append(lines, run)
					if accepted["check"] {
						lines = append(lines, append(append([]string{}, run...), "--check"))
					}
				}
			}
			for _, args := range lines {
				code, out := invoke(t, 6*time.Second, args...)
				if strings.Contains(out, leakMark) || strings.Contains(out, otlpMark) {
					t.Errorf("relaybox %s (exit %d) printed the password:\n%s", strings.Join(args, " "), code, out)
				}
				if strings.TrimSpace(out) == "" && code != 0 {
					t.Errorf("relaybox %s: exit %d without a word", strings.Join(args, " "), code)
				}
			}
			t.Logf("%d command lines checked", len(lines))
		})
	}
}

// A relay whose registry URL carries credentials, with Postgres and Kafka up and the
// registry unreachable: its "waiting for dependencies" warning, its --check line,
// /readyz, /metrics and /healthz carry no password.
func TestSecrets_RelayLogsAndEndpointsCarryNoPassword(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	dead := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	t.Setenv("DATABASE_URL", testenv.DatabaseURL(t))
	t.Setenv("KAFKA_BROKERS", strings.Join(testenv.Brokers(t), ","))
	t.Setenv("SCHEMA_REGISTRY_URL", "http://reg:"+url.QueryEscape(leak)+"@"+dead+"/apis/ccompat/v7")
	t.Setenv("SCHEMA_REGISTRY_PASSWORD", "")
	t.Setenv("RELAYBOX_ALLOW_PLAINTEXT_CREDENTIALS", "true")
	t.Setenv("RELAYBOX_SCHEMA", schema)

	code, out := invoke(t, 30*time.Second, "relay", "--check")
	if code != 1 || !strings.Contains(out, "schema registry") || strings.Contains(out, leakMark) {
		t.Fatalf("relay --check: exit %d, %q; want a registry failure without the password", code, out)
	}

	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	var b strings.Builder
	w := &lockedWriter{b: &b}
	done := make(chan int, 1)
	go func() {
		done <- mainContext(ctx, []string{"relay", "--metrics-addr", addr, "--log-level", "debug"}, w, w)
	}()
	logs := func() string { w.mu.Lock(); defer w.mu.Unlock(); return b.String() }
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	var scraped []string
	deadline := time.Now().Add(60 * time.Second)
	// The relay starts once Postgres answers and logs the registry's failure (its URL
	// carries the password) as a dependency that does not answer yet.
	for !strings.Contains(logs(), "schema registry") {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no registry failure logged within 60s:\n%s", logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range []string{"/readyz", "/metrics", "/healthz"} {
		code, body := get(p)
		if code == 0 {
			t.Errorf("GET %s: %s", p, body)
		}
		scraped = append(scraped, fmt.Sprintf("%s %d %s", p, code, body))
	}
	cancel()
	<-done
	all := logs() + strings.Join(scraped, "\n")
	if strings.Contains(all, leakMark) {
		t.Fatalf("the registry password reached the relay's output or endpoints:\n%s", all)
	}
	if !strings.Contains(all, "GET /subjects at http://") {
		t.Errorf("no registry error with its URL in the output (was the error path taken?):\n%s", logs())
	}
}

// Flag defaults are the built-in ones: a password in the environment never shows in
// usage, whatever writer prints it.
func TestFlags_DefaultsNeverComeFromTheEnvironment(t *testing.T) {
	for _, env := range EnvVars() {
		t.Setenv(env, "env-"+leak)
	}
	var b strings.Builder
	s := &stdio{out: &b, err: &b, secrets: &redact.Set{}}
	for _, name := range []string{"relay", "admin", "dlq"} {
		f := newFlags(name, s)
		switch name {
		case "relay":
			defineRelay(f)
		case "admin":
			defineAdmin(f)
		case "dlq":
			defineDLQ(f)
		}
		f.PrintDefaults()
		f.VisitAll(func(fl *flag.Flag) {
			if strings.Contains(fl.DefValue, leakMark) {
				t.Errorf("%s --%s: default %q from the environment", name, fl.Name, fl.DefValue)
			}
		})
	}
	if strings.Contains(b.String(), leakMark) {
		t.Fatalf("usage printed an environment value:\n%s", b.String())
	}
}

// SASL PLAIN without TLS and registry basic auth over http:// send a password in
// clear: refused, naming the flag that allows it; with the flag the command goes on
// (here to the real services, which then answer).
func TestTransport_PlaintextCredentialsAreRefusedUnlessAllowed(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	db, brokers, reg := testenv.DatabaseURL(t), strings.Join(testenv.Brokers(t), ","), testenv.RegistryURL(t)
	t.Setenv("KAFKA_SASL_PASSWORD", "")
	t.Setenv("SCHEMA_REGISTRY_PASSWORD", "")
	t.Setenv("RELAYBOX_ALLOW_PLAINTEXT_CREDENTIALS", "")
	base := []string{"relay", "--check", "--metrics-addr", "", "--database-url", db, "--schema", schema, "--brokers", brokers}
	withAuth := strings.Replace(reg, "http://", "http://u:p4ssw0rd@", 1)
	cases := []struct {
		name    string
		args    []string
		refused string // empty: not refused
	}{
		{"sasl plain", append(base, "--registry-url", reg, "--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", "u"), "PLAIN without TLS"},
		{"dlq sasl plain", []string{"dlq", "redrive", "--topic", "x.dlq", "--brokers", brokers, "--kafka-sasl-mechanism", "plain"}, "PLAIN without TLS"},
		{"registry userinfo", append(base, "--registry-url", withAuth), "basic auth over http://"},
		{"registry password", append(base, "--registry-url", reg, "--registry-username", "u", "--registry-password", "p4ssw0rd"), "basic auth over http://"},
		{"registry allowed", append(base, "--registry-url", reg, "--registry-username", "u", "--registry-password", "p4ssw0rd", "--allow-plaintext-credentials"), ""},
		{"sasl scram", append(base, "--registry-url", reg, "--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-username", "u"), ""},
	}
	for _, c := range cases {
		code, out := invoke(t, 30*time.Second, c.args...)
		refused := strings.Contains(out, allowPlaintextFlag)
		switch {
		case c.refused != "" && (code != 1 || !refused || !strings.Contains(out, c.refused)):
			t.Errorf("%s: exit %d, %q; want a refusal saying %q and naming %s", c.name, code, out, c.refused, allowPlaintextFlag)
		case c.refused == "" && refused:
			t.Errorf("%s: refused: %q", c.name, out)
		}
		if strings.Contains(out, "p4ssw0rd") {
			t.Errorf("%s: password printed: %q", c.name, out)
		}
	}
}
