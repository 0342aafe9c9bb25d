// Command testsummary reads `go test -json` on stdin and prints what a
// plain `go test` would (each package's result line, the whole output of
// every failing test, build errors), then how many tests passed, failed
// and were skipped, and why each skipped test was skipped. It exits 1
// when a test or a build failed, or when the stream ended without a
// package result (the test binary died). make test pipes into it.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

type key struct{ pkg, test string }

type summary struct {
	out                  io.Writer
	buf                  map[key][]string // output of running tests
	passed, failed       int
	skipped              map[string][]string // reason -> tests
	failedTests          []string
	pkgFailed, buildFail bool
	started, finished    map[string]bool
}

func newSummary(out io.Writer) *summary {
	return &summary{out: out, buf: map[key][]string{}, skipped: map[string][]string{},
		started: map[string]bool{}, finished: map[string]bool{}}
}

func (s *summary) add(e event) {
	k := key{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		fmt.Fprint(s.out, e.Output)
	case "build-fail":
		s.buildFail = true
	case "start":
		s.started[e.Package] = true
	case "output":
		if e.Test == "" {
			if strings.TrimSpace(e.Output) != "PASS" {
				fmt.Fprint(s.out, e.Output)
			}
			return
		}
		s.buf[k] = append(s.buf[k], e.Output)
	case "pass", "fail", "skip":
		if e.Test == "" {
			s.finished[e.Package] = true
			if e.Action == "fail" {
				s.pkgFailed = true
			}
			return
		}
		lines := s.buf[k]
		delete(s.buf, k)
		name := shortPkg(e.Package) + "." + e.Test
		switch e.Action {
		case "pass":
			s.passed++
		case "fail":
			s.failed++
			s.failedTests = append(s.failedTests, name)
			for _, l := range lines {
				fmt.Fprint(s.out, l)
			}
		case "skip":
			r := skipReason(lines)
			s.skipped[r] = append(s.skipped[r], name)
		}
	}
}

// skipReason is the message a skipped test logged (t.Skip's argument):
// the last "file_test.go:12: reason" line of its output, which go test
// prints before or after the SKIP line; "no reason given" without one.
func skipReason(lines []string) string {
	reason := ""
	for _, l := range lines {
		r := strings.TrimSpace(l)
		if r == "" || strings.HasPrefix(r, "=== ") || strings.HasPrefix(r, "--- ") {
			continue
		}
		if loc, after, ok := strings.Cut(r, ": "); ok && strings.Contains(loc, ".go:") {
			reason = after
		}
	}
	if reason == "" {
		return "no reason given"
	}
	return reason
}

func shortPkg(p string) string {
	return strings.TrimPrefix(p, "github.com/vigilha/vigil/")
}

// report prints the summary and returns the exit code.
func (s *summary) report() int {
	var unfinished []string
	for p := range s.started {
		if !s.finished[p] {
			unfinished = append(unfinished, shortPkg(p))
		}
	}
	sort.Strings(unfinished)
	skips := 0
	for _, ts := range s.skipped {
		skips += len(ts)
	}
	fmt.Fprintf(s.out, "\ntests: %d passed, %d failed, %d skipped\n", s.passed, s.failed, skips)
	reasons := make([]string, 0, len(s.skipped))
	for r := range s.skipped {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		ts := s.skipped[r]
		sort.Strings(ts)
		fmt.Fprintf(s.out, "  skipped (%d): %s: %s\n", len(ts), r, strings.Join(ts, ", "))
	}
	for _, t := range s.failedTests {
		fmt.Fprintf(s.out, "  FAILED: %s\n", t)
	}
	for _, p := range unfinished {
		fmt.Fprintf(s.out, "  NO RESULT: package %s (its test binary did not finish)\n", p)
	}
	if s.failed > 0 || s.pkgFailed || s.buildFail || len(unfinished) > 0 {
		return 1
	}
	return 0
}

func main() {
	s := newSummary(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event (go's own messages): pass it on.
			fmt.Fprintln(os.Stdout, string(line))
			continue
		}
		s.add(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary: reading go test -json:", err)
		os.Exit(1)
	}
	os.Exit(s.report())
}
