package cli

import (
	"bytes"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// relaybox version prints the version and commit set at build time (-ldflags -X), and
// otherwise what the build info says, never an empty field.
func TestVersion_PrintsVersionAndCommit(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main([]string{"version"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !regexp.MustCompile(`^relaybox \S+ \(commit \S+, go\S+\)\n$`).MatchString(out.String()) {
		t.Fatalf("relaybox version printed %q", out.String())
	}

	oldV, oldC := version, commit
	t.Cleanup(func() { version, commit = oldV, oldC })
	version, commit = "v1.2.3", "0123456789abcdef"
	out.Reset()
	if code := Main([]string{"version"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if want := "relaybox v1.2.3 (commit 0123456789abcdef, " + runtime.Version() + ")\n"; out.String() != want {
		t.Fatalf("with -X values: %q, want %q", out.String(), want)
	}
	if code := Main([]string{"version", "extra"}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "no arguments") {
		t.Fatalf("version extra: exit %d, stderr %q", code, errOut.String())
	}
}
