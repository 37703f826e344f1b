package chaos

import (
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

type process struct {
	name string
	args []string
	env  []string
	log  string
	mu   sync.Mutex
	cmd  *exec.Cmd
	// started is when the current process was started.
	started time.Time
	done    chan struct{}
	hold    bool // a fault or the end of the run owns it: the supervisor keeps off
	// exits counts the times it exited by itself and was restarted by the supervisor.
	exits atomic.Int64
}

func (p *process) start(t *testing.T) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.startLocked(t)
	p.hold = false
}

func (p *process) startLocked(t *testing.T) {
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Error(err)
		return
	}
	p.cmd = exec.Command(p.args[0], p.args[1:]...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Errorf("starting %s: %v", p.name, err)
		return
	}
	p.started = time.Now()
	done := make(chan struct{})
	p.done = done
	cmd := p.cmd
	go func() { cmd.Wait(); f.Close(); close(done) }()
}

// supervise restarts the process when it exits by itself (as a service manager would).
func (p *process) supervise(t *testing.T) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold || p.done == nil {
		return
	}
	select {
	case <-p.done:
		p.exits.Add(1)
		p.startLocked(t)
	default:
	}
}

// startedAt is when the current process was started.
func (p *process) startedAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

func (p *process) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

// halt holds the process off the supervisor, wakes it if frozen and sends sig; it
// returns the channel closed when the process has ended (nil if none runs).
func (p *process) halt(sig syscall.Signal) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = true
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(sig)
	}
	return p.done
}

func (p *process) kill() {
	if d := p.halt(syscall.SIGKILL); d != nil {
		<-d
	}
}

func (p *process) stop() {
	d := p.halt(syscall.SIGTERM)
	if d == nil {
		return
	}
	select {
	case <-d:
	case <-time.After(20 * time.Second):
		p.kill()
	}
}
