package main

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

// cpuPoint is a CPU-seconds counter read at a time (unix nanos).
type cpuPoint struct {
	at  int64
	sec float64
}

// cpuSeries is a counter sampled over time; between samples it is interpolated
// linearly, so a window's CPU does not depend on where the samples fell.
type cpuSeries struct {
	mu  sync.Mutex
	pts []cpuPoint
}

func (s *cpuSeries) add(at int64, sec float64) {
	s.mu.Lock()
	s.pts = append(s.pts, cpuPoint{at, sec})
	s.mu.Unlock()
}

// at returns the counter's value at time t: interpolated between the samples around
// it, the first or last sample outside them; ok is false with no samples.
func (s *cpuSeries) at(t int64) (float64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pts) == 0 {
		return 0, false
	}
	i, _ := slices.BinarySearchFunc(s.pts, t, func(p cpuPoint, t int64) int {
		switch {
		case p.at < t:
			return -1
		case p.at > t:
			return 1
		}
		return 0
	})
	switch {
	case i == 0:
		return s.pts[0].sec, true
	case i == len(s.pts):
		return s.pts[len(s.pts)-1].sec, true
	}
	a, b := s.pts[i-1], s.pts[i]
	if b.at == a.at {
		return b.sec, true
	}
	return a.sec + (b.sec-a.sec)*float64(t-a.at)/float64(b.at-a.at), true
}

// between returns the counter's increase over [from, to].
func (s *cpuSeries) between(from, to int64) (float64, bool) {
	a, ok1 := s.at(from)
	b, ok2 := s.at(to)
	return b - a, ok1 && ok2
}

// machineBusySeconds reads /proc/stat's first line: the whole machine's busy CPU time
// (user, nice, system, irq, softirq, steal; guest time is inside user) in seconds,
// every core summed.
func machineBusySeconds() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system [idle iowait] irq softirq steal
		v, err := strconv.ParseInt(string(f[i]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %v", err)
		}
		busy += v
	}
	return float64(busy) / 100, nil // USER_HZ
}

// machineCPU samples machineBusySeconds every interval until stop.
type machineCPU struct {
	cpuSeries
	done chan struct{}
	wg   sync.WaitGroup
}

func startMachineCPU(interval time.Duration) *machineCPU {
	m := &machineCPU{done: make(chan struct{})}
	sample := func() {
		if v, err := machineBusySeconds(); err == nil {
			m.add(time.Now().UnixNano(), v)
		}
	}
	sample()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-m.done:
				sample()
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return m
}

func (m *machineCPU) stop() {
	close(m.done)
	m.wg.Wait()
}

// usPerEvent is CPU seconds over events, in microseconds per event (0 without events).
func usPerEvent(cpuSec float64, events int64) float64 {
	if events <= 0 {
		return 0
	}
	return r3(cpuSec * 1e6 / float64(events))
}
