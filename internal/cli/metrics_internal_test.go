package cli

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The CLI's registry: package metrics' relay collectors with the status collector
// (whose failure costs only its own series: tested in package metrics), and the Go
// runtime's and the process's collectors. Postgres is unreachable here (port 1): the
// scrape still succeeds as a whole.
func TestMetrics_RegistryServesRelayStatusAndRuntimeSeries(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://u:p@127.0.0.1:1/db?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg, _, err := newRelayRegistry(pool, "relaybox")
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("scrape failed as a whole: %v", err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, n := range []string{"relaybox_scrape_error", "relaybox_relay_errors_total", "relaybox_relay_published_total",
		"go_goroutines", "process_start_time_seconds"} {
		if !got[n] {
			t.Errorf("%s is missing from the scrape", n)
		}
	}
}
