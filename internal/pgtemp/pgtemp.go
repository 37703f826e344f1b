// Package pgtemp runs a private, throwaway PostgreSQL cluster from local server
// binaries (initdb, pg_ctl) on a free 127.0.0.1 port: for the demo (examples/demo)
// and for tests that must stop and restart their own Postgres. As root, where initdb refuses to run,
// the cluster runs as the postgres user if there is one, else as nobody.
package pgtemp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
)

// Cluster is a throwaway cluster.
type Cluster struct {
	Port int
	// URL connects as the postgres superuser (trust authentication, no password).
	URL string

	bin, dir, user string
	running        bool
}

// FindBinaries returns the directory of the local PostgreSQL server binaries.
func FindBinaries() (string, error) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Strings(matches)
	if len(matches) == 0 {
		return "", errors.New("no PostgreSQL server binaries (apt-get install postgresql)")
	}
	return filepath.Dir(matches[len(matches)-1]), nil
}

// New creates (initdb) a cluster from the binaries in bindir, in a new temporary
// directory, on a free port. It is not started.
func New(bindir string) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "relaybox-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bindir, dir: dir}
	if os.Geteuid() == 0 {
		c.user = "nobody"
		if _, err := user.Lookup("postgres"); err == nil {
			c.user = "postgres"
		}
		if out, err := exec.Command("chown", c.user, dir).CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("chown %s to %s: %v %s", dir, c.user, err, out)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port)
	if out, err := c.cmd("initdb", "-D", dir+"/data", "-A", "trust", "-U", "postgres", "--no-sync").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	return c, nil
}

func (c *Cluster) cmd(name string, args ...string) *exec.Cmd {
	if c.user != "" {
		return exec.Command("runuser", append([]string{"-u", c.user, "--", filepath.Join(c.bin, name)}, args...)...)
	}
	return exec.Command(filepath.Join(c.bin, name), args...)
}

// Start starts the cluster and waits (up to 60 s) until it accepts connections.
func (c *Cluster) Start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", c.Port, c.dir)
	if out, err := c.cmd("pg_ctl", "-D", c.dir+"/data", "-l", c.dir+"/log", "-o", opts, "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl start: %v: %s", err, out)
	}
	c.running = true
	return nil
}

// Stop shuts the cluster down: immediate (like a crash) when immediate, else fast.
func (c *Cluster) Stop(immediate bool) {
	if !c.running {
		return
	}
	mode := "fast"
	if immediate {
		mode = "immediate"
	}
	_ = c.cmd("pg_ctl", "-D", c.dir+"/data", "-m", mode, "-w", "stop").Run()
	c.running = false
}

// Remove stops the cluster and deletes its directory.
func (c *Cluster) Remove() {
	c.Stop(true)
	os.RemoveAll(c.dir)
}
