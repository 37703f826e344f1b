package cli

import (
	"context"
	"fmt"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"

	"github.com/relaybox/relaybox/relay"
)

// The CLI's registry: the relay's collectors, the status collector and the Go and
// process collectors. A status query that fails (Postgres down) costs only its own
// series: the scrape still succeeds, with relaybox_scrape_error 1 and every other
// metric.
func TestMetrics_FailedStatusQueryCostsOnlyItsOwnSeries(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	pool, err := pgxpool.New(context.Background(), fmt.Sprintf("postgres://u:p@%s/db?sslmode=disable&connect_timeout=2", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg, m, err := newRelayRegistry(pool, "relaybox")
	if err != nil {
		t.Fatal(err)
	}
	cfg := relay.Config{ExactlyOnce: true}
	m.Install(&cfg)
	cfg.Hooks.OnError(relay.ErrorEvent{Kind: relay.ErrorPostgres, Err: fmt.Errorf("down")})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("scrape failed as a whole: %v", err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	if mf := got["relaybox_scrape_error"]; mf == nil || mf.Metric[0].GetGauge().GetValue() != 1 {
		t.Fatalf("relaybox_scrape_error = %v, want 1", mf)
	}
	for _, n := range []string{"relaybox_relay_errors_total", "relaybox_relay_published_total", "relaybox_relay_mode",
		"go_goroutines", "process_start_time_seconds"} {
		if got[n] == nil {
			t.Errorf("%s is missing from the scrape", n)
		}
	}
	if got["relaybox_outbox_backlog"] != nil {
		t.Fatal("a backlog series was emitted without a status")
	}
}
