package deploy

import (
	"os/exec"
	"testing"

	"github.com/relaybox/relaybox/internal/testenv"
)

// tool returns the path of an external program, or skips the test when it is missing
// (fails under RELAYBOX_REQUIRE_SERVICES=1).
func tool(t *testing.T, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := name + " not found on PATH (" + install + ")"
	if testenv.Required() {
		t.Fatalf("%s; %s=1 forbids skipping", msg, testenv.RequireVar)
	}
	t.Skip(msg)
	return ""
}

const promInstall = "Debian: apt-get install -y prometheus"
