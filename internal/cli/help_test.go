package cli

import (
	"strings"
	"testing"
	"time"
)

// helpFlags are the ways to ask for help that the flag package understands.
var helpFlags = []string{"-h", "-help", "--help"}

// noServices points every connection setting at a closed port: a -h that connects
// anywhere fails instead of printing its usage.
func noServices(t *testing.T) {
	t.Helper()
	t.Setenv("DATABASE_URL", "postgres://relaybox@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	t.Setenv("KAFKA_BROKERS", "127.0.0.1:1")
	t.Setenv("SCHEMA_REGISTRY_URL", "http://127.0.0.1:1")
}

// relaybox -h, -help, --help and help print the command table and exit 0.
func TestHelp_TopLevelListsEveryCommand(t *testing.T) {
	noServices(t)
	for _, h := range append([]string{"help"}, helpFlags...) {
		code, out := invoke(t, 10*time.Second, h)
		if code != 0 || strings.Contains(out, "unknown command") {
			t.Errorf("relaybox %s: exit %d:\n%s", h, code, out)
		}
		for _, c := range commands() {
			if !strings.Contains(out, "  "+c.name+" ") {
				t.Errorf("relaybox %s: command %q not listed:\n%s", h, c.name, out)
			}
		}
	}
	if code, out := invoke(t, 10*time.Second); code != 2 || !strings.Contains(out, "usage: relaybox") {
		t.Errorf("relaybox without a command: exit %d, %q; want 2 and the usage", code, out)
	}
}

// Every command and subcommand of the command table answers -h with its usage and
// exit status 0, without reaching Postgres, Kafka or the registry (none is
// reachable here). A new command is covered by being in the table.
func TestHelp_EveryCommandAndSubcommandWithoutServices(t *testing.T) {
	noServices(t)
	var lines [][]string
	for _, c := range commands() {
		for _, h := range helpFlags {
			lines = append(lines, []string{c.name, h})
			for _, sub := range c.subs {
				lines = append(lines, []string{c.name, sub, h})
			}
		}
	}
	for _, args := range lines {
		code, out := invoke(t, 10*time.Second, args...)
		cmd := "relaybox " + args[0]
		if code != 0 || !strings.Contains(strings.ToLower(out), "usage") || !strings.Contains(out, cmd) {
			t.Errorf("relaybox %s: exit %d; want 0 and a usage naming %q:\n%s", strings.Join(args, " "), code, cmd, out)
		}
		if strings.Contains(out, "unreachable") || strings.Contains(out, "127.0.0.1:1") {
			t.Errorf("relaybox %s tried to connect:\n%s", strings.Join(args, " "), out)
		}
	}
	t.Logf("%d command lines checked", len(lines))
}
