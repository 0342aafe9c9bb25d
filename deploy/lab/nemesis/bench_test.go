package nemesis

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchMatrixSmoke is the matrix's CI cell: one process crash at the
// default operating point, asynchronous. It asserts that the run was
// measured end to end (a failover, a write through each path on the new
// primary, nothing the checker objects to), never how fast.
func TestBenchMatrixSmoke(t *testing.T) {
	requireLab(t)
	vigil := buildVigil(t, "hashicorpmetrics")
	dir := tempDir(t, "nemesis-bench-smoke-")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	op := OperatingPoints[0]
	l, err := NewLab(ctx, LabConfig{Vigil: vigil, Dir: dir, Disks: true,
		ProbeInterval: op.Interval, ProbeTimeout: op.Timeout, DownAfter: op.DownAfter, LeaseTimeout: op.Lease})
	if err != nil {
		t.Fatalf("lab (logs in %s): %v", dir, err)
	}
	closed := false
	defer func() {
		if !closed {
			l.Close()
		}
	}()
	r, h, err := BenchOnce(ctx, l, KindKillPostgres, 1)
	if err != nil {
		t.Fatalf("bench run (logs in %s): %v", dir, err)
	}
	if !r.Failover || r.VIP == 0 || r.HAProxy == 0 || len(r.Violations) > 0 {
		t.Fatalf("crash not measured end to end (logs in %s): %+v\n%s", dir, r, Timeline(h))
	}
	t.Logf("crash at %s: VIP %s, HAProxy %s, lost %d, stranded acked after t0 %d", op.Name, r.VIP, r.HAProxy, r.Lost, r.Stranded)
	l.Close()
	closed = true
	os.RemoveAll(dir)
}

func tempDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBenchMatrix runs the failure-mode matrix (make bench-matrix):
// every failure × operating point × replication mode, VIGIL_BENCH_RUNS
// runs each (default 10), and writes the table into VIGIL_BENCH_DOC
// between the matrix markers. VIGIL_BENCH_FAILURES (kinds), VIGIL_BENCH_OPS
// (operating point names) and VIGIL_BENCH_MODES (sync, async) narrow it.
// Skipped unless VIGIL_BENCH_MATRIX is set.
func TestBenchMatrix(t *testing.T) {
	if os.Getenv("VIGIL_BENCH_MATRIX") == "" {
		t.Skip("set VIGIL_BENCH_MATRIX=1 (make bench-matrix)")
	}
	requireLab(t)
	runs := 10
	if v := os.Getenv("VIGIL_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("VIGIL_BENCH_RUNS=%q: want a positive number", v)
		}
		runs = n
	}
	want := func(env, v string) bool {
		f := os.Getenv(env)
		return f == "" || slices.Contains(strings.Split(f, ","), v)
	}
	stamp := buildStamp(fmt.Sprintf("make bench-matrix (%d runs a cell); each row says when it was measured", runs))
	measured := measuredStamp()
	vigil := buildVigil(t, "hashicorpmetrics")
	var cells []BenchCell
	start := time.Now()
	seq := 0
	for _, op := range OperatingPoints {
		if !want("VIGIL_BENCH_OPS", op.Name) {
			continue
		}
		for _, sync := range []bool{false, true} {
			if !want("VIGIL_BENCH_MODES", modeName(sync)) {
				continue
			}
			var l *Lab
			var dir string
			keep := false // a run worth looking at happened on this lab
			closeLab := func() {
				if l != nil {
					l.Close()
					if !keep {
						os.RemoveAll(dir)
					}
				}
				l, keep = nil, false
			}
			for _, fl := range Failures {
				if !want("VIGIL_BENCH_FAILURES", fl.Kind) {
					continue
				}
				cell := BenchCell{Failure: fl.Name, Op: op.Name, Sync: sync, Measured: measured}
				for i := 0; i < runs; i++ {
					seq++
					if l == nil {
						dir = tempDir(t, "nemesis-bench-")
						ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
						var err error
						l, err = NewLab(ctx, LabConfig{Vigil: vigil, Dir: dir, Sync: sync, Disks: true,
							ProbeInterval: op.Interval, ProbeTimeout: op.Timeout, DownAfter: op.DownAfter, LeaseTimeout: op.Lease})
						cancel()
						if err != nil {
							t.Logf("lab for %s %s did not start: %v", op.Name, modeName(sync), err)
							l = nil
							cell.Errors++
							continue
						}
					}
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
					r, h, err := BenchOnce(ctx, l, fl.Kind, seq)
					cancel()
					if err != nil {
						t.Logf("%s %s %s run %d not carried out: %v", fl.Name, op.Name, modeName(sync), i+1, err)
						cell.Errors++
						closeLab()
						continue
					}
					cell.Runs = append(cell.Runs, r)
					fmt.Fprintf(os.Stderr, "bench: %s %s %s run %d/%d: failover %v, VIP %s, HAProxy %s, lost %d, stranded %d, violations %v (%s elapsed)\n",
						fl.Name, op.Name, modeName(sync), i+1, runs, r.Failover, r.VIP.Round(time.Millisecond), r.HAProxy.Round(time.Millisecond),
						r.Lost, r.Stranded, r.Violations, time.Since(start).Round(time.Second))
					if len(r.Violations) > 0 || !r.Failover {
						// Keep what explains it: the history and the lab's logs.
						path := filepath.Join(dir, fmt.Sprintf("history-%d.json", seq))
						_ = WriteHistory(path, h)
						fmt.Fprintf(os.Stderr, "bench: run kept for a look: %s (lab logs beside it)\n%s\n", path, Timeline(h))
						keep = true
					}
					if len(r.Violations) > 0 {
						closeLab() // start the next run from a fresh lab
					}
				}
				cells = append(cells, cell)
			}
			closeLab()
		}
	}
	fmt.Println(MatrixMarkdown(cells))
	fmt.Fprintf(os.Stderr, "bench: the cells took %s\n", time.Since(start).Round(time.Minute))
	if path := os.Getenv("VIGIL_BENCH_DOC"); path != "" {
		// The cells measured before (docs/bench-matrix.json) are kept
		// unless measured again.
		store := strings.TrimSuffix(path, filepath.Ext(path)) + "-matrix.json"
		if filepath.Base(path) == "BENCHMARKS.md" {
			store = filepath.Join(filepath.Dir(path), "bench-matrix.json")
		}
		var old []BenchCell
		if b, err := os.ReadFile(store); err == nil {
			if err := json.Unmarshal(b, &old); err != nil {
				t.Fatalf("%s: %v", store, err)
			}
		}
		all := MergeCells(old, cells)
		b, err := json.MarshalIndent(all, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(store, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := writeMatrixSection(path, stamp, MatrixMarkdown(all)); err != nil {
			t.Fatal(err)
		}
	}
}

const (
	matrixBegin = "<!-- bench-matrix:begin (generated by make bench-matrix; do not edit) -->"
	matrixEnd   = "<!-- bench-matrix:end -->"
)

func writeMatrixSection(path, stamp, md string) error {
	return replaceSection(path, matrixBegin, matrixEnd, stamp+md)
}

// replaceSection replaces what lies between begin and end in path (or
// appends the section).
func replaceSection(path, begin, end, body string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	section := begin + "\n" + body + "\n" + end
	doc := string(old)
	b, e := strings.Index(doc, begin), strings.Index(doc, end)
	if b >= 0 && e > b {
		doc = doc[:b] + section + doc[e+len(end):]
	} else {
		doc += "\n" + section + "\n"
	}
	return os.WriteFile(path, []byte(doc), 0o644)
}

// measuredStamp is a cell's "measured" column: the date and the commit.
func measuredStamp() string {
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	dirty, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	rev := strings.TrimSpace(string(commit))
	if len(strings.TrimSpace(string(dirty))) > 0 {
		rev += "+"
	}
	return time.Now().UTC().Format("2006-01-02") + " " + rev
}
