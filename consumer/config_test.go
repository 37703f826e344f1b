package consumer_test

import (
	"strings"
	"testing"
	"time"

	"github.com/relaybox/relaybox/consumer"
)

// Validate names the field that cannot work, as New does; unset fields take their
// exported defaults.
func TestConfig_ValidateNamesTheField(t *testing.T) {
	base := consumer.Config{Group: "g", Topics: []string{"t"}, Brokers: []string{"localhost:1"}, RegistryURL: "http://localhost:1"}
	if err := base.Validate(); err != nil {
		t.Fatalf("a minimal config: %v", err)
	}
	for _, tc := range []struct {
		name string
		set  func(*consumer.Config)
		want string
	}{
		{"no group", func(c *consumer.Config) { c.Group = "" }, "Config.Group"},
		{"registry timeout negative", func(c *consumer.Config) { c.RegistryTimeout = -time.Second }, "Config.RegistryTimeout must not be negative"},
		{"backoff above its cap", func(c *consumer.Config) { c.RetryBackoff = time.Minute }, "Config.RetryBackoff (1m0s) must be between 0 and Config.MaxRetryBackoff (10s)"},
		{"max batch negative", func(c *consumer.Config) { c.MaxBatch = -1 }, "Config.MaxBatch"},
		{"commit interval negative", func(c *consumer.Config) { c.CommitInterval = -time.Second }, "Config.CommitInterval"},
		{"clean batch negative", func(c *consumer.Config) { c.CleanBatch = -1 }, "CleanBatch must be positive"},
	} {
		cfg := base
		tc.set(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", tc.name, err, tc.want)
		}
		if _, nerr := consumer.New(nopPool, &cfg); nerr == nil || nerr.Error() != err.Error() {
			t.Errorf("%s: New = %v, want Validate's error", tc.name, nerr)
		}
	}
}

func TestConfig_WithDefaultsFillsTheExportedDefaults(t *testing.T) {
	c := (*consumer.Config)(nil).WithDefaults()
	if c.MaxAttempts != consumer.DefaultMaxAttempts || c.RetryBackoff != consumer.DefaultRetryBackoff ||
		c.MaxRetryBackoff != consumer.DefaultMaxRetryBackoff || c.DeadLetterSuffix != consumer.DefaultDeadLetterSuffix ||
		c.MaxBatch != consumer.DefaultMaxBatch || c.CommitInterval != consumer.DefaultCommitInterval ||
		c.MaxPollRecords != consumer.DefaultMaxPollRecords || c.MaxBufferedPerPartition != consumer.DefaultMaxBufferedPerPartition ||
		c.CleanInterval != consumer.DefaultCleanInterval || c.CleanBatch != consumer.DefaultCleanBatch ||
		c.RegistryTimeout != consumer.DefaultRegistryTimeout || c.SchemaNotFoundGrace != consumer.DefaultSchemaNotFoundGrace {
		t.Fatalf("WithDefaults() = %+v", c)
	}
	if got := c.DeadLetterTopic("orders"); got != "orders"+consumer.DefaultDeadLetterSuffix {
		t.Fatalf("default dead-letter topic of orders = %q", got)
	}
}
