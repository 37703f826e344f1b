// Package outboxtest holds test helpers for services that write events with package
// outbox. Its schema helpers fail a service's test when its event types break
// compatibility, against a schema registry or against a git ref, so that a breaking
// change fails the pull request instead of parking events in production.
//
// # Against a registry
//
//	func TestEventsCompatible(t *testing.T) {
//		reg := schemacheck.NewRegistry(os.Getenv("SCHEMA_REGISTRY_URL"), nil)
//		outboxtest.RequireRegistryCompatible(t, reg, &writerConfig, events.All...)
//	}
//
// # Against git (no registry in CI)
//
// The service commits one .avsc per subject, generated from its event types, in a
// directory (here schemas/); the helper fails when a type no longer matches its file
// (RELAYBOX_UPDATE_SCHEMAS=1 rewrites the files) and when a type is incompatible with
// its file as it stood at the ref. The same files serve `relaybox schema check
// --against origin/main schemas/*.avsc`.
//
//	func TestEventsCompatibleWithMain(t *testing.T) {
//		outboxtest.RequireGitCompatible(t, outboxtest.GitOptions{
//			Dir: "schemas", Against: "origin/main", Config: &writerConfig,
//		}, events.All...)
//	}
package outboxtest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/relaybox/relaybox/outbox"
	"github.com/relaybox/relaybox/schemacheck"
)

// UpdateVar is the environment variable that makes RequireGitCompatible rewrite the
// schema files from the event types instead of failing when they differ.
const UpdateVar = "RELAYBOX_UPDATE_SCHEMAS"

// RequireRegistryCompatible fails t (t.Errorf per problem) when an event schema is
// incompatible with what the registry holds for its subject, under the subject's
// level, with subjects named as a writer configured by cfg (nil for the defaults)
// names them. It is outbox.CheckSchemas in a test.
func RequireRegistryCompatible(t testing.TB, reg outbox.SchemaChecker, cfg *outbox.Config, events ...outbox.EventSchema) {
	t.Helper()
	err := outbox.CheckSchemas(context.Background(), reg, cfg, events...)
	if se, ok := err.(*outbox.SchemaError); ok {
		for _, p := range se.Problems {
			t.Errorf("incompatible schema: %s", p)
		}
		return
	}
	if err != nil {
		t.Fatalf("checking schemas against the registry: %v", err)
	}
}

// GitOptions configures RequireGitCompatible.
type GitOptions struct {
	// Dir holds the committed schema files, one <subject>.avsc per event schema. It
	// must be inside a git repository. Required.
	Dir string
	// Against is the git ref to compare with, e.g. "origin/main". Required.
	Against string
	// Level is the compatibility level. Defaults to schemacheck.DefaultLevel (FULL).
	// The _TRANSITIVE levels check every version the file had in the ref's history.
	Level schemacheck.Level
	// Config names the subjects as the service's writer does. Nil for the defaults.
	Config *outbox.Config
}

// RequireGitCompatible fails t when an event's schema is incompatible with its file
// in o.Dir as it stood at o.Against (a file absent there is new: nothing to check),
// and when the file in the working tree differs from the event type (the committed
// files are then stale: rerun with RELAYBOX_UPDATE_SCHEMAS=1 and commit them).
func RequireGitCompatible(t testing.TB, o GitOptions, events ...outbox.EventSchema) {
	t.Helper()
	if o.Dir == "" || o.Against == "" {
		t.Fatal("outboxtest.GitOptions: Dir and Against are required")
	}
	if o.Level == "" {
		o.Level = schemacheck.DefaultLevel
	}
	update := os.Getenv(UpdateVar) == "1"
	for _, e := range events {
		subject, text, err := e.Subject(o.Config)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(o.Dir, subject+".avsc")
		want, err := FileText(text)
		if err != nil {
			t.Fatal(err)
		}
		older, err := schemacheck.GitVersions(context.Background(), ".", o.Against, file, o.Level.Transitive())
		if err != nil {
			t.Fatal(err)
		}
		problems, err := schemacheck.Compare(older, text, o.Level)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, p := range problems {
			p.Subject, p.File = subject, file
			t.Errorf("incompatible schema: %s", p)
		}
		got, err := os.ReadFile(file)
		switch {
		case update && !bytes.Equal(got, want):
			if err := os.MkdirAll(o.Dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, want, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", file)
		case err != nil && os.IsNotExist(err):
			t.Errorf("%s missing: run the test with %s=1 and commit it", file, UpdateVar)
		case err != nil:
			t.Fatal(err)
		case !bytes.Equal(got, want):
			t.Errorf("%s differs from the event type's schema: run the test with %s=1 and commit it", file, UpdateVar)
		}
	}
}

// FileText is the content RequireGitCompatible writes for a schema: indented JSON with
// a final newline, so that a reviewer reads the change in the diff.
func FileText(schema string) ([]byte, error) {
	var b bytes.Buffer
	if err := json.Indent(&b, []byte(schema), "", "  "); err != nil {
		return nil, err
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}
