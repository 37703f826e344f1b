package cli

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and commit are set at build time (the Makefile's build target does):
//
//	go build -ldflags "-X github.com/relaybox/relaybox/internal/cli.version=v1.2.0 \
//	  -X github.com/relaybox/relaybox/internal/cli.commit=$(git rev-parse HEAD)" ./cmd/relaybox
//
// Unset, they come from the binary's build info: the module version (set by `go
// install ...@v1.2.0`) and the VCS revision (stamped by `go build` in a git checkout
// unless -buildvcs=false), else "devel" and "unknown".
var version, commit string

// versionInfo returns the version and commit of this binary.
func versionInfo() (v, c string) {
	v, c = version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if c == "" {
					c = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && commit == "" && c != "" {
			c += "-dirty"
		}
	}
	if v == "" {
		v = "devel"
	}
	if c == "" {
		c = "unknown"
	}
	return v, c
}

func runVersion(_ context.Context, args []string, s *stdio) error {
	out := s.out
	fl := newFlags("version", s)
	fl.SetOutput(out)
	fl.Usage = func() {
		fmt.Fprintln(out, "usage: relaybox version\n\nPrints the version, the commit and the Go version the binary was built with.")
	}
	if err := fl.parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("version takes no arguments, got %q", fl.Args())
	}
	v, c := versionInfo()
	_, err := fmt.Fprintf(out, "relaybox %s (commit %s, %s)\n", v, c, runtime.Version())
	return err
}
