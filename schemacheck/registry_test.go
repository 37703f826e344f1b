package schemacheck_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/relaybox/relaybox/schemacheck"
)

// confluentLike answers as Confluent Schema Registry does: subject "held" has one
// version (schema text held) and level FULL, and refuses everything with a verbose
// message; the global level is BACKWARD; other subjects are unknown (404, 40401).
func confluentLike(t *testing.T, held string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.schemaregistry.v1+json")
		switch r.Method + " " + r.URL.Path {
		case "POST /compatibility/subjects/held/versions/latest":
			if r.URL.Query().Get("verbose") != "true" {
				t.Errorf("compatibility asked without verbose=true")
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"is_compatible": false, "messages": []string{"READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1"}})
		case "GET /config":
			_ = json.NewEncoder(w).Encode(map[string]string{"compatibilityLevel": "BACKWARD"})
		case "GET /config/held":
			_ = json.NewEncoder(w).Encode(map[string]string{"compatibilityLevel": "FULL"})
		case "GET /subjects/held/versions":
			_ = json.NewEncoder(w).Encode([]int{1})
		case "GET /subjects/held/versions/1":
			_ = json.NewEncoder(w).Encode(map[string]any{"subject": "held", "version": 1, "id": 1, "schema": held})
		default:
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(map[string]any{"error_code": 40401, "message": "Subject not found."})
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestRegistryCheck_ConfluentAnswers(t *testing.T) {
	schema := `{"type":"record","name":"A","fields":[{"name":"a","type":"string"}]}`
	reg := schemacheck.NewRegistry(confluentLike(t, schema), nil)
	ctx := context.Background()

	// A subject with no version: nothing to check.
	if ps, err := reg.Check(ctx, "new-value", schema); err != nil || len(ps) != 0 {
		t.Fatalf("unknown subject: %v %v", ps, err)
	}
	// The registry refuses what the walk cannot explain: its own reasons are kept.
	ps, err := reg.Check(ctx, "held", schema)
	if err != nil || len(ps) != 1 {
		t.Fatalf("refused: %v %v", ps, err)
	}
	want := "subject held: the registry refuses it under FULL: READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1 [against latest registered version]"
	if ps[0].String() != want || ps[0].Level != schemacheck.Full {
		t.Fatalf("got  %q\nwant %q", ps[0].String(), want)
	}
	// A subject without a level of its own (Confluent: 404 on /config/{subject}) has
	// the global one.
	if l, global, err := reg.Level(ctx, "new-value"); err != nil || l != schemacheck.Backward || !global {
		t.Fatalf("level of a subject without its own: %v %v %v", l, global, err)
	}
	if l, global, err := reg.Level(ctx, "held"); err != nil || l != schemacheck.Full || global {
		t.Fatalf("level of held: %v %v %v", l, global, err)
	}
	if _, err := reg.Check(ctx, "held", `{"type":`); err == nil {
		t.Fatal("an invalid schema was sent to the registry")
	}
}
