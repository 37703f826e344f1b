package main

import (
	"debug/buildinfo"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// demoModules are what the demo (examples/demo) needs and the product does not: an
// in-process Kafka, a throwaway Postgres and its driver.
var demoModules = []string{
	"github.com/twmb/franz-go/pkg/kfake",
	"github.com/fergusstrange/embedded-postgres",
	"github.com/lib/pq",
}

// demoPackages are the demo's packages, looked for among the binary's imports
// (srfake's module, pkg/sr, is one the product uses, and the examples live in
// the main module: the build info cannot tell).
var demoPackages = []string{
	"github.com/twmb/franz-go/pkg/kfake",
	"github.com/twmb/franz-go/pkg/sr/srfake",
	"github.com/fergusstrange/embedded-postgres",
	"github.com/lib/pq",
	"github.com/relaybox/relaybox/examples/",
}

// The relaybox binary links what the relay and the admin commands need, not the
// demo: its build info (what `go version -m` prints) lists none of the demo's
// modules, and none of the demo's packages is among its dependencies.
func TestBinary_LinksNoDemoDependency(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "relaybox")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Deps) == 0 {
		t.Fatal("build info lists no module: nothing was checked")
	}
	for _, d := range info.Deps {
		for _, m := range demoModules {
			if d.Path == m {
				t.Errorf("the relaybox binary links %s %s (a demo dependency)", d.Path, d.Version)
			}
		}
	}
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps printed nothing")
	}
	for _, p := range deps {
		for _, d := range demoPackages {
			if p == d || strings.HasPrefix(p, strings.TrimSuffix(d, "/")+"/") {
				t.Errorf("the relaybox binary imports %s (a demo package)", p)
			}
		}
	}
}
