package cli

import (
	"os"
	"strings"
	"testing"

	"github.com/relaybox/relaybox/internal/redact"
)

// FuzzRelayConfig feeds arbitrary flag values and environment values to the relay's
// configuration parsing: it never panics; a bad value is an error naming the flag or
// the variable; Kafka options build or fail with an error.
func FuzzRelayConfig(f *testing.F) {
	f.Add("--batch-size", "lots", "RELAYBOX_LEASE_TTL", "15s", "SCRAM-SHA-256")
	f.Add("--poll-interval", "-1s", "RELAYBOX_BATCH_SIZE", "x", "PLAIN")
	f.Add("--schema", `x"; DROP TABLE y; --`, "KAFKA_TLS", "maybe", "GSSAPI")
	f.Fuzz(func(t *testing.T, flagName, flagValue, envName, envValue, mech string) {
		if !strings.HasPrefix(envName, "RELAYBOX_") && !strings.HasPrefix(envName, "KAFKA_") || strings.ContainsAny(envName, "=\x00") || strings.Contains(envValue, "\x00") {
			return
		}
		old, had := os.LookupEnv(envName)
		os.Setenv(envName, envValue)
		defer func() {
			if had {
				os.Setenv(envName, old)
			} else {
				os.Unsetenv(envName)
			}
		}()
		fl := newFlags("relay", &stdio{out: discard{}, err: discard{}, secrets: &redact.Set{}})
		fl.SetOutput(discard{})
		o := defineRelay(fl)
		if err := fl.parse([]string{flagName, flagValue}); err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		o.kafka.brokers, o.kafka.saslMechanism = "127.0.0.1:1", mech
		if _, err := o.kafka.opts(); err != nil && err.Error() == "" {
			t.Fatal("empty error")
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
