package nemesis

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// OperatingPoint is a probe interval / down_after pair of the matrix.
type OperatingPoint struct {
	Name                                string
	Interval, Timeout, DownAfter, Lease time.Duration
}

// OperatingPoints are the matrix's columns: the default, and the fast
// setting compared with Redis Sentinel at down-after 1 s.
var OperatingPoints = []OperatingPoint{
	{Name: "500ms/2s", Interval: 500 * time.Millisecond, Timeout: 400 * time.Millisecond, DownAfter: 2 * time.Second, Lease: time.Second},
	{Name: "200ms/1s", Interval: 200 * time.Millisecond, Timeout: 160 * time.Millisecond, DownAfter: time.Second, Lease: 600 * time.Millisecond},
}

// Failures are the matrix's rows: a name and the nemesis fault that
// makes it.
var Failures = []struct{ Name, Kind string }{
	{"process crash", KindKillPostgres},
	{"host death", KindKillHost},
	{"hung primary", KindHangPrimary},
	{"host partition", KindPartitionPrimary},
	{"one-way partition", KindPartitionOneWay},
	{"stalled disk", KindStallDisk},
}

// BenchRun is one measured failure.
type BenchRun struct {
	Failover bool // the failed member was failed over
	// VIP and HAProxy are t0 → first acknowledged write on another
	// member through that path; 0 when none came within the hold.
	VIP, HAProxy time.Duration
	// Lost is the acknowledged writes lost; Stranded the writes the failed
	// member's own host's client had acknowledged after t0.
	Lost, Stranded int
	FalseFailovers int
	// Violations lists the checker's failing properties.
	Violations []string
}

// benchHold bounds one failure: past it the fault is healed whatever
// happened (a failure vigil does not detect shows as "no failover").
const benchHold = 20 * time.Second

// BenchOnce injects one failure into the primary of a settled lab at t0
// (taken just before the injection), heals it as soon as both the VIP
// and the HAProxy client have written to another member (or after
// benchHold), lets the lab settle, and measures.
func BenchOnce(ctx context.Context, l *Lab, kind string, seq int) (BenchRun, *History, error) {
	plan := Plan{Seed: int64(seq), Sync: l.Cfg.Sync, Length: 0, Faults: []Planned{{
		At: 1500 * time.Millisecond, Kind: kind, Hold: benchHold, Pick: seq,
		until: func(rec *recorder, f Fault) bool {
			attempts := rec.snapshotAttempts()
			return firstOther(attempts, "vip", f) > 0 && firstOther(attempts, "haproxy", f) > 0
		},
	}}}
	h, err := runPlan(ctx, l, plan, RunConfig{Seed: int64(seq), Settle: 60 * time.Second})
	if err != nil {
		return BenchRun{}, nil, err
	}
	var f Fault
	for _, x := range h.Faults {
		if x.Kind == kind {
			f = x
		}
	}
	rep := Check(h)
	r := BenchRun{
		VIP: firstOther(h.Attempts, "vip", f), HAProxy: firstOther(h.Attempts, "haproxy", f),
		Lost: rep.Lost, FalseFailovers: rep.FalseFailovers,
	}
	for _, fo := range h.Failovers {
		if fo.Old == f.Target && fo.Outcome == "completed" {
			r.Failover = true
		}
	}
	for _, a := range h.Attempts {
		if a.Client == "stranded-"+f.Target && a.Outcome == OK && a.End.After(f.Start) {
			r.Stranded++
		}
	}
	for _, v := range rep.Verdicts {
		if !v.OK {
			r.Violations = append(r.Violations, v.Property)
		}
	}
	return r, h, nil
}

// firstOther is t0 → the first acknowledged write by client on a member
// other than the fault's target, 0 if none.
func firstOther(attempts []Attempt, client string, f Fault) time.Duration {
	if f.Start.IsZero() {
		return 0
	}
	for _, a := range attempts {
		if a.Client == client && a.Outcome == OK && a.Server != f.Target && a.Start.After(f.Start) {
			return a.End.Sub(f.Start)
		}
	}
	return 0
}

func (r *recorder) snapshotAttempts() []Attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.attempts)
}

// BenchCell is the matrix's result for one failure at one operating
// point and replication mode.
type BenchCell struct {
	Failure, Op string
	Sync        bool
	Runs        []BenchRun
	Errors      int // runs the harness could not carry out
	// Measured says when and on what code (date and commit).
	Measured string `json:",omitempty"`
}

// key identifies a cell across runs of the matrix.
func (c BenchCell) key() string { return fmt.Sprintf("%s|%s|%v", c.Failure, c.Op, c.Sync) }

// MergeCells replaces the cells of old that fresh measured again and
// keeps the others, in the matrix's order (operating point, mode,
// failure): the whole matrix takes long, so it may be filled a part at
// a time, each cell saying when it was measured.
func MergeCells(old, fresh []BenchCell) []BenchCell {
	byKey := map[string]BenchCell{}
	for _, c := range old {
		byKey[c.key()] = c
	}
	for _, c := range fresh {
		byKey[c.key()] = c
	}
	var out []BenchCell
	for _, op := range OperatingPoints {
		for _, sync := range []bool{false, true} {
			for _, f := range Failures {
				if c, ok := byKey[BenchCell{Failure: f.Name, Op: op.Name, Sync: sync}.key()]; ok {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// MatrixMarkdown renders the cells as one table.
func MatrixMarkdown(cells []BenchCell) string {
	var b strings.Builder
	b.WriteString("| failure | probe/down_after | replication | runs | failed over | VIP p50 | VIP p99 | VIP max | HAProxy p50 | HAProxy p99 | HAProxy max | acked lost | stranded acked after t0 | false failovers | checker violations | measured |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range cells {
		mode := "async"
		if c.Sync {
			mode = "sync"
		}
		var vip, hap []time.Duration
		failed, lost, stranded, falseF := 0, 0, 0, 0
		viol := map[string]int{}
		for _, r := range c.Runs {
			if r.Failover {
				failed++
			}
			if r.VIP > 0 {
				vip = append(vip, r.VIP)
			}
			if r.HAProxy > 0 {
				hap = append(hap, r.HAProxy)
			}
			lost += r.Lost
			stranded += r.Stranded
			falseF += r.FalseFailovers
			for _, v := range r.Violations {
				viol[v]++
			}
		}
		runs := fmt.Sprint(len(c.Runs))
		if c.Errors > 0 {
			runs += fmt.Sprintf(" (+%d not carried out)", c.Errors)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %d | %d | %d | %s | %s |\n",
			c.Failure, c.Op, mode, runs, failed,
			quant(vip, 50, len(c.Runs)), quant(vip, 99, len(c.Runs)), quant(vip, 100, len(c.Runs)),
			quant(hap, 50, len(c.Runs)), quant(hap, 99, len(c.Runs)), quant(hap, 100, len(c.Runs)),
			lost, stranded, falseF, violString(viol), c.Measured)
	}
	b.WriteString("\nUnavailability is t0 (taken just before the fault is injected) → the first write acknowledged by another member, through the VIP (client host in the namespace lab, gratuitous ARP) and through HAProxy (its own host; checks every 200 ms against obs1's role endpoint, re-pointed through the Runtime API). A figure with \"(n of N)\" counts only the runs where that path reached a new primary within 20 s; \"—\": none did (vigil did not fail over). Percentiles are nearest-rank: with 10 runs p99 is the maximum.\n")
	return b.String()
}

func quant(d []time.Duration, q, runs int) string {
	if len(d) == 0 {
		return "—"
	}
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (q*len(s)+99)/100 - 1
	i = max(0, min(i, len(s)-1))
	v := fmt.Sprintf("%.2f s", s[i].Seconds())
	if len(s) < runs {
		v += fmt.Sprintf(" (%d of %d)", len(s), runs)
	}
	return v
}

func violString(v map[string]int) string {
	if len(v) == 0 {
		return "none"
	}
	var keys []string
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("(%s)×%d", k, v[k]))
	}
	return strings.Join(parts, ", ")
}
