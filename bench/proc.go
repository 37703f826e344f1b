package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a relay running as a subprocess in its own process group, so that its
// resident memory and CPU (summed over its process tree) can be read from /proc and
// SIGTERM reaches its children.
type proc struct {
	name     string
	cmd      *exec.Cmd
	start    time.Time
	ready    chan struct{} // closed on the BENCH_READY line
	readyAt  time.Time
	settings json.RawMessage
	stderr   *tailBuffer
	exited   chan struct{}
	waitErr  error
	maxRSS   int64     // bytes, sampled
	cpu      cpuSeries // the process tree's CPU seconds, sampled
	mu       sync.Mutex
	lines    func(string) // optional: every stdout line
	stopOnce sync.Once
}

func startProc(name string, argv []string, env []string, dir string, logPath string, onLine func(string)) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{name: name, cmd: cmd, ready: make(chan struct{}), exited: make(chan struct{}), stderr: newTailBuffer(64 << 10), lines: onLine}
	var logw io.Writer = io.Discard
	if logPath != "" {
		if f, err := os.Create(logPath); err == nil {
			logw = f
			defer func() { go func() { <-p.exited; f.Close() }() }()
		}
	}
	cmd.Stderr = io.MultiWriter(p.stderr, logw)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var readyOnce sync.Once
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "BENCH_SETTINGS "):
				raw := strings.TrimSpace(strings.TrimPrefix(line, "BENCH_SETTINGS "))
				if json.Valid([]byte(raw)) {
					p.mu.Lock()
					p.settings = json.RawMessage(raw)
					p.mu.Unlock()
				}
			case strings.TrimSpace(line) == "BENCH_READY":
				readyOnce.Do(func() {
					p.mu.Lock()
					p.readyAt = time.Now()
					p.mu.Unlock()
					close(p.ready)
				})
			default:
				if p.lines != nil {
					p.lines(line)
				}
			}
			fmt.Fprintln(logw, line)
		}
	}()
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	go p.sample()
	return p, nil
}

func (p *proc) sample() {
	p.cpu.add(p.start.UnixNano(), 0)
	p.whileRunning(100*time.Millisecond, func() {
		rss, cpu := treeStats(p.cmd.Process.Pid)
		p.cpu.add(time.Now().UnixNano(), cpu)
		p.mu.Lock()
		p.maxRSS = max(p.maxRSS, rss)
		p.mu.Unlock()
	})
}

// whileRunning calls f every interval until the process exits.
func (p *proc) whileRunning(interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.exited:
			return
		case <-t.C:
			f()
		}
	}
}

// resetMaxRSS starts a new maximum.
func (p *proc) resetMaxRSS() {
	p.mu.Lock()
	p.maxRSS = 0
	p.mu.Unlock()
}

func (p *proc) peakRSS() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxRSS
}

// stats returns the current RSS (bytes) and CPU seconds of the process tree.
func (p *proc) stats() (rss int64, cpu float64) { return treeStats(p.cmd.Process.Pid) }

func (p *proc) readyAfter() (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readyAt.IsZero() {
		return 0, false
	}
	return p.readyAt.Sub(p.start), true
}

func (p *proc) settingsJSON() json.RawMessage {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.settings
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) error {
	p.stopOnce.Do(func() {
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.exited
		}
	})
	return p.waitErr
}

// treeStats sums VmRSS and utime+stime over pid and its descendants.
func treeStats(root int) (rss int64, cpu float64) {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := statField(pid, 4); pp > 0 {
			children[int(pp)] = append(children[int(pp)], pid)
		}
	}
	clk := 100.0 // USER_HZ on Linux
	stack := []int{root}
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		rss += vmRSS(pid)
		cpu += float64(statField(pid, 14)+statField(pid, 15)) / clk
		stack = append(stack, children[pid]...)
	}
	return rss, cpu
}

// statField returns field n (1-based, as in proc(5)) of /proc/pid/stat as an integer.
func statField(pid, n int) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	if n-3 < 0 || n-3 >= len(f) {
		return 0
	}
	v, _ := strconv.ParseInt(f[n-3], 10, 64)
	return v
}

func vmRSS(pid int) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func newTailBuffer(n int) *tailBuffer { return &tailBuffer{max: n} }

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(b), nil
}

// lastLines returns the last n lines.
func (t *tailBuffer) lastLines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimRight(string(t.buf), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
