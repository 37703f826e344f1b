package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// relayConf is the relay's effective configuration, read from the relaybox binary
// itself: `relaybox relay -h` prints each flag's default and the variable that sets it;
// the relay is started without arguments, so each flag is the variable's value in the
// relay's environment when set, else that default. The settings in the JSON and the
// limits' settings come from here, not from constants in the harness.
type relayConf struct {
	// flags: the flags read, by name, as printed ("" for a zero value, which -h omits).
	flags          map[string]string
	BatchSize      int
	MaxInFlight    int
	PoolSize       int // the pool the CLI builds: --pool-size, or its rule for 0
	PoolSizeFlag   int
	MaxRecordBytes int
	Compression    string
	Linger         time.Duration
	// ExactlyOnce: the binary has --exactly-once (hasExactlyOnce) and it is on.
	hasExactlyOnce bool
	ExactlyOnce    bool
	// exactlyOnceEnv: the variable that sets --exactly-once, from its usage line.
	exactlyOnceEnv string
}

// relayFlagNames are the flags read; nothing else (secrets among them) is kept.
var relayFlagNames = []string{"batch-size", "max-inflight-batches", "pool-size", "compression", "linger",
	"poll-interval", "delivery-timeout", "lease-ttl", "max-record-bytes", "retention", "exactly-once",
	"transactional-id-prefix", "commit-log-topic", "log-level"}

// readRelayConf runs `bin relay -h` (with no relaybox variables, so that it prints the
// compiled defaults) and resolves the flags with env, the relay's environment.
func readRelayConf(ctx context.Context, bin string, env []string) (*relayConf, error) {
	cmd := exec.CommandContext(ctx, bin, "relay", "-h")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s relay -h: %v: %s", bin, err, lastLines(string(out), 5))
	}
	return parseRelayHelp(string(out), env)
}

// parseRelayHelp reads Go flag usage text ("  -name type", then an indented usage line
// naming the variable, [$NAME], and ending in "(default value)" unless the value is
// the type's zero value) and resolves the flags read with env ("NAME=value", the last
// one winning, as for a process), checking each value as the CLI parses it.
func parseRelayHelp(help string, env []string) (*relayConf, error) {
	vars := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	type flagInfo struct{ typ, def, env string }
	seen := map[string]flagInfo{}
	sc := bufio.NewScanner(strings.NewReader(help))
	var cur string
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "  -") {
			f := strings.Fields(l)
			cur = strings.TrimPrefix(f[0], "-")
			typ := "bool"
			if len(f) > 1 {
				typ = f[1]
			}
			seen[cur] = flagInfo{typ: typ}
			continue
		}
		if cur == "" {
			continue
		}
		fi := seen[cur]
		if i := strings.LastIndex(l, "(default "); i >= 0 && strings.HasSuffix(l, ")") {
			fi.def = strings.Trim(l[i+len("(default "):len(l)-1], `"`)
		}
		if i := strings.Index(l, "[$"); i >= 0 {
			if j := strings.IndexByte(l[i:], ']'); j > 0 {
				fi.env = l[i+2 : i+j]
			}
		}
		seen[cur] = fi
	}
	c := &relayConf{flags: map[string]string{}}
	for _, n := range relayFlagNames {
		if fi, ok := seen[n]; ok {
			v := fi.def
			if ev, set := vars[fi.env]; set && fi.env != "" {
				v = ev
			}
			var err error
			switch fi.typ {
			case "int":
				_, err = strconv.Atoi(cmp.Or(v, "0"))
				v = cmp.Or(v, "0")
			case "duration":
				var d time.Duration
				d, err = time.ParseDuration(cmp.Or(v, "0s"))
				v = d.String()
			case "bool":
				var b bool
				b, err = strconv.ParseBool(cmp.Or(v, "false"))
				v = strconv.FormatBool(b)
			}
			if err != nil {
				return nil, fmt.Errorf("relay --%s (%s): %q: %v", n, fi.env, v, err)
			}
			c.flags[n] = v
		}
	}
	num := func(n string) (int, error) {
		v, ok := c.flags[n]
		if !ok {
			return 0, fmt.Errorf("relay -h has no --%s", n)
		}
		return strconv.Atoi(v)
	}
	var err error
	if c.BatchSize, err = num("batch-size"); err != nil {
		return nil, err
	}
	if c.MaxInFlight, err = num("max-inflight-batches"); err != nil {
		return nil, err
	}
	if c.PoolSizeFlag, err = num("pool-size"); err != nil {
		return nil, err
	}
	if c.MaxRecordBytes, err = num("max-record-bytes"); err != nil {
		return nil, err
	}
	c.PoolSize = c.PoolSizeFlag
	if c.PoolSize <= 0 { // the CLI's rule (internal/cli/relay.go); the harness also counts the connections
		c.PoolSize = max(c.MaxInFlight+8, 16)
	}
	c.Compression = c.flags["compression"]
	if c.Linger, err = time.ParseDuration(c.flags["linger"]); err != nil {
		return nil, fmt.Errorf("relay -h: --linger %q: %v", c.flags["linger"], err)
	}
	if v, ok := c.flags["exactly-once"]; ok {
		c.hasExactlyOnce = true
		c.ExactlyOnce = v == "true"
		c.exactlyOnceEnv = seen["exactly-once"].env
	}
	return c, nil
}

// settings is the JSON form: every flag read, plus the pool the CLI builds from them.
func (c *relayConf) settings() map[string]any {
	m := map[string]any{"binary": "relaybox relay (the CLI)", "read_from": "relaybox relay -h (defaults and variables) resolved with the relay's environment",
		"pool_size_effective": c.PoolSize}
	for k, v := range c.flags {
		m[strings.ReplaceAll(k, "-", "_")] = v
	}
	return m
}
