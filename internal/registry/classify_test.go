package registry

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/relaybox/relaybox/internal/testenv"
)

// A registry in read-only mode answers registrations with 42205 ("operation not
// permitted"): that says nothing about the schema, so it is an outage to wait out,
// not an incompatible schema to park. The proxy passes everything else to the real
// registry.
func TestClient_ReadOnlyModeIsUnavailableNotIncompatible(t *testing.T) {
	target, err := url.Parse(testenv.RegistryURL(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: target.Scheme, Host: target.Host})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/subjects/") {
			w.Header().Set("Content-Type", "application/vnd.schemaregistry.v1+json")
			w.WriteHeader(http.StatusUnprocessableEntity)
			_, _ = w.Write([]byte(`{"error_code":42205,"message":"Subject t is in read-only mode"}`))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	c := New(srv.URL+target.Path, Options{})
	if err := c.Check(context.Background()); err != nil {
		t.Fatalf("registry behind the proxy: %v", err)
	}
	subject := testenv.Name(t, "ro") + "-value"
	_, err = c.ID(context.Background(), subject, `{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}`, true)
	if err == nil {
		t.Fatal("registration in read-only mode succeeded")
	}
	if IsIncompatible(err) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("read-only answer %v: incompatible %v, unavailable %v; want unavailable only", err, IsIncompatible(err), errors.Is(err, ErrUnavailable))
	}
}

// The registry URL's userinfo password never reaches an error text.
func TestClient_ErrorsCarryNoURLPassword(t *testing.T) {
	c := New("http://user:Zq9-url-s3cret@127.0.0.1:1/apis/ccompat/v7", Options{})
	err := c.Check(context.Background())
	if err == nil || strings.Contains(err.Error(), "Zq9-url-s3cret") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Check on an unreachable registry: %v; want an error naming the host, without the password", err)
	}
}
