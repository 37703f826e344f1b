package cli

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/relaybox/relaybox/internal/testenv"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func TestRelayCheck_BadInputGivesOneClearLine(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Schema(t, pool)
	db := testenv.DatabaseURL(t)
	brokers := strings.Join(testenv.Brokers(t), ",")
	reg := testenv.RegistryURL(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"wrong database", []string{"--database-url", "postgres://u:hunter2secret@127.0.0.1:1/x", "--brokers", brokers, "--registry-url", reg}, "relaybox: postgres unreachable: "},
		{"unmigrated schema", []string{"--database-url", db, "--schema", "not_there", "--brokers", brokers, "--registry-url", reg}, "relaybox: relaybox schema is not migrated"},
		{"unreachable broker", []string{"--database-url", db, "--schema", schema, "--brokers", "127.0.0.1:1", "--registry-url", reg}, "relaybox: kafka unreachable: "},
		{"registry 404", []string{"--database-url", db, "--schema", schema, "--brokers", brokers, "--registry-url", strings.TrimSuffix(reg, "/") + "/wrong/path"}, "relaybox: schema registry GET /subjects"},
		{"no registry", []string{"--database-url", db, "--schema", schema, "--brokers", brokers, "--registry-url", ""}, "relaybox: no schema registry"},
		{"bad sasl", []string{"--database-url", db, "--brokers", brokers, "--registry-url", reg, "--kafka-sasl-mechanism", "GSSAPI"}, "relaybox: KAFKA_SASL_MECHANISM"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := run(t, append([]string{"relay", "--check", "--metrics-addr", ""}, c.args...)...)
			line := lastLine(stderr)
			if code != 1 || !strings.HasPrefix(line, c.want) {
				t.Fatalf("exit %d, last line %q; want prefix %q", code, line, c.want)
			}
			if strings.Contains(stderr, "hunter2secret") {
				t.Fatalf("password leaked: %s", stderr)
			}
		})
	}
	code, out, _ := run(t, "relay", "--check", "--database-url", db, "--schema", schema, "--brokers", brokers, "--registry-url", reg)
	if code != 0 || !strings.HasPrefix(out, "ok:") {
		t.Fatalf("good config: exit %d %q", code, out)
	}
}

func TestMigrateAndStatusCommands(t *testing.T) {
	pool := testenv.Pool(t)
	schema := testenv.Name(t, "cli")
	db := testenv.DatabaseURL(t)
	t.Cleanup(func() { pool.Exec(t.Context(), `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`) })
	if code, out, errs := run(t, "migrate", "up", "--database-url", db, "--schema", schema); code != 0 || !strings.Contains(out, "applied 002") {
		t.Fatalf("migrate up: %d %q %q", code, out, errs)
	}
	if code, out, _ := run(t, "migrate", "status", "--database-url", db, "--schema", schema); code != 0 || strings.Contains(out, "\tno") || !strings.Contains(out, "002") {
		t.Fatalf("migrate status: %d %q", code, out)
	}
	if code, out, _ := run(t, "status", "--database-url", db, "--schema", schema); code != 0 || !strings.HasPrefix(out, "backlog 0") {
		t.Fatalf("status: %d %q", code, out)
	}
	if code, _, errs := run(t, "parked", "retry", "--database-url", db, "--schema", schema); code != 1 || !strings.Contains(errs, "select parked events") {
		t.Fatalf("parked retry without filter: %d %q", code, errs)
	}
	if code, out, _ := run(t, "migrate", "down", "--database-url", db, "--schema", schema); code != 0 || !strings.Contains(out, "rolled back 001") {
		t.Fatalf("migrate down: %d %q", code, out)
	}
}

func TestEnvVarsAreListed(t *testing.T) {
	got := strings.Join(EnvVars(), " ")
	for _, want := range []string{"DATABASE_URL", "KAFKA_BROKERS", "SCHEMA_REGISTRY_URL", "KAFKA_SASL_PASSWORD", "RELAYBOX_BATCH_SIZE", "RELAYBOX_METRICS_ADDR"} {
		if !strings.Contains(got, want) {
			t.Errorf("EnvVars lacks %s", want)
		}
	}
}

func TestBadEnvValueIsAnError(t *testing.T) {
	t.Setenv("RELAYBOX_BATCH_SIZE", "lots")
	code, _, errs := run(t, "relay", "--check")
	if code != 1 || !strings.Contains(errs, "RELAYBOX_BATCH_SIZE") {
		t.Fatalf("exit %d %q", code, errs)
	}
}

type lockedWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// newTestLogger logs everything, at debug level, into b (for secret checks).
func newTestLogger(b *strings.Builder) *slog.Logger {
	return slog.New(slog.NewJSONHandler(&lockedWriter{b: b}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
