package testenv

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// DelayProxy forwards TCP connections from its port to a target, delaying every chunk
// it forwards by the current delay: a slow network without kernel support (this
// machine's kernel has no netem qdisc).
type DelayProxy struct {
	Port   int
	target string
	delay  atomic.Int64
	ln     net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

// NewDelayProxy listens on a free 127.0.0.1 port, closed when the test ends.
func NewDelayProxy(t testing.TB, target string) *DelayProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &DelayProxy{Port: ln.Addr().(*net.TCPAddr).Port, target: target, ln: ln, conns: map[net.Conn]bool{}}
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// SetDelay sets the delay added to every forwarded chunk, both ways.
func (p *DelayProxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// Close stops the proxy and its connections.
func (p *DelayProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

func (p *DelayProxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
	p.mu.Unlock()
}

func (p *DelayProxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				in.Close()
				return
			}
			p.track(in, true)
			p.track(out, true)
			done := make(chan struct{}, 2)
			go func() { p.pipe(out, in); done <- struct{}{} }()
			go func() { p.pipe(in, out); done <- struct{}{} }()
			<-done
			in.Close()
			out.Close()
			<-done
			p.track(in, false)
			p.track(out, false)
		}()
	}
}

func (p *DelayProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.delay.Load()); d > 0 {
				time.Sleep(d)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
