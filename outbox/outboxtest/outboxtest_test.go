package outboxtest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/outbox/outboxtest"
	"github.com/relaybox/relaybox/schemacheck"
)

// recorder is a testing.TB that records failures instead of failing: the helpers under
// test must fail a user's test, so their failures are what these tests assert.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Helper() {}
func (r *recorder) Logf(format string, args ...any) {
	r.TB.Logf(format, args...)
}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Fatal(args ...any) {
	r.Errorf("%s", fmt.Sprint(args...))
	runtime.Goexit()
}

// run calls f with a recorder and returns what it recorded.
func run(t *testing.T, f func(tb testing.TB)) []string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() { defer close(done); f(r) }()
	<-done
	return r.errors
}

func v1(topic string) []outbox.EventSchema {
	type Shipped struct {
		OrderID string `avro:"order_id"`
	}
	return []outbox.EventSchema{{Topic: topic, Value: Shipped{}}}
}

func v2(topic string) []outbox.EventSchema {
	type Shipped struct {
		OrderID string `avro:"order_id"`
		Carrier string `avro:"carrier"` // no default: breaks FULL
	}
	return []outbox.EventSchema{{Topic: topic, Value: Shipped{}}}
}

func git(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func TestRequireGitCompatible_FailsTheUsersTestOnABreak(t *testing.T) {
	t.Chdir(t.TempDir())
	git(t, "init", "-q", "-b", "main")
	git(t, "config", "user.email", "ci@example.com")
	git(t, "config", "user.name", "CI")
	git(t, "commit", "-q", "--allow-empty", "-m", "start")
	o := outboxtest.GitOptions{Dir: "schemas", Against: "HEAD"}

	// No file yet: the helper asks for it; with the update variable it writes it.
	if errs := run(t, func(tb testing.TB) { outboxtest.RequireGitCompatible(tb, o, v1("shipments")...) }); len(errs) != 1 || !strings.Contains(errs[0], "schemas/shipments-value.avsc missing") {
		t.Fatalf("missing file: %q", errs)
	}
	t.Setenv(outboxtest.UpdateVar, "1")
	if errs := run(t, func(tb testing.TB) { outboxtest.RequireGitCompatible(tb, o, v1("shipments")...) }); len(errs) != 0 {
		t.Fatalf("writing the file: %q", errs)
	}
	git(t, "add", "schemas")
	git(t, "commit", "-q", "-m", "v1")
	t.Setenv(outboxtest.UpdateVar, "")

	if errs := run(t, func(tb testing.TB) { outboxtest.RequireGitCompatible(tb, o, v1("shipments")...) }); len(errs) != 0 {
		t.Fatalf("unchanged type: %q", errs)
	}
	errs := run(t, func(tb testing.TB) { outboxtest.RequireGitCompatible(tb, o, v2("shipments")...) })
	want := "incompatible schema: subject shipments-value, schemas/shipments-value.avsc: field `carrier` added without a default: new readers cannot read old events under FULL [against HEAD:schemas/shipments-value.avsc]"
	if len(errs) != 2 || errs[0] != want || !strings.Contains(errs[1], "differs from the event type's schema") {
		t.Fatalf("breaking type: %q\nwant first %q", errs, want)
	}
	// Under FORWARD the same change is fine (old readers ignore the new field); the
	// stale file is still reported.
	o.Level = schemacheck.Forward
	if errs := run(t, func(tb testing.TB) { outboxtest.RequireGitCompatible(tb, o, v2("shipments")...) }); len(errs) != 1 || !strings.Contains(errs[0], "differs") {
		t.Fatalf("FORWARD: %q", errs)
	}
	// The committed file serves the command line too.
	if b, err := os.ReadFile("schemas/shipments-value.avsc"); err != nil || !strings.Contains(string(b), "\n  \"name\": \"Shipped\"") {
		t.Fatalf("file %q %v", b, err)
	}
}

func TestRequireRegistryCompatible_FailsTheUsersTestOnABreak(t *testing.T) {
	url := testenv.RegistryURL(t)
	ctx := context.Background()
	topic := testenv.Name(t, "shipments")
	reg := schemacheck.NewRegistry(url, nil)
	if err := reg.SetLevel(ctx, topic+"-value", schemacheck.Full); err != nil {
		t.Fatal(err)
	}
	_, text, err := v1(topic)[0].Subject(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registry.New(url, registry.Options{Timeout: time.Minute}).ID(ctx, topic+"-value", text, true); err != nil {
		t.Fatal(err)
	}
	if errs := run(t, func(tb testing.TB) { outboxtest.RequireRegistryCompatible(tb, reg, nil, v1(topic)...) }); len(errs) != 0 {
		t.Fatalf("registered type: %q", errs)
	}
	errs := run(t, func(tb testing.TB) { outboxtest.RequireRegistryCompatible(tb, reg, nil, v2(topic)...) })
	if len(errs) != 1 || !strings.Contains(errs[0], "subject "+topic+"-value: field `carrier` added without a default") {
		t.Fatalf("breaking type: %q", errs)
	}
}
