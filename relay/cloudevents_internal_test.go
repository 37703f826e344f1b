package relay

import (
	"context"
	"strings"
	"testing"
)

func TestCloudEventsConfig_DefaultsAndRefusals(t *testing.T) {
	withDefaults := func(c Config) (*Config, error) { // as New takes a Config
		if err := c.Validate(); err != nil {
			return nil, err
		}
		return c.WithDefaults(), nil
	}
	base := Config{Brokers: []string{"127.0.0.1:1"}, Schema: "my schema",
		RegistryURL: "https://reg-user:reg-pa55word@registry.example:8081/apis/ccompat/v7/?key=k3y-s3cret#x"}

	c, err := withDefaults(base)
	if err != nil || c.CloudEvents.on("any") || c.CloudEvents.SchemaURL != "" {
		t.Fatalf("off by default: on=%v schemaURL=%q err=%v", c.CloudEvents.on("any"), c.CloudEvents.SchemaURL, err)
	}

	base.CloudEvents = CloudEvents{Enabled: true}
	c, err = withDefaults(base)
	if err != nil {
		t.Fatal(err)
	}
	if !c.CloudEvents.on("any") {
		t.Error("Enabled: not on for every topic")
	}
	if got, want := c.CloudEvents.SchemaURL, "https://registry.example:8081/apis/ccompat/v7"; got != want {
		t.Errorf("SchemaURL from RegistryURL = %q, want %q (no userinfo, query, fragment)", got, want)
	}
	if got, want := c.CloudEvents.Source, "/relaybox/my%20schema"; got != want {
		t.Errorf("default Source = %q, want %q", got, want)
	}

	base.CloudEvents = CloudEvents{Topics: []string{"a", "b"}, Source: "urn:acme:orders", SchemaURL: "http://public-registry/"}
	c, err = withDefaults(base)
	if err != nil {
		t.Fatal(err)
	}
	if !c.CloudEvents.on("a") || c.CloudEvents.on("c") || c.CloudEvents.Source != "urn:acme:orders" ||
		c.CloudEvents.SchemaURL != "http://public-registry" {
		t.Errorf("Topics: on(a)=%v on(c)=%v source=%q schemaURL=%q", c.CloudEvents.on("a"), c.CloudEvents.on("c"),
			c.CloudEvents.Source, c.CloudEvents.SchemaURL)
	}

	// A custom Registry without a URL: no ce_dataschema, the rest as usual.
	custom := Config{Brokers: []string{"127.0.0.1:1"}, Registry: sentinelRegistry{}, CloudEvents: CloudEvents{Enabled: true}}
	if c, err := withDefaults(custom); err != nil || c.CloudEvents.SchemaURL != "" || c.CloudEvents.Source != "/relaybox/relaybox" {
		t.Errorf("custom registry: schemaURL=%q source=%q err=%v", c.CloudEvents.SchemaURL, c.CloudEvents.Source, err)
	}

	for name, ce := range map[string]CloudEvents{
		"Enabled (every topic) or Config.CloudEvents.Topics": {Enabled: true, Topics: []string{"a"}},
		"Topics":    {Topics: []string{""}},
		"Source":    {Enabled: true, Source: "not a uri"},
		"SchemaURL": {Enabled: true, SchemaURL: "ftp://u:sch3ma-pa55@host/x"},
	} {
		bad := base
		bad.CloudEvents = ce
		_, err := withDefaults(bad)
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err %v, want a refusal naming the field", name, err)
			continue
		}
		if strings.Contains(err.Error(), "pa55") {
			t.Errorf("%s: the error shows a password: %v", name, err)
		}
	}
}

type sentinelRegistry struct{}

func (sentinelRegistry) ID(_ context.Context, _, _ string, _ bool) (int, error) { return 1, nil }
