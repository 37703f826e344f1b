package chaos

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// relayMetrics is what the fault suite reads from a relay's /metrics.
type relayMetrics struct {
	published float64
	// lost is relaybox_relay_errors_total{kind="lease"} (leases found lost) plus
	// relaybox_relay_fenced_writes_total (writes refused because the lease had passed).
	lost float64
	// batches is relaybox_relay_batch_seconds_count: batches completed.
	batches float64
}

// scrape reads a relay's /metrics (a relay whose collector cannot reach Postgres
// answers 500: an error here).
func scrape(addr string) (relayMetrics, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return relayMetrics{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return relayMetrics{}, fmt.Errorf("%s/metrics: %s", addr, resp.Status)
	}
	var m relayMetrics
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		switch {
		case name == "relaybox_relay_published_total":
			m.published = v
			found++
		case name == "relaybox_relay_batch_seconds_count":
			m.batches = v
			found++
		case name == `relaybox_relay_errors_total{kind="lease"}`, strings.HasPrefix(name, "relaybox_relay_fenced_writes_total"):
			m.lost += v
		}
	}
	if err := sc.Err(); err != nil {
		return relayMetrics{}, err
	}
	if found != 2 {
		return relayMetrics{}, fmt.Errorf("%s/metrics: relaybox_relay_published_total or relaybox_relay_batch_seconds missing", addr)
	}
	return m, nil
}
