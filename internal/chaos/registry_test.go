package chaos

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// schemaText is version v of the Tick schema: v 1 has the Go type's fields (key,
// seq); each later version adds a long field with a default, so every version is
// BACKWARD compatible with the one before and the consumers' reader schema (Tick)
// reads all. A writer switching version means a schema the relays have never
// resolved: they must look its id up in the registry before they can publish.
func schemaText(v int) string {
	fields := []string{`{"name":"key","type":"string"}`, `{"name":"seq","type":"long"}`}
	for i := 2; i <= v; i++ {
		fields = append(fields, fmt.Sprintf(`{"name":"v%d","type":"long","default":%d}`, i, i))
	}
	return `{"type":"record","name":"Tick","fields":[` + strings.Join(fields, ",") + `]}`
}

// registryProxy sits between the relays and consumers and the registry. It makes the
// registry pauses: while paused it holds every request (the registry does not answer),
// and forwards those whose client still waits when the pause ends. It counts the
// requests that arrived during a pause and were not answered (the client gave up, or
// the upstream failed): the observed harm of a registry_pause.
//
// The pause is made here rather than by freezing the registry (SIGSTOP): Apicurio
// frozen in the middle of a registration kept a transaction of its H2 store open
// after it resumed, and every later registration waited on that row lock (seed
// 1796029200983974505: no schema could be registered for the rest of the run).
type registryProxy struct {
	url    string
	window atomic.Pointer[registryWindow]
	hold   atomic.Pointer[chan struct{}] // closed when the pause ends
	failed atomic.Int64                  // all requests not answered, over the run
}

// registerVersions registers schema versions 1..n under subject, in order, over
// plain HTTP, before the relays start.
//
// The relays then only look ids up (--auto-register=false): with the relays
// registering each new version themselves (three at once, with a 3 s timeout, around
// the pauses), Apicurio's registration path hung for the rest of the run twice at
// seed 1796029200983974505, once with the registry frozen by SIGSTOP and once with
// the pause made at the proxy: jstack showed 53 request threads blocked in
// AbstractSqlRegistryStorage.nextSequenceValue behind one waiting on an H2 row lock
// (org.h2.mvstore.tx.Transaction.waitForThisToEnd) that was never released, while
// reads kept answering. That is the test registry failing, not relaybox.
func registerVersions(t *testing.T, regURL, subject string, n int) {
	t.Helper()
	for v := 1; v <= n; v++ {
		registerSchema(t, regURL, subject, schemaText(v))
	}
}

// registryWindow counts the requests that arrived during one pause.
type registryWindow struct {
	arrived, refused, inflight atomic.Int64
}

func newRegistryProxy(t *testing.T, upstream string) *registryProxy {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	base := u.Path // the Confluent-compatible base path, e.g. /apis/ccompat/v7
	u.Path = ""
	p := &registryProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
		http.Error(w, "registry proxy: "+err.Error(), http.StatusBadGateway)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		win := p.window.Load()
		if win != nil {
			win.arrived.Add(1)
			win.inflight.Add(1)
			defer win.inflight.Add(-1)
		}
		if hold := p.hold.Load(); hold != nil {
			select {
			case <-*hold:
			case <-r.Context().Done(): // the client gave up while the registry was paused
				p.failed.Add(1)
				if win != nil {
					win.refused.Add(1)
				}
				return
			}
		}
		sw := &statusWriter{ResponseWriter: w}
		rp.ServeHTTP(sw, r)
		if sw.status == 0 || sw.status >= 500 || r.Context().Err() != nil {
			p.failed.Add(1)
			if win != nil {
				win.refused.Add(1)
			}
		}
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL + base
	return p
}

// open starts counting a pause window; close stops attributing new arrivals to it.
func (p *registryProxy) open() *registryWindow {
	w := &registryWindow{}
	p.window.Store(w)
	return w
}

func (p *registryProxy) close() { p.window.Store(nil) }

// pause holds every request for d, counting them in a window it returns.
func (p *registryProxy) pause(d time.Duration) *registryWindow {
	w, end := p.startPause()
	time.Sleep(d)
	end()
	return w
}

// startPause holds every request until end is called, counting them in w.
func (p *registryProxy) startPause() (w *registryWindow, end func()) {
	w = p.open()
	hold := make(chan struct{})
	p.hold.Store(&hold)
	return w, func() {
		p.hold.Store(nil)
		close(hold)
		p.close()
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
