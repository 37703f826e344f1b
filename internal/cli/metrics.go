package cli

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/relaybox/relaybox/metrics"
)

// newRelayRegistry is what `relaybox relay` serves on /metrics: the relay's
// collectors of package metrics (with the status collector: backlog, oldest age and
// parked counts are read from Postgres at scrape time, so every replica reports the
// same truth) and the Go runtime's and the process's.
func newRelayRegistry(pool *pgxpool.Pool, schema string) (*prometheus.Registry, *metrics.Relay, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.NewRelay(&metrics.RelayOpts{Registerer: reg, Pool: pool, Schema: schema})
	if err != nil {
		return nil, nil, err
	}
	return reg, m, nil
}
