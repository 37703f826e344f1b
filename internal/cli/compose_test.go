package cli

import (
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// No Docker engine runs here: this test checks docker-compose.yml against the code
// instead (services, health checks, ports, and every variable is one the code reads).

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Build       any               `yaml:"build"`
		Command     []string          `yaml:"command"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
}

func TestDockerCompose_MatchesTheCode(t *testing.T) {
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	for _, name := range []string{"postgres", "kafka", "registry", "migrate", "relay", "orders", "inventory"} {
		s, ok := c.Services[name]
		if !ok {
			t.Fatalf("service %s missing", name)
		}
		if name != "migrate" && (s.Healthcheck == nil || len(s.Healthcheck.Test) == 0) {
			t.Errorf("service %s has no health check", name)
		}
		if name != "migrate" && len(s.Ports) == 0 {
			t.Errorf("service %s publishes no port", name)
		}
		for dep, d := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("%s depends on unknown service %s", name, dep)
			}
			if !slices.Contains([]string{"service_healthy", "service_completed_successfully", "service_started"}, d.Condition) {
				t.Errorf("%s: depends_on %s condition %q", name, dep, d.Condition)
			}
			if d.Condition == "service_healthy" && c.Services[dep].Healthcheck == nil {
				t.Errorf("%s waits for %s to be healthy, which has no health check", name, dep)
			}
		}
	}
	// Every variable given to a relaybox command is one it reads.
	known := EnvVars()
	for _, name := range []string{"migrate", "relay"} {
		for k := range c.Services[name].Environment {
			if !slices.Contains(known, k) {
				t.Errorf("service %s sets %s, which relaybox does not read", name, k)
			}
		}
	}
	if got := c.Services["relay"].Command; len(got) == 0 || got[0] != "relay" {
		t.Errorf("relay service command %v", got)
	}
	if got := c.Services["migrate"].Command; len(got) < 2 || got[0] != "migrate" || got[1] != "up" {
		t.Errorf("migrate service command %v", got)
	}
	// Example services: every variable is one their code reads.
	for _, name := range []string{"orders", "inventory"} {
		src := exampleSource(t, name)
		for k := range c.Services[name].Environment {
			if !strings.Contains(src, `"`+k+`"`) {
				t.Errorf("service %s sets %s, which examples/%s does not read", name, k, name)
			}
		}
	}
	// Addresses point at the services and ports that serve them.
	env := c.Services["relay"].Environment
	u, err := url.Parse(env["DATABASE_URL"])
	if err != nil || u.Hostname() != "postgres" || u.Port() != "5432" {
		t.Errorf("relay DATABASE_URL %q does not point at postgres:5432", env["DATABASE_URL"])
	}
	if !strings.Contains(c.Services["kafka"].Environment["KAFKA_ADVERTISED_LISTENERS"], "//"+env["KAFKA_BROKERS"]) {
		t.Errorf("KAFKA_BROKERS %q is not a listener kafka advertises", env["KAFKA_BROKERS"])
	}
	ru, err := url.Parse(env["SCHEMA_REGISTRY_URL"])
	if err != nil || ru.Hostname() != "registry" || !strings.HasSuffix(ru.Path, "/apis/ccompat/v7") || !hasPort(c.Services["registry"].Ports, ru.Port()) {
		t.Errorf("SCHEMA_REGISTRY_URL %q does not point at the registry's ccompat API", env["SCHEMA_REGISTRY_URL"])
	}
	metricsPort := strings.TrimPrefix(env["RELAYBOX_METRICS_ADDR"], ":")
	if !hasPort(c.Services["relay"].Ports, metricsPort) || !strings.Contains(strings.Join(c.Services["relay"].Healthcheck.Test, " "), ":"+metricsPort+"/readyz") {
		t.Errorf("relay metrics port %s not published or not health-checked", metricsPort)
	}
	for _, name := range []string{"orders", "inventory"} {
		s := c.Services[name]
		var addr string
		for k, v := range s.Environment {
			if strings.HasSuffix(k, "_ADDR") {
				addr = strings.TrimPrefix(v, ":")
			}
		}
		if addr == "" || !hasPort(s.Ports, addr) || !strings.Contains(strings.Join(s.Healthcheck.Test, " "), ":"+addr+"/healthz") {
			t.Errorf("%s: listen port %q not published or not health-checked", name, addr)
		}
	}
	if _, err := os.Stat("../../Dockerfile"); err != nil {
		t.Errorf("services build from . but Dockerfile is missing")
	}
}

var portRE = regexp.MustCompile(`(\d+)"?$`)

func hasPort(ports []string, container string) bool {
	for _, p := range ports {
		if m := portRE.FindStringSubmatch(p); m != nil && m[1] == container {
			return true
		}
	}
	return false
}

func exampleSource(t *testing.T, name string) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join("../../examples", name, "*.go"))
	if len(files) == 0 {
		t.Fatalf("examples/%s has no Go files", name)
	}
	var sb strings.Builder
	for _, f := range files {
		b, _ := os.ReadFile(f)
		sb.Write(b)
	}
	return sb.String()
}
