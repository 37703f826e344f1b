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

// A status query that fails (Postgres down) costs only its own series: the scrape
// still succeeds, with relaybox_scrape_error 1 and every other metric.
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
	admin, err := relay.NewAdmin(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := newRelayMetrics(admin)
	m.hooks().OnError(relay.ErrorEvent{Kind: relay.ErrorPostgres, Err: fmt.Errorf("down")})
	mfs, err := m.registry.Gather()
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
	if got["relaybox_relay_errors_total"] == nil || got["relaybox_relay_published_total"] == nil {
		t.Fatal("the hook-fed series are missing from the scrape")
	}
	if got["relaybox_outbox_backlog"] != nil {
		t.Fatal("a backlog series was emitted without a status")
	}
}
