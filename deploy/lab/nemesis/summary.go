package nemesis

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
)

// Summary aggregates the reports of many nemesis runs, for one table in a
// CI log or a pull request rather than one report per seed.
type Summary struct {
	// Runs is the number of reports; SyncRuns and AsyncRuns split it by
	// replication mode, since what may be lost differs between them.
	Runs, SyncRuns, AsyncRuns int
	// Faults counts the faults injected, by kind, over every run.
	Faults map[string]int
	// Failovers and FalseFailovers are summed over every run.
	Failovers, FalseFailovers int
	// Acked is the number of acknowledged writes over every run.
	Acked int
	// LostSync is the number of acknowledged writes lost in sync runs
	// (every one a violation); LostAsyncBounded those lost in async runs
	// within the stranded-client window (allowed); LostAsyncOutside those
	// lost in async runs outside it (violations).
	LostSync, LostAsyncBounded, LostAsyncOutside int
	// Recovery holds, per fault kind, every recovery time measured, sorted
	// ascending so that percentiles can be read off it.
	Recovery map[string][]time.Duration
	// Properties has one entry per property, always 5, in order a..e.
	Properties []PropertySummary
	// Failing lists the runs that violated a property, sorted by seed.
	Failing []FailingRun
}

// PropertySummary is how often one property was violated over the runs.
type PropertySummary struct {
	// Property is the property's letter and Name its short name.
	Property, Name string
	// Runs is the number of runs that violated it.
	Runs int
	// Violations is the total number of violation lines (Verdict.Count,
	// not the capped Verdict.Violations) over those runs.
	Violations int
}

// FailingRun is one run that violated at least one property: enough to
// rerun it and to know what to look for.
type FailingRun struct {
	Seed int64
	Sync bool
	// Properties are the letters of the properties it violated; for a
	// report without verdicts, "no verdicts".
	Properties []string
}

// Summarize aggregates reports. It does not keep the reports, only
// figures, so that it can be called on many runs.
func Summarize(reports []Report) Summary {
	s := Summary{
		Runs:     len(reports),
		Faults:   map[string]int{},
		Recovery: map[string][]time.Duration{},
	}
	for _, p := range chkProperties {
		s.Properties = append(s.Properties, PropertySummary{Property: p.id, Name: p.name})
	}
	for _, r := range reports {
		if r.Sync {
			s.SyncRuns++
			s.LostSync += r.Lost
		} else {
			s.AsyncRuns++
			s.LostAsyncBounded += r.LostBounded
			s.LostAsyncOutside += r.Lost - r.LostBounded
		}
		for k, n := range r.Faults {
			s.Faults[k] += n
		}
		for k, d := range r.Recovery {
			s.Recovery[k] = append(s.Recovery[k], d...)
		}
		s.Failovers += r.Failovers
		s.FalseFailovers += r.FalseFailovers
		s.Acked += r.Acked
		var bad []string
		for _, v := range r.Verdicts {
			if v.OK {
				continue
			}
			bad = append(bad, v.Property)
			for i := range s.Properties {
				if s.Properties[i].Property == v.Property {
					s.Properties[i].Runs++
					s.Properties[i].Violations += max(v.Count, len(v.Violations))
				}
			}
		}
		if len(r.Verdicts) == 0 {
			bad = append(bad, "no verdicts")
		}
		if !r.OK() {
			s.Failing = append(s.Failing, FailingRun{Seed: r.Seed, Sync: r.Sync, Properties: bad})
		}
	}
	for _, d := range s.Recovery {
		slices.Sort(d)
	}
	sort.SliceStable(s.Failing, func(i, j int) bool { return s.Failing[i].Seed < s.Failing[j].Seed })
	return s
}

// sumPercentile is the nearest-rank p-th percentile (0 < p <= 100) of
// sorted: the smallest value with at least p% of the values at or below
// it, always one of the values measured.
func sumPercentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Markdown writes the summary as Markdown tables: totals, faults with
// their recovery times, violations by property, and the failing seeds.
// The output is deterministic (kinds and seeds sorted).
func (s Summary) Markdown() string {
	var b strings.Builder
	faults := 0
	for _, n := range s.Faults {
		faults += n
	}
	b.WriteString("| runs | sync runs | async runs | faults | failovers | false failovers | acked writes | lost (sync) | lost (async, within window) | lost (async, outside) |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| %d | %d | %d | %d | %d | %d | %d | %d | %d | %d |\n\n",
		s.Runs, s.SyncRuns, s.AsyncRuns, faults, s.Failovers, s.FalseFailovers,
		s.Acked, s.LostSync, s.LostAsyncBounded, s.LostAsyncOutside)

	kinds := map[string]bool{}
	for k := range s.Faults {
		kinds[k] = true
	}
	for k := range s.Recovery {
		kinds[k] = true
	}
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	b.WriteString("| fault | injected | recoveries measured | recovery median (ms) | recovery p99 (ms) | recovery max (ms) |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|\n")
	if len(names) == 0 {
		b.WriteString("| none | 0 | 0 | — | — | — |\n")
	}
	for _, k := range names {
		d := slices.Sorted(slices.Values(s.Recovery[k])) // sorted again: a Summary may be built by hand
		if len(d) == 0 {
			fmt.Fprintf(&b, "| %s | %d | 0 | — | — | — |\n", k, s.Faults[k])
			continue
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d |\n", k, s.Faults[k], len(d),
			sumPercentile(d, 50).Milliseconds(), sumPercentile(d, 99).Milliseconds(), d[len(d)-1].Milliseconds())
	}
	b.WriteString("\n")

	b.WriteString("| property | name | runs violating | violation lines |\n")
	b.WriteString("|---|---|---:|---:|\n")
	props := s.Properties
	if len(props) == 0 {
		for _, p := range chkProperties {
			props = append(props, PropertySummary{Property: p.id, Name: p.name})
		}
	}
	for _, p := range props {
		fmt.Fprintf(&b, "| %s | %s | %d | %d |\n", p.Property, p.Name, p.Runs, p.Violations)
	}
	b.WriteString("\nfailing seeds: ")
	if len(s.Failing) == 0 {
		b.WriteString("none\n")
		return b.String()
	}
	b.WriteString("\n\n")
	for _, f := range s.Failing {
		mode := "async"
		if f.Sync {
			mode = "sync"
		}
		fmt.Fprintf(&b, "- %d (%s): %s — rerun: VIGIL_NEMESIS_SEEDS=%d\n", f.Seed, mode, strings.Join(f.Properties, ", "), f.Seed)
	}
	return b.String()
}
