package deploytest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// promtool runs promtool with args from dir and fails t on a non-zero exit.
func promtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool(t, "promtool", "prometheus"), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPromtoolCheckRules(t *testing.T) {
	out := promtool(t, repoRoot(t), "check", "rules", filepath.FromSlash(rulesFile))
	t.Logf("%s", strings.TrimSpace(out))
}

// TestPromtoolRuleUnitTests runs the alert rules' unit tests: each alert
// fires on the series it is meant for, and not on the others (only the
// current leader's candidate judgement counts, a first aborted failover
// is seen although its counter starts at 1, …).
func TestPromtoolRuleUnitTests(t *testing.T) {
	out := promtool(t, filepath.Dir(kitPath(t, rulesTestFile)), "test", "rules", filepath.Base(rulesTestFile))
	t.Logf("%s", strings.TrimSpace(out))
	// Every alert has at least one unit test in which it fires.
	data, err := os.ReadFile(kitPath(t, rulesTestFile))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range doc.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for _, r := range loadRules(t) {
		if r.Alert != "" && !fires[r.Alert] {
			t.Errorf("alert %s has no unit test in %s in which it fires", r.Alert, rulesTestFile)
		}
	}
}

// TestPromtoolCheckScrapeConfig checks prometheus.yml (and the rules file
// it loads).
func TestPromtoolCheckScrapeConfig(t *testing.T) {
	out := promtool(t, repoRoot(t), "check", "config", filepath.FromSlash(scrapeFile))
	t.Logf("%s", strings.TrimSpace(out))
}

// TestDashboardQueriesParse has promtool parse every dashboard query (with
// Grafana's variables replaced), by checking them as recording rules.
func TestDashboardQueriesParse(t *testing.T) {
	type recRule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []recRule
	var where []string
	for _, q := range kitQueries(t) {
		if strings.HasPrefix(q.Where, rulesFile) {
			continue
		}
		expr := q.Expr
		if q.Label != "" {
			expr = fmt.Sprintf("count by (%s) (%s)", q.Label, expr)
		}
		rules = append(rules, recRule{Record: fmt.Sprintf("dashboard:query_%d", len(rules)), Expr: grafanaVars.Replace(expr)})
		where = append(where, q.Where)
	}
	doc := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	data, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool(t, "promtool", "prometheus"), "check", "rules", path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		// Name the panel behind each failing recording rule.
		msg := string(out)
		for i := len(where) - 1; i >= 0; i-- {
			msg = strings.ReplaceAll(msg, fmt.Sprintf("dashboard:query_%d", i), where[i])
		}
		t.Fatalf("promtool rejects dashboard queries: %v\n%s", err, msg)
	}
	t.Logf("promtool parsed %d dashboard queries", len(rules))
}

// TestAlertsAreDocumented checks that every alert has a severity, a summary,
// a description and a runbook link to its own section of
// docs/operations.md.
func TestAlertsAreDocumented(t *testing.T) {
	anchors := markdownAnchors(t, kitPath(t, operationsDoc))
	seen := map[string]bool{}
	for _, r := range loadRules(t) {
		if r.Alert == "" {
			continue
		}
		if seen[r.Alert] {
			t.Errorf("alert %s defined twice", r.Alert)
		}
		seen[r.Alert] = true
		switch r.Labels["severity"] {
		case "critical", "warning", "info":
		default:
			t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s: annotation %s missing", r.Alert, a)
			}
		}
		u := r.Annotations["runbook_url"]
		const prefix = "https://github.com/vigilha/vigil/blob/main/" + operationsDoc + "#"
		anchor, ok := strings.CutPrefix(u, prefix)
		if !ok {
			t.Errorf("%s: runbook_url %q does not point into %s", r.Alert, u, operationsDoc)
			continue
		}
		if anchor != strings.ToLower(r.Alert) {
			t.Errorf("%s: runbook anchor %q, want %q", r.Alert, anchor, strings.ToLower(r.Alert))
		}
		if !anchors[anchor] {
			t.Errorf("%s: %s has no heading for #%s", r.Alert, operationsDoc, anchor)
		}
	}
}

// markdownAnchors returns GitHub's anchors for the headings of a file.
func markdownAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]bool{}
	heading := regexp.MustCompile(`^#{1,6}\s+(.*)$`)
	drop := regexp.MustCompile(`[^\p{L}\p{N}\- _]`)
	inFence := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			continue
		}
		m := heading.FindStringSubmatch(line)
		if inFence || m == nil {
			continue
		}
		a := strings.ToLower(strings.TrimSpace(m[1]))
		a = drop.ReplaceAllString(a, "")
		a = strings.ReplaceAll(a, " ", "-")
		out[a] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
