package cli

import (
	"errors"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/relaybox/relaybox/internal/redact"
)

// FuzzRelayConfig feeds arbitrary flag values and environment values to the relay's
// configuration parsing: it never panics; a bad value is an error naming the flag or
// the variable; Kafka options build or fail with an error naming the setting.
func FuzzRelayConfig(f *testing.F) {
	f.Add("--batch-size", "lots", "RELAYBOX_LEASE_TTL", "15s", "SCRAM-SHA-256")
	f.Add("--poll-interval", "-1s", "RELAYBOX_BATCH_SIZE", "x", "PLAIN")
	f.Add("--schema", `x"; DROP TABLE y; --`, "KAFKA_TLS", "maybe", "GSSAPI")
	f.Add("--kafka-tls-ca", "/nonexistent/ca.pem", "RELAYBOX_LEASE_TTL", "15s", "")
	f.Add("--lease-ttl", "15s", "KAFKA_TLS_CA", "/nonexistent/ca.pem", "")
	f.Add("--no-such-flag", "1", "RELAYBOX_LEASE_TTL", "soon", "")
	f.Add("--lease-ttl", "", "RELAYBOX_POLL_INTERVAL", "1s", "")
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
			if !errors.Is(err, flag.ErrHelp) && !namesSetting(fl, err.Error(), flagName, envName) {
				t.Fatalf("flag %q=%q, $%s=%q: error %q names neither the flag nor the variable", flagName, flagValue, envName, envValue, err)
			}
			return
		}
		o.kafka.brokers, o.kafka.saslMechanism = "127.0.0.1:1", mech
		if _, err := o.kafka.opts(); err != nil {
			switch strings.ToUpper(mech) {
			case "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
				if !namesSetting(fl, err.Error(), flagName, envName) {
					t.Fatalf("flag %q=%q, $%s=%q: Kafka options error %q names neither the flag nor the variable", flagName, flagValue, envName, envValue, err)
				}
			default:
				if !namesWord(err.Error(), "KAFKA_SASL_MECHANISM") {
					t.Fatalf("SASL mechanism %q: error %q does not name KAFKA_SASL_MECHANISM", mech, err)
				}
			}
		}
	})
}

// namesSetting reports whether msg names the flag given as arg ("-name", or the
// variable its usage names) or the variable env, as a whole word.
func namesSetting(fl *flags, msg, arg, env string) bool {
	if namesWord(msg, env) {
		return true
	}
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	if name == "" {
		return strings.Contains(msg, arg) // "bad flag syntax: <arg>"
	}
	if regexp.MustCompile(`-` + regexp.QuoteMeta(name) + `($|[^A-Za-z0-9_-])`).MatchString(msg) {
		return true
	}
	if f := fl.Lookup(name); f != nil {
		if m := regexp.MustCompile(`\[\$([A-Z0-9_]+)\]`).FindStringSubmatch(f.Usage); m != nil && namesWord(msg, m[1]) {
			return true
		}
	}
	return false
}

// namesWord reports whether msg holds the variable name v as a whole word.
func namesWord(msg, v string) bool {
	return regexp.MustCompile(`(^|[^A-Z0-9_])` + regexp.QuoteMeta(v) + `($|[^A-Z0-9_])`).MatchString(msg)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
