package testenv

import (
	"fmt"
	"github.com/relaybox/relaybox/internal/pgtemp"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A Service is a process a test owns: its own Kafka broker or registry, on its own
// ports and data directory, which the test may stop and start at will.
type Service struct {
	t       testing.TB
	name    string
	args    []string
	logPath string
	ready   func() bool
	cmd     *exec.Cmd
	done    chan struct{}
}

// CacheDir is where `make env` keeps the Kafka and registry jars (RELAYBOX_CACHE_DIR).
func CacheDir(t testing.TB) string { return Var(t, "RELAYBOX_CACHE_DIR") }

// FreePort returns a port free on 127.0.0.1 now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// Start starts the process and waits until it is ready (up to 90s).
func (s *Service) Start() {
	s.t.Helper()
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd = exec.Command("java", s.args...)
	s.cmd.Stdout, s.cmd.Stderr = f, f
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting %s: %v", s.name, err)
	}
	done := make(chan struct{})
	s.done = done
	cmd := s.cmd
	go func() { cmd.Wait(); f.Close(); close(done) }()
	deadline := time.Now().Add(90 * time.Second)
	for !s.ready() {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.logPath)
			s.t.Fatalf("%s not ready in 90s; log tail:\n%s", s.name, tail(string(b), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Stop kills the process (SIGKILL when hard, else SIGTERM) and waits for it to exit.
func (s *Service) Stop(hard bool) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	sig := syscall.SIGTERM
	if hard {
		sig = syscall.SIGKILL
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// OwnKafka starts a single-broker KRaft Kafka for this test only, with the jars that
// `make env` resolved. It returns the service and its bootstrap address.
func OwnKafka(t testing.TB) (*Service, string) {
	t.Helper()
	s, addr, _ := ownKafka(t, false)
	return s, addr
}

// OwnKafkaBehindProxy is OwnKafka with every client connection going through a
// DelayProxy: the broker advertises the proxy's port, so slowing the proxy slows the
// network between clients and the broker.
func OwnKafkaBehindProxy(t testing.TB) (*Service, string, *DelayProxy) {
	t.Helper()
	return ownKafka(t, true)
}

func ownKafka(t testing.TB, proxied bool) (*Service, string, *DelayProxy) {
	t.Helper()
	lib := filepath.Join(CacheDir(t), "kafka-lib")
	if _, err := os.Stat(lib); err != nil {
		t.Fatalf("kafka jars missing at %s (run `make env`): %v", lib, err)
	}
	dir := t.TempDir()
	port, cport := FreePort(t), FreePort(t)
	advertised := port
	var proxy *DelayProxy
	if proxied {
		proxy = NewDelayProxy(t, fmt.Sprintf("127.0.0.1:%d", port))
		advertised = proxy.Port
	}
	props := fmt.Sprintf(`process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:%[2]d
listeners=PLAINTEXT://127.0.0.1:%[1]d,CONTROLLER://127.0.0.1:%[2]d
advertised.listeners=PLAINTEXT://127.0.0.1:%[4]d,CONTROLLER://127.0.0.1:%[2]d
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=%[3]s/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
add.partitions.to.txn.retry.backoff.ms=1
`, port, cport, dir, advertised)
	propsPath := filepath.Join(dir, "server.properties")
	if err := os.WriteFile(propsPath, []byte(props), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := lib + "/*"
	out, err := exec.Command("java", "-cp", cp, "kafka.tools.StorageTool", "format", "--standalone", "-t", "relayboxtest0000000000", "-c", propsPath).CombinedOutput()
	if err != nil {
		t.Fatalf("formatting own kafka: %v\n%s", err, out)
	}
	s := &Service{t: t, name: "own kafka", logPath: filepath.Join(dir, "kafka.log"),
		args:  []string{"-Xmx384m", "-Xms128m", "-cp", cp, "kafka.Kafka", propsPath},
		ready: func() bool { return portOpen(port) }}
	s.Start()
	t.Cleanup(func() {
		s.Stop(true)
		// RELAYBOX_KEEP_LOGS=dir keeps a failed test's broker log (the temp dir goes).
		if keep := os.Getenv("RELAYBOX_KEEP_LOGS"); keep != "" && t.Failed() {
			if b, err := os.ReadFile(s.logPath); err == nil {
				_ = os.WriteFile(filepath.Join(keep, Name(t, "kafka")+".log"), b, 0o644)
			}
		}
	})
	return s, fmt.Sprintf("127.0.0.1:%d", advertised), proxy
}

// OwnRegistry starts an Apicurio Registry for this test only (file storage, global
// BACKWARD rule) and returns it and its Confluent-compatible URL.
func OwnRegistry(t testing.TB) (*Service, string) {
	t.Helper()
	jar := filepath.Join(CacheDir(t), "registry.jar")
	if _, err := os.Stat(jar); err != nil {
		t.Fatalf("registry jar missing at %s (run `make env`): %v", jar, err)
	}
	dir := t.TempDir()
	port := FreePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/apis/ccompat/v7", port)
	s := &Service{t: t, name: "own registry", logPath: filepath.Join(dir, "registry.log"),
		args: []string{"-Xmx256m", "-Dquarkus.http.host=127.0.0.1", fmt.Sprintf("-Dquarkus.http.port=%d", port),
			"-Dregistry.rules.global.compatibility=BACKWARD", "-Dquarkus.datasource.jdbc.url=jdbc:h2:file:" + dir + "/data/registry;LOCK_TIMEOUT=15000",
			"-jar", jar},
		ready: func() bool {
			resp, err := http.Get(url + "/subjects")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		}}
	s.Start()
	t.Cleanup(func() { s.Stop(true) })
	return s, url
}

// OwnPostgres starts a private PostgreSQL cluster (internal/pgtemp) for this test only,
// and returns it and its URL. Stop(false) is a fast shutdown, Stop(true) an immediate
// one; Start brings it back on the same port and data.
func OwnPostgres(t testing.TB) (*PGService, string) {
	t.Helper()
	bin, err := pgtemp.FindBinaries()
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgtemp.New(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Remove)
	s := &PGService{t: t, c: c}
	s.Start()
	return s, c.URL
}

// PGService is a Postgres cluster a test owns.
type PGService struct {
	t testing.TB
	c *pgtemp.Cluster
}

// Start starts the cluster and waits until it accepts connections.
func (s *PGService) Start() {
	s.t.Helper()
	if err := s.c.Start(); err != nil {
		s.t.Fatal(err)
	}
}

// Stop shuts the cluster down: immediate (like a crash) when hard, else fast.
func (s *PGService) Stop(hard bool) { s.c.Stop(hard) }

// Pause freezes the process (SIGSTOP) for d, then resumes it: the service keeps its
// state but answers nothing meanwhile.
func (s *Service) Pause(d time.Duration) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(d)
	_ = s.cmd.Process.Signal(syscall.SIGCONT)
}
