package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relaybox/relaybox/internal/registry"
	"github.com/relaybox/relaybox/internal/testenv"
)

const (
	orderV1 = `{"type":"record","name":"Order","namespace":"shop.v1","fields":[
  {"name":"id","type":"string"},
  {"name":"amount","type":"long"}]}
`
	// orderV2 adds a field with a default: compatible under FULL.
	orderV2 = `{"type":"record","name":"Order","namespace":"shop.v1","fields":[
  {"name":"id","type":"string"},
  {"name":"amount","type":"long"},
  {"name":"currency","type":"string","default":"EUR"}]}
`
	// orderV3 adds a field without a default: breaks FULL (new readers cannot read
	// the events already written).
	orderV3 = `{"type":"record","name":"Order","namespace":"shop.v1","fields":[
  {"name":"id","type":"string"},
  {"name":"amount","type":"long"},
  {"name":"currency","type":"string","default":"EUR"},
  {"name":"tier","type":"int"}]}
`
	tierBreak = "field `tier` added without a default: new readers cannot read old events under FULL"
)

var docsOperations, _ = filepath.Abs("../../docs/operations.md") // before tests change directory

// gitRepo makes a git repository in a temp dir and changes the test's working
// directory to it; commit writes schemas/order.avsc and commits it.
func gitRepo(t *testing.T) (commit func(text string)) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git not installed: %v", err)
	}
	dir := t.TempDir()
	t.Chdir(dir)
	gitRun := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	gitRun("init", "-q", "-b", "main")
	gitRun("config", "user.email", "ci@example.com")
	gitRun("config", "user.name", "CI")
	if err := os.Mkdir("schemas", 0o755); err != nil {
		t.Fatal(err)
	}
	return func(text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join("schemas", "order.avsc"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		gitRun("add", "schemas/order.avsc")
		gitRun("commit", "-q", "-m", "order schema")
	}
}

// The CI line: `relaybox schema check --against HEAD~1 --level FULL` passes on a
// compatible commit and fails, with a message naming the field and who breaks, on a
// breaking one; the same check against the registry gives the same answers.
func TestSchemaCheck_CIFailsTheBreakingCommitOfflineAndAgainstTheRegistry(t *testing.T) {
	commit := gitRepo(t)
	commit(orderV1)
	commit(orderV2)

	code, stdout, stderr := run(t, "schema", "check", "--against", "HEAD~1", "--level", "FULL", "schemas/order.avsc")
	if code != 0 || !strings.HasPrefix(stdout, "ok     schemas/order.avsc: FULL compatible with HEAD~1:schemas/order.avsc") {
		t.Fatalf("compatible commit: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}

	commit(orderV3)
	code, stdout, stderr = run(t, "schema", "check", "--against", "HEAD~1", "--level", "FULL", "schemas/order.avsc")
	wantLine := "BREAKS schemas/order.avsc: " + tierBreak + " [against HEAD~1:schemas/order.avsc]"
	if code != 1 || strings.TrimSpace(stdout) != wantLine {
		t.Fatalf("breaking commit: exit %d\nstdout %q\nwant   %q\nstderr %s", code, stdout, wantLine, stderr)
	}
	if got := lastLine(stderr); got != "relaybox: schema check: 1 incompatible change(s) in 1 of 1 schema file(s)" {
		t.Fatalf("stderr %q", got)
	}
	// docs/operations.md shows this run and the lines to copy.
	doc, err := os.ReadFile(docsOperations)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{wantLine, lastLine(stderr),
		"relaybox schema check --against origin/main --level FULL schemas/*.avsc",
		"relaybox schema check --registry-url $SCHEMA_REGISTRY_URL --topic orders --strategy topic-record schemas/*.avsc"} {
		if !strings.Contains(string(doc), want) {
			t.Errorf("docs/operations.md lacks %q", want)
		}
	}

	// --json for CI tools.
	code, stdout, _ = run(t, "schema", "check", "--against", "HEAD~1", "--json", "--topic", "orders", "schemas/order.avsc")
	var rep schemaCheckReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	if code != 1 || rep.Compatible || rep.Mode != "git" || len(rep.Files) != 1 || len(rep.Files[0].Problems) != 1 {
		t.Fatalf("--json: exit %d, %+v", code, rep)
	}
	if p := rep.Files[0].Problems[0]; p.Path != "tier" || p.Subject != "orders-value" || p.Level != "FULL" || p.Direction != "backward" {
		t.Fatalf("--json problem %+v", p)
	}

	// FULL_TRANSITIVE checks every version of the file in the ref's history.
	code, stdout, _ = run(t, "schema", "check", "--against", "HEAD~1", "--level", "FULL_TRANSITIVE", "--json", "schemas/order.avsc")
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil || code != 1 || len(rep.Files[0].Against) != 2 || len(rep.Files[0].Problems) != 2 {
		t.Fatalf("FULL_TRANSITIVE: exit %d, %v, %+v", code, err, rep)
	}

	// The same answers from the registry, with the level set there: FULL on a fresh
	// subject holding v1 then v2, as the repository's history does. The subject comes
	// from the topic and the writer's strategy.
	url := testenv.RegistryURL(t)
	topic := testenv.Name(t, "orders")
	subject := topic + "-shop.v1.Order" // topic-record strategy
	reg := registry.New(url, registry.Options{Timeout: time.Minute})
	ctx := context.Background()
	if code, stdout, stderr := run(t, "schema", "compat", "--registry-url", url, subject, "FULL"); code != 0 || !strings.HasPrefix(stdout, subject+": FULL") {
		t.Fatalf("schema compat set: exit %d %q %q", code, stdout, stderr)
	}
	code, stdout, stderr = run(t, "schema", "check", "--registry-url", url, "--topic", topic, "--strategy", "topic-record", "schemas/order.avsc")
	if code != 0 || !strings.HasPrefix(stdout, "ok     schemas/order.avsc: new: subject "+subject+" holds no version, nothing to check") {
		t.Fatalf("registry, no version: exit %d %q %q", code, stdout, stderr)
	}
	if _, err := reg.ID(ctx, subject, orderV1, true); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		text string
		code int
		out  string
	}{
		{orderV2, 0, "ok     schemas/order.avsc: FULL compatible with subject " + subject + " (versions 1)"},
		{orderV3, 1, "BREAKS subject " + subject + ", schemas/order.avsc: " + tierBreak + " [against registered version 2]"},
	} {
		if err := os.WriteFile(filepath.Join("schemas", "order.avsc"), []byte(c.text), 0o644); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := run(t, "schema", "check", "--registry-url", url, "--topic", topic, "--strategy", "topic-record", "schemas/order.avsc")
		if code != c.code || !strings.HasPrefix(stdout, c.out) {
			t.Fatalf("registry: exit %d, want %d\nstdout %q\nwant   %q\nstderr %s", code, c.code, stdout, c.out, stderr)
		}
		if c.code == 0 {
			if _, err := reg.ID(ctx, subject, c.text, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	// And the registry enforces it: registering the breaking version fails.
	if _, err := reg.ID(ctx, subject, orderV3, true); !registry.IsIncompatible(err) {
		t.Fatalf("registering v3: %v", err)
	}
}

func TestSchemaCheck_NewFileAndBadInput(t *testing.T) {
	commit := gitRepo(t)
	commit(orderV1)
	if err := os.WriteFile(filepath.Join("schemas", "new.avsc"), []byte(orderV3), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, "schema", "check", "--against", "HEAD", "schemas/new.avsc")
	if code != 0 || !strings.Contains(stdout, "new: absent at HEAD, nothing to check") {
		t.Fatalf("new file: exit %d %q %q", code, stdout, stderr)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--against", "no-such-ref", "schemas/order.avsc"}, `relaybox: schema check: schemas/order.avsc: git ref "no-such-ref": not a commit`},
		{[]string{"--against", "HEAD", "--level", "STRICT", "schemas/order.avsc"}, `relaybox: --level: compatibility level "STRICT": want one of`},
		{[]string{"--against", "HEAD"}, "relaybox: schema check: no schema files given"},
		{[]string{"--registry-url", "http://127.0.0.1:1", "schemas/order.avsc"}, "relaybox: schema check: registry mode needs the subject"},
		{[]string{"--registry-url", "http://127.0.0.1:1", "--subject", "s", "--level", "FULL", "schemas/order.avsc"}, "relaybox: schema check: --level is for --against"},
		{[]string{"--against", "HEAD", "--strategy", "guess", "schemas/order.avsc"}, `relaybox: --strategy: subject strategy "guess"`},
		{[]string{"--against", "HEAD", "schemas/missing.avsc"}, "relaybox: schema check: open schemas/missing.avsc"},
	} {
		code, _, stderr := run(t, append([]string{"schema", "check"}, c.args...)...)
		if code != 1 || !strings.HasPrefix(lastLine(stderr), c.want) {
			t.Errorf("%v: exit %d, %q; want prefix %q", c.args, code, lastLine(stderr), c.want)
		}
	}
	if err := os.WriteFile(filepath.Join("schemas", "bad.avsc"), []byte(`{"type":"record"`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = run(t, "schema", "check", "--against", "HEAD", "schemas/bad.avsc")
	if code != 1 || !strings.Contains(stderr, "schemas/bad.avsc: schema does not parse") {
		t.Fatalf("bad schema: exit %d %q", code, stderr)
	}
}

// schema compat reads a subject's level (Apicurio answers 404 for a subject with no
// version: the registry's global level is shown then) and sets it; schema list shows
// subjects with versions and levels.
func TestSchemaCompatAndList(t *testing.T) {
	url := testenv.RegistryURL(t)
	prefix := testenv.Name(t, "list")
	subject := prefix + "-value"
	code, stdout, stderr := run(t, "schema", "compat", "--registry-url", url, subject)
	// scripts/env.sh starts Apicurio with the global rule BACKWARD; its Confluent API
	// answers NONE, relaybox reads the rule Apicurio enforces.
	if code != 0 || !strings.HasPrefix(stdout, subject+": BACKWARD (the registry's global level") {
		t.Fatalf("read, no version: exit %d %q %q", code, stdout, stderr)
	}
	code, stdout, stderr = run(t, "schema", "compat", subject, "full", "--registry-url", url)
	if code != 0 || !strings.HasPrefix(stdout, subject+": FULL (was ") {
		t.Fatalf("set: exit %d %q %q", code, stdout, stderr)
	}
	reg := registry.New(url, registry.Options{Timeout: time.Minute})
	if _, err := reg.ID(context.Background(), subject, orderV1, true); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = run(t, "schema", "list", "--registry-url", url, "--prefix", prefix)
	want := []string{"SUBJECT", subject + "  1         FULL"}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], want[0]) || strings.Join(strings.Fields(lines[1]), " ") != subject+" 1 FULL" {
		t.Fatalf("list: exit %d %q %q", code, stdout, stderr)
	}
	code, stdout, _ = run(t, "schema", "list", "--registry-url", url, "--prefix", prefix, "--json")
	var subs []struct {
		Subject  string `json:"subject"`
		Versions []int  `json:"versions"`
		Level    string `json:"level"`
	}
	if err := json.Unmarshal([]byte(stdout), &subs); err != nil || code != 0 || len(subs) != 1 || subs[0].Level != "FULL" || len(subs[0].Versions) != 1 {
		t.Fatalf("list --json: exit %d %v %s", code, err, stdout)
	}
	if code, _, stderr := run(t, "schema", "compat", "--registry-url", url, subject, "STRICT"); code != 1 || !strings.Contains(stderr, `compatibility level "STRICT"`) {
		t.Fatalf("bad level: exit %d %q", code, stderr)
	}
}

// The schema commands refuse registry basic auth over http:// unless told, as the relay
// does.
func TestSchema_RefusesBasicAuthOverPlainHTTPUnlessAllowed(t *testing.T) {
	for _, args := range [][]string{
		{"schema", "list", "--registry-url", "http://u:secret@127.0.0.1:1/apis/ccompat/v7"},
		{"schema", "compat", "--registry-url", "http://127.0.0.1:1", "--registry-username", "u", "--registry-password", "secret", "s"},
	} {
		var out, errOut bytes.Buffer
		if code := Main(args, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "allow-plaintext-credentials") {
			t.Fatalf("%v: exit %d, stderr %q: want a refusal naming --allow-plaintext-credentials", args, code, errOut.String())
		}
		if strings.Contains(out.String()+errOut.String(), "secret") {
			t.Fatalf("%v printed the password", args)
		}
	}
}
