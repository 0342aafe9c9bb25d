package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func feed(t *testing.T, events ...event) (string, int) {
	t.Helper()
	var out bytes.Buffer
	s := newSummary(&out)
	for _, e := range events {
		// Round-trip through JSON, as the events arrive.
		b, _ := json.Marshal(e)
		var got event
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		s.add(got)
	}
	code := s.report()
	return out.String(), code
}

const pkg = "github.com/vigilha/vigil/health"

func TestSummaryCountsAndSkipReasons(t *testing.T) {
	out, code := feed(t,
		event{Action: "start", Package: pkg},
		event{Action: "run", Package: pkg, Test: "TestA"},
		event{Action: "output", Package: pkg, Test: "TestA", Output: "=== RUN   TestA\n"},
		event{Action: "pass", Package: pkg, Test: "TestA"},
		event{Action: "output", Package: pkg, Test: "TestB", Output: "--- SKIP: TestB (0.00s)\n"},
		event{Action: "output", Package: pkg, Test: "TestB", Output: "    b_test.go:12: needs root\n"},
		event{Action: "skip", Package: pkg, Test: "TestB"},
		// go test -json prints the reason before the SKIP line.
		event{Action: "output", Package: pkg, Test: "TestD", Output: "=== RUN   TestD\n"},
		event{Action: "output", Package: pkg, Test: "TestD", Output: "    d_test.go:3: set VIGIL_SOAK_RUNS (make soak)\n"},
		event{Action: "output", Package: pkg, Test: "TestD", Output: "--- SKIP: TestD (0.00s)\n"},
		event{Action: "skip", Package: pkg, Test: "TestD"},
		event{Action: "output", Package: pkg, Output: "PASS\n"},
		event{Action: "output", Package: pkg, Output: "ok  \t" + pkg + "\t0.1s\n"},
		event{Action: "pass", Package: pkg},
	)
	if code != 0 {
		t.Fatalf("exit %d for a passing run:\n%s", code, out)
	}
	for _, want := range []string{"ok  \t" + pkg, "tests: 1 passed, 0 failed, 2 skipped", "skipped (1): needs root: health.TestB", "skipped (1): set VIGIL_SOAK_RUNS (make soak): health.TestD"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "=== RUN") || strings.Contains(out, "\nPASS\n") {
		t.Errorf("a passing test's output was printed:\n%s", out)
	}
}

func TestSummaryFailuresAndDeadBinaries(t *testing.T) {
	out, code := feed(t,
		event{Action: "start", Package: pkg},
		event{Action: "output", Package: pkg, Test: "TestC", Output: "    c_test.go:9: got 1, want 2\n"},
		event{Action: "fail", Package: pkg, Test: "TestC"},
		event{Action: "fail", Package: pkg},
		event{Action: "start", Package: "github.com/vigilha/vigil/fsm"},
	)
	if code != 1 {
		t.Fatalf("exit %d for a failing run", code)
	}
	for _, want := range []string{"got 1, want 2", "FAILED: health.TestC", "NO RESULT: package fsm"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, code := feed(t, event{Action: "build-output", ImportPath: "x", Output: "x.go:1: syntax error\n"}, event{Action: "build-fail", ImportPath: "x"}); code != 1 {
		t.Errorf("exit %d for a build failure", code)
	}
}
