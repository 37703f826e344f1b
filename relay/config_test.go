package relay_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaybox/relaybox/relay"
)

// Validate names the field that cannot work; unset fields take their defaults.
func TestConfig_ValidateNamesTheField(t *testing.T) {
	valid := func() *relay.Config {
		return &relay.Config{Brokers: []string{"127.0.0.1:1"}, RegistryURL: "http://127.0.0.1:1"}
	}
	if err := valid().Validate(); err != nil {
		t.Fatalf("a config with only brokers and a registry URL: %v", err)
	}
	pool, err := pgxpool.New(context.Background(), "postgres://u:p@127.0.0.1:1/db") // connects lazily: never here
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, tc := range []struct {
		name string
		set  func(*relay.Config)
		want string
	}{
		{"no registry", func(c *relay.Config) { c.RegistryURL = "" }, "Config.RegistryURL"},
		{"registry URL without scheme", func(c *relay.Config) { c.RegistryURL = "registry:8081" }, "Config.RegistryURL: want http(s)"},
		{"no brokers", func(c *relay.Config) { c.Brokers = nil }, "Config.Brokers"},
		{"batch size negative", func(c *relay.Config) { c.BatchSize = -1 }, "Config.BatchSize must be 1..100000"},
		{"batch size too large", func(c *relay.Config) { c.BatchSize = relay.MaxBatchSize + 1 }, "Config.BatchSize"},
		{"in-flight batches negative", func(c *relay.Config) { c.MaxInFlightBatches = -2 }, "Config.MaxInFlightBatches"},
		{"heartbeat too slow", func(c *relay.Config) { c.LeaseTTL, c.HeartbeatInterval = 10*time.Second, 5*time.Second }, "Config.HeartbeatInterval (5s) must be under half of LeaseTTL (10s)"},
		{"heartbeat negative", func(c *relay.Config) { c.HeartbeatInterval = -time.Second }, "Config.HeartbeatInterval must not be negative"},
		{"lease TTL negative", func(c *relay.Config) { c.LeaseTTL = -time.Second }, "Config.LeaseTTL must not be negative"},
		{"poll interval negative", func(c *relay.Config) { c.PollInterval = -time.Second }, "Config.PollInterval must not be negative"},
		{"retention negative", func(c *relay.Config) { c.Retention = -time.Hour }, "Config.Retention must not be negative"},
		{"shutdown grace negative", func(c *relay.Config) { c.ShutdownGrace = -time.Second }, "Config.ShutdownGrace must not be negative"},
		{"registry timeout negative", func(c *relay.Config) { c.RegistryTimeout = -time.Second }, "Config.RegistryTimeout must not be negative"},
		{"compression unknown", func(c *relay.Config) { c.Compression = "brotli" }, `Config.Compression "brotli"`},
		{"record bytes negative", func(c *relay.Config) { c.MaxRecordBytes = -1 }, "Config.MaxRecordBytes must be positive"},
		{"topic partitions negative", func(c *relay.Config) { c.TopicPartitions = -1 }, "Config.TopicPartitions must be positive"},
		{"channel too long", func(c *relay.Config) { c.Channel = strings.Repeat("c", 64) }, "Config.Channel is 64 bytes"},
	} {
		c := valid()
		tc.set(c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", tc.name, err, tc.want)
		}
		if _, nerr := relay.New(pool, c); nerr == nil || nerr.Error() != err.Error() {
			t.Errorf("%s: New(pool, cfg) = %v, want Validate's error", tc.name, nerr)
		}
	}
}

// The registry URL may carry a password: Validate's error does not show it.
func TestConfig_ValidateHidesTheRegistryURL(t *testing.T) {
	c := &relay.Config{Brokers: []string{"127.0.0.1:1"}, RegistryURL: "registry-user:s3cret@registry:8081"}
	if err := c.Validate(); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Validate() = %v; want an error without the password", err)
	}
}

func TestConfig_WithDefaultsFillsTheExportedDefaults(t *testing.T) {
	var nilCfg *relay.Config
	c := nilCfg.WithDefaults()
	if c.BatchSize != relay.DefaultBatchSize || c.MaxInFlightBatches != relay.DefaultMaxInFlightBatches ||
		c.LeaseTTL != relay.DefaultLeaseTTL || c.HeartbeatInterval != relay.DefaultLeaseTTL/relay.DefaultHeartbeatDivisor ||
		c.PollInterval != relay.DefaultPollInterval || c.Compression != relay.DefaultCompression || c.Linger != relay.DefaultLinger ||
		c.RegistryTimeout != relay.DefaultRegistryTimeout || c.Schema != "relaybox" || c.Channel != "relaybox_outbox" ||
		c.ReplicaID == "" || c.Logger == nil || c.DisableAutoRegister != !relay.DefaultAutoRegister {
		t.Fatalf("WithDefaults() = %+v", c)
	}
	set := &relay.Config{BatchSize: 7, LeaseTTL: time.Minute}
	if c := set.WithDefaults(); c.BatchSize != 7 || c.HeartbeatInterval != time.Minute/relay.DefaultHeartbeatDivisor || set.HeartbeatInterval != 0 {
		t.Fatalf("WithDefaults kept BatchSize %d, heartbeat %s; the original's heartbeat %s (must not change)", c.BatchSize, c.HeartbeatInterval, set.HeartbeatInterval)
	}
}

func TestNew_RefusesANilPool(t *testing.T) {
	if _, err := relay.New(nil, &relay.Config{Brokers: []string{"127.0.0.1:1"}, RegistryURL: "http://127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "nil pool") {
		t.Fatalf("New(nil pool) = %v", err)
	}
}

func TestAdminConfig_Validate(t *testing.T) {
	if err := (*relay.AdminConfig)(nil).Validate(); err != nil {
		t.Fatalf("nil AdminConfig: %v", err)
	}
	if err := (&relay.AdminConfig{Channel: strings.Repeat("c", 64)}).Validate(); err == nil || !strings.Contains(err.Error(), "AdminConfig.Channel") {
		t.Fatalf("a 64-byte channel: %v", err)
	}
	if err := (&relay.AdminConfig{Schema: "a\x00b"}).Validate(); err == nil || !strings.Contains(err.Error(), "AdminConfig.Schema") {
		t.Fatalf("a schema with NUL: %v", err)
	}
	if _, err := relay.NewAdmin(nil, nil); err == nil || !strings.Contains(err.Error(), "nil pool") {
		t.Fatalf("NewAdmin(nil) = %v", err)
	}
}
