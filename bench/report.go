package main

import (
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
)

func fmtF(p *float64, format string) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf(format, *p)
}

// printTable prints the run's summary: one row per system, then the limits and the
// backlog.
func printTable(w io.Writer, rep *report) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	header := []string{"system", "drain ev/s (from 1st record)", "start-up s", "CPU µs/ev (relay)"}
	rates := rep.Config.Rates
	for _, r := range rates {
		header = append(header, fmt.Sprintf("%d/s p50|p99|max ms", r), "flat")
	}
	header = append(header, "dup", "missing", "order", "note")
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, name := range allSystems {
		res, ok := rep.Systems[name]
		if !ok {
			continue
		}
		row := []string{name}
		if res.SkippedReason != "" {
			row = append(row, "skipped", "-", "-")
			for range rates {
				row = append(row, "-", "-")
			}
			row = append(row, "-", "-", "-", lastLine(res.SkippedReason))
			fmt.Fprintln(tw, strings.Join(row, "\t"))
			continue
		}
		row = append(row, fmtF(res.DrainEPS, "%.0f"))
		if d := res.Drain; d != nil {
			row = append(row, fmt.Sprintf("%.2f", d.FirstRecordS), fmt.Sprintf("%.1f (%.1f)", d.CPUUSPerEvent, d.RelayCPUUSPerEvent))
		} else {
			row = append(row, "-", "-")
		}
		for _, r := range rates {
			cell, flat := "-", "-"
			for _, s := range res.Steady {
				if s.Rate == r {
					cell = fmt.Sprintf("%.1f|%.1f|%.0f", s.P50, s.P99, s.Max)
					if s.UndeliveredInWindow > 0 {
						cell += fmt.Sprintf(" (%d undelivered)", s.UndeliveredInWindow)
					}
					if s.GeneratorBehind {
						cell += fmt.Sprintf(" (at %.0f/s)", s.AchievedRate)
					}
					flat = fmt.Sprint(s.Flat)
				}
			}
			row = append(row, cell, flat)
		}
		note := ""
		if len(res.Errors) > 0 {
			note = firstLine(res.Errors[0])
		}
		row = append(row, fmt.Sprint(res.Duplicates), fmt.Sprint(res.Missing), fmt.Sprint(res.OrderViolations), note)
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	if l := rep.Limits; l != nil {
		fmt.Fprintf(w, "\nlimits: raw franz-go produce %s ev/s, raw Postgres read+delete %s ev/s (best of %v connections)\n",
			fmtF(l.KafkaProduceEPS, "%.0f"), fmtF(l.PGDrainEPS, "%.0f"), rep.Config.PGWorkers)
		for _, b := range l.Broken {
			fmt.Fprintf(w, "  !!! BROKEN MEASUREMENT: %s\n", b)
		}
		if len(l.PGDrainRuns) > 1 {
			fmt.Fprintf(w, "  (medians of %d runs: produce %v, Postgres %v)\n", len(l.PGDrainRuns), l.KafkaProduceRuns, l.PGDrainRuns)
		}
		for _, e := range l.Errors {
			fmt.Fprintf(w, "  error: %s\n", e)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rep.Systems)) {
		if res := rep.Systems[name]; res.DrainVsLesserLimit != nil {
			fmt.Fprintf(w, "%s drain / lesser limit: %.0f %%", name, 100**res.DrainVsLesserLimit)
			if len(res.DrainRuns) > 1 {
				fmt.Fprintf(w, " (median of drains %v)", res.DrainRuns)
			}
			fmt.Fprintln(w)
		}
	}
	if b := rep.Backlog; b != nil {
		if b.SkippedReason != "" {
			fmt.Fprintf(w, "\nbacklog: skipped: %s\n", b.SkippedReason)
		} else {
			fmt.Fprintf(w, "\nbacklog (relaybox batch read query):\n")
			for _, s := range b.Sizes {
				fmt.Fprintf(w, "  %9d rows: read query p50 %.2f ms, p99 %.2f ms (%.0f rows, %.2f us/row); in the relay p50 %.2f ms, p99 %.2f ms over %d reads (%.0f rows each); relay RSS %.0f MB ready, %.0f MB peak\n",
					s.Rows, s.QueryP50MS, s.QueryP99MS, s.QueryRows, s.QueryUSPerRow, s.ClaimP50MS, s.ClaimP99MS, s.Claims, s.RowsPerClaim, s.RSSReadyMB, s.RSSPeakMB)
				if s.Error != "" {
					fmt.Fprintf(w, "    error: %s\n", s.Error)
				}
			}
			if b.Ratio != nil {
				fmt.Fprintf(w, "  big/small read query p50 ratio: %.2f (LIMIT %d)", *b.Ratio, rep.Config.PGBatch)
				if b.RatioLimit100 != nil {
					fmt.Fprintf(w, ", %.2f (LIMIT 100: %.2f vs %.2f ms)", *b.RatioLimit100, *b.ClaimMS10kLimit100, *b.ClaimMS5MLimit100)
				}
				fmt.Fprintln(w)
			}
		}
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return firstLine(strings.TrimSpace(l[len(l)-1]))
}

func firstLine(s string) string {
	s = strings.SplitN(s, "\n", 2)[0]
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

var pomVersion = regexp.MustCompile(`<kafka\.version>([^<]+)</kafka\.version>`)

func kafkaVersionFromPom(mainDir string) string {
	b, err := os.ReadFile(filepath.Join(mainDir, "scripts", "kafka", "pom.xml"))
	if err != nil {
		return ""
	}
	if m := pomVersion.FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return ""
}
