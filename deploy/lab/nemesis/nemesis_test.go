package nemesis

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/deploy/lab/netlab"
	"github.com/vigilha/vigil/deploy/lab/pglab"
)

// The seeds `make test` runs: fixed, so CI replays the same schedules.
// Each was drawn to cover different fault kinds in both modes.
var ciSeeds = []int64{1, 2, 3}

// buildVigil builds the vigil binary once per tag set.
var (
	buildMu   sync.Mutex
	buildDone = map[string]string{}
)

// TestMain removes the binaries buildVigil made.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, p := range buildDone {
		os.RemoveAll(filepath.Dir(p))
	}
	os.Exit(code)
}

func buildVigil(t testing.TB, tags string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := buildDone[tags]; ok {
		return p
	}
	dir, err := os.MkdirTemp("", "nemesis-bin-")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "vigil")
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	cmd := exec.Command("go", "build", "-tags", tags, "-o", out, "./cmd/vigil")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build vigil (-tags %s): %v\n%s", tags, err, b)
	}
	buildDone[tags] = out
	return out
}

func requireLab(t *testing.T) {
	t.Helper()
	netlab.Require(t)
	pglab.SkipUnlessAvailable(t)
	for _, tool := range []string{"haproxy", "nft", "fsfreeze", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("VIGIL_REQUIRE_TOOLS") != "" {
				t.Fatalf("%s not installed", tool)
			}
			t.Skipf("%s not installed; set VIGIL_REQUIRE_TOOLS=1 to fail instead", tool)
		}
	}
}

// seedsFromEnv reads VIGIL_NEMESIS_SEEDS ("7,12,40"), or returns def.
func seedsFromEnv(t *testing.T, def []int64) []int64 {
	v := os.Getenv("VIGIL_NEMESIS_SEEDS")
	if v == "" {
		return def
	}
	var res []int64
	for _, f := range strings.Split(v, ",") {
		s, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
		if err != nil {
			t.Fatalf("VIGIL_NEMESIS_SEEDS: %q is not a seed: %v", f, err)
		}
		res = append(res, s)
	}
	return res
}

// runSeed runs one seed and returns the checker's report; a failing run
// keeps its directory and history and logs the timeline.
func runSeed(t *testing.T, vigil string, cfg RunConfig) (*History, Report, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", fmt.Sprintf("nemesis-%d-", cfg.Seed))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Vigil, cfg.Dir = vigil, dir
	if testing.Verbose() {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, plan, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("seed %d: run could not be carried out (logs in %s): %v\nplan: %s", cfg.Seed, dir, err, plan)
	}
	rep := Check(h)
	if rep.OK() && os.Getenv("VIGIL_NEMESIS_KEEP") == "" {
		os.RemoveAll(dir)
		return h, rep, dir
	}
	if rep.OK() {
		_ = WriteHistory(filepath.Join(dir, "history.json"), h)
		t.Logf("seed %d passed; plan: %s; run directory kept (VIGIL_NEMESIS_KEEP): %s\n%s", cfg.Seed, plan, dir, Timeline(h))
		return h, rep, dir
	}
	_ = WriteHistory(filepath.Join(dir, "history.json"), h)
	t.Logf("seed %d failed; plan: %s; run directory kept: %s\n%s", cfg.Seed, plan, dir, Timeline(h))
	return h, rep, dir
}

func verdictLines(rep Report) string {
	var b strings.Builder
	for _, v := range rep.Verdicts {
		if v.OK {
			continue
		}
		fmt.Fprintf(&b, "(%s) %s:\n", v.Property, v.Name)
		for _, s := range v.Violations {
			fmt.Fprintf(&b, "    %s\n", s)
		}
	}
	return b.String()
}

// TestNemesisFixedSeeds replays a few fixed seeds on the real lab (every
// process on its own host) and requires the checker to find nothing.
// VIGIL_NEMESIS_SEEDS replaces the seeds; VIGIL_NEMESIS_KINDS (comma
// separated) limits the fault kinds drawn.
func TestNemesisFixedSeeds(t *testing.T) {
	requireLab(t)
	vigil := buildVigil(t, "hashicorpmetrics")
	for _, seed := range seedsFromEnv(t, ciSeeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			var kinds []string
			if v := os.Getenv("VIGIL_NEMESIS_KINDS"); v != "" {
				kinds = strings.Split(v, ",")
			}
			_, rep, _ := runSeed(t, vigil, RunConfig{Seed: seed, Length: 25 * time.Second, Sync: -1, Kinds: kinds})
			if !rep.OK() {
				t.Errorf("seed %d: violations (rerun: VIGIL_NEMESIS_SEEDS=%d go test -tags hashicorpmetrics -run TestNemesisFixedSeeds ./deploy/lab/nemesis/):\n%s", seed, seed, verdictLines(rep))
			}
		})
	}
}

// TestNemesisCatchesUnsafeBuild proves the checker can fail: with a
// vigil built without fencing (build tag vigil_unsafe_nofence), cutting
// the primary's host off from the observers must end with two writable
// routed primaries, or lost writes, and the checker must say so.
func TestNemesisCatchesUnsafeBuild(t *testing.T) {
	requireLab(t)
	vigil := buildVigil(t, "hashicorpmetrics,vigil_unsafe_nofence")
	h, rep, dir := runSeed(t, vigil, RunConfig{Seed: 4242, Length: 15 * time.Second, Kinds: []string{KindPartitionPrimary}, Sync: 0, Settle: 20 * time.Second})
	if rep.OK() {
		t.Fatalf("the checker found nothing wrong with fencing disabled:\n%s", Timeline(h))
	}
	caught := false
	for _, v := range rep.Verdicts {
		if !v.OK && (v.Property == "a" || v.Property == "b") {
			caught = true
		}
	}
	if !caught {
		t.Fatalf("fencing disabled, but no violation of (a) or (b):\n%s", verdictLines(rep))
	}
	// The run "failed" as it must: its kept directory is not a clue.
	os.RemoveAll(dir)
	t.Logf("as it must, the checker caught the unsafe build:\n%s", verdictLines(rep))
}

// TestSoak runs VIGIL_SOAK_RUNS seeds from VIGIL_SOAK_SEED (default 1000)
// and prints the summary table; with VIGIL_SOAK_DOC=path it writes the
// table into that file between the soak markers (make soak writes
// docs/RELIABILITY.md). Skipped unless VIGIL_SOAK_RUNS is set.
//
// Runs of one replication mode share a lab: a run ends settled (one
// primary, every standby streaming from it, which property (d) checks),
// and that is how the next one must start. A lab is rebuilt after a run
// that violated anything or did not settle, so that one failure does not
// spill into the next seed.
func TestSoak(t *testing.T) {
	runs, _ := strconv.Atoi(os.Getenv("VIGIL_SOAK_RUNS"))
	if runs <= 0 {
		t.Skip("set VIGIL_SOAK_RUNS (make soak)")
	}
	requireLab(t)
	seed0 := int64(1000)
	if v := os.Getenv("VIGIL_SOAK_SEED"); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("VIGIL_SOAK_SEED=%q: %v", v, err)
		}
		seed0 = s
	}
	length := 20 * time.Second
	if v := os.Getenv("VIGIL_SOAK_LENGTH"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("VIGIL_SOAK_LENGTH=%q: %v", v, err)
		}
		length = d
	}
	stamp := buildStamp("make soak")
	vigil := buildVigil(t, "hashicorpmetrics")
	bySync := map[bool][]int64{}
	for i := 0; i < runs; i++ {
		seed := seed0 + int64(i)
		p := NewPlan(seed, length, nil, -1)
		bySync[p.Sync] = append(bySync[p.Sync], seed)
	}
	var reports []Report
	var harness []string
	start := time.Now()
	done := 0
	for _, sync := range []bool{false, true} {
		var l *Lab
		var labDir string
		closeLab := func(keep bool) {
			if l != nil {
				l.Close()
				if !keep {
					os.RemoveAll(labDir)
				}
			}
			l = nil
		}
		for _, seed := range bySync[sync] {
			done++
			if l == nil {
				var err error
				labDir, err = os.MkdirTemp("", "nemesis-soak-")
				if err == nil {
					err = os.Chmod(labDir, 0o755)
				}
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				l, err = NewLab(ctx, LabConfig{Vigil: vigil, Dir: labDir, Sync: sync, Disks: true})
				cancel()
				if err != nil {
					harness = append(harness, fmt.Sprintf("seed %d: lab did not start: %v", seed, err))
					l = nil
					continue
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			h, err := RunOn(ctx, l, RunConfig{Seed: seed, Length: length, Sync: boolInt(sync)})
			cancel()
			if err != nil {
				harness = append(harness, fmt.Sprintf("seed %d: run not carried out (lab %s): %v", seed, labDir, err))
				closeLab(true)
				continue
			}
			rep := Check(h)
			reports = append(reports, rep)
			status := "ok"
			if !rep.OK() {
				path := filepath.Join(labDir, fmt.Sprintf("history-%d.json", seed))
				_ = WriteHistory(path, h)
				status = fmt.Sprintf("VIOLATION (history %s, lab kept)\n%s\n%s", path, verdictLines(rep), Timeline(h))
				closeLab(true)
			}
			fmt.Fprintf(os.Stderr, "soak: run %d/%d seed %d (%s): %s (%s elapsed)\n", done, runs, seed, modeName(sync), status, time.Since(start).Round(time.Second))
		}
		closeLab(false)
	}
	md := Summarize(reports).Markdown()
	md += fmt.Sprintf("\n%d runs of %s each, %s in all; seeds %d to %d.\n", runs, length, time.Since(start).Round(time.Minute), seed0, seed0+int64(runs)-1)
	if len(harness) > 0 {
		md += "\nRuns the harness could not carry out (not judged):\n\n"
		for _, hline := range harness {
			md += "- " + hline + "\n"
		}
	}
	fmt.Println(md)
	if path := os.Getenv("VIGIL_SOAK_DOC"); path != "" {
		if err := writeSoakSection(path, stamp, md); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range reports {
		if !r.OK() {
			t.Errorf("seed %d violated: %s", r.Seed, verdictLines(r))
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func modeName(sync bool) string {
	if sync {
		return "sync"
	}
	return "async"
}

// Markers around the generated part of docs/RELIABILITY.md.
const (
	soakBegin = "<!-- soak:begin (generated by make soak; do not edit) -->"
	soakEnd   = "<!-- soak:end -->"
)

// buildStamp says what code a run is measuring: the date, the commit
// (and whether the tree had uncommitted changes when the binaries were
// built), the machine. Taken when the run starts.
func buildStamp(what string) string {
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	dirty, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	uname, _ := exec.Command("uname", "-srm").Output()
	rev := strings.TrimSpace(string(commit))
	if len(strings.TrimSpace(string(dirty))) > 0 {
		rev += " with uncommitted changes"
	}
	return fmt.Sprintf("Produced by `%s` on %s, commit %s, %s, %d CPUs.\n\n",
		what, time.Now().UTC().Format("2006-01-02"), rev, strings.TrimSpace(string(uname)), runtime.NumCPU())
}

// writeSoakSection replaces the generated section of path (or appends
// one) with stamp and md.
func writeSoakSection(path, stamp, md string) error {
	return replaceSection(path, soakBegin, soakEnd, stamp+md)
}
