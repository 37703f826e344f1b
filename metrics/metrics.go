package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultNamespace is the default of RelayOpts.Namespace and ConsumerOpts.Namespace:
// the first part of every metric name.
const DefaultNamespace = "relaybox"

// registry is what a Relay or a Consumer registers into and serves.
type registry struct {
	reg prometheus.Registerer
	gat prometheus.Gatherer
}

// newRegistry resolves the Registerer and Gatherer of an Opts: a fresh registry when
// neither is set.
func newRegistry(reg prometheus.Registerer, gat prometheus.Gatherer) registry {
	if reg == nil {
		r := prometheus.NewRegistry()
		return registry{reg: r, gat: r}
	}
	if gat == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			gat = g
		} else {
			gat = prometheus.DefaultGatherer
		}
	}
	return registry{reg: reg, gat: gat}
}

// register registers every collector, or none: on the first failure the ones
// registered are unregistered again.
func (r registry) register(cs ...prometheus.Collector) error {
	for i, c := range cs {
		if err := r.reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				r.reg.Unregister(done)
			}
			return err
		}
	}
	return nil
}

// handler serves the gatherer in the Prometheus exposition format. A collector
// that fails is reported in the response rather than failing the scrape
// (promhttp.ContinueOnError), so that one failure costs only its own series.
func (r registry) handler() http.Handler {
	return promhttp.HandlerFor(r.gat, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// chain returns a hook calling prev (if any), then next.
func chain[E any](prev, next func(E)) func(E) {
	if prev == nil {
		return next
	}
	return func(e E) {
		prev(e)
		next(e)
	}
}
