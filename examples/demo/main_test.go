package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/relaybox/relaybox/internal/pgtemp"
	"github.com/relaybox/relaybox/internal/testenv"
)

func demoSummary(t *testing.T, args ...string) DemoSummary {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"--json"}, args...), &stdout, &stderr)
	out, errs := stdout.String(), stderr.String()
	var s DemoSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("demo exit %d, stdout %q is not one JSON object: %v\nstderr: %s", code, out, err, errs)
	}
	if code != 0 {
		t.Fatalf("demo exit %d: %+v\nstderr: %s", code, s, errs)
	}
	if s.Written == 0 || s.Written != s.Published || s.Written != s.Consumed || s.Written != s.Effects ||
		s.OrderViolations != 0 || s.DuplicateEffects != 0 || !s.StockMatches {
		t.Fatalf("demo summary does not verify: %+v", s)
	}
	return s
}

// The orders service and the inventory consumer on the real Postgres, Kafka and
// registry: 1k orders created, modified and a third deleted, concurrently; stock equals
// what the orders table says.
func TestDemo_OrdersAndInventoryOnRealServices(t *testing.T) {
	testenv.DatabaseURL(t)
	testenv.Brokers(t)
	testenv.RegistryURL(t)
	s := demoSummary(t, "--orders", "1000")
	if s.Kafka != "KAFKA_BROKERS" || s.Registry != "SCHEMA_REGISTRY_URL" || s.Written != 2334 {
		t.Fatalf("summary %+v (want 1000 created + 1000 modified + 334 deleted on the real services)", s)
	}
	t.Logf("real services: %+v", s)
}

// The README's first command: embedded defaults (throwaway Postgres from the local
// binaries, kfake, srfake).
func TestDemo_EmbeddedDefaults(t *testing.T) {
	if testenv.Required() {
		// make test installs PostgreSQL: the throwaway cluster must work there.
	} else if _, err := pgtemp.FindBinaries(); err != nil {
		t.Skip("no local PostgreSQL binaries: " + err.Error())
	}
	t.Setenv("DATABASE_URL", "")
	t.Setenv("KAFKA_BROKERS", "")
	t.Setenv("SCHEMA_REGISTRY_URL", "")
	s := demoSummary(t, "--orders", "100")
	if s.Kafka != "in-process kfake" || s.Registry != "in-process srfake" {
		t.Fatalf("summary %+v", s)
	}
}

// A password in a connection URL reaches no output: not the usage (flag defaults never
// come from the environment), not the error of an unreachable Postgres.
func TestDemo_NoPasswordInOutput(t *testing.T) {
	const leak = "demo-pw-LEAK-7f3a"
	t.Setenv("DATABASE_URL", "postgres://u:"+leak+"@127.0.0.1:1/x?sslmode=disable&connect_timeout=1")
	t.Setenv("KAFKA_BROKERS", "")
	t.Setenv("SCHEMA_REGISTRY_URL", "http://u:"+leak+"@127.0.0.1:1")
	for _, args := range [][]string{{"-h"}, {"--no-such-flag"}, {"--orders", "1", "--timeout", "30s"}} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, &stdout, &stderr)
		out := stdout.String() + stderr.String()
		if strings.Contains(out, leak) {
			t.Errorf("demo %v (exit %d) printed the password:\n%s", args, code, out)
		}
		if strings.TrimSpace(out) == "" {
			t.Errorf("demo %v: exit %d without a word", args, code)
		}
		if args[0] == "--orders" && (code != 1 || !strings.Contains(out, "postgres unreachable")) {
			t.Errorf("demo on an unreachable Postgres: exit %d, want 1 and %q:\n%s", code, "postgres unreachable", out)
		}
	}
}
