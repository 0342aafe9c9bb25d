package deploytest

import (
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// exprInfo is what the metric checks need from one PromQL expression. It
// is extracted lexically (the Prometheus parser is not a dependency of
// this module); promtool and a real Prometheus check the syntax itself.
type exprInfo struct {
	// Selectors are the vigil_* series selectors, in order.
	Selectors []selector
	// Grouping are the label names of by/without/on/ignoring/group_left/
	// group_right clauses.
	Grouping []string
}

// selector is one series selector: a metric name and the label names its
// matchers use.
type selector struct {
	Metric string
	Labels []string
}

var (
	// String literals are blanked first, so that label values (which may
	// contain anything, even "vigil_x") are never taken for names.
	stringLit  = regexp.MustCompile("\"(?:\\\\.|[^\"\\\\])*\"|'(?:\\\\.|[^'\\\\])*'|`[^`]*`")
	identifier = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	matcher    = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)`)
	grouping   = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
)

// analyzeExpr extracts the vigil_* selectors and grouping labels of expr.
func analyzeExpr(expr string) exprInfo {
	s := stringLit.ReplaceAllString(expr, `""`)
	var info exprInfo
	for _, loc := range identifier.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if !strings.HasPrefix(name, "vigil_") {
			continue
		}
		// Skip names preceded by '$' (Grafana variables) or '.' (templates).
		if loc[0] > 0 && strings.ContainsRune("$.", rune(s[loc[0]-1])) {
			continue
		}
		sel := selector{Metric: name}
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "{") {
			if end := strings.IndexByte(rest, '}'); end > 0 {
				for _, m := range matcher.FindAllStringSubmatch(rest[1:end], -1) {
					sel.Labels = append(sel.Labels, m[1])
				}
			}
		}
		info.Selectors = append(info.Selectors, sel)
	}
	for _, m := range grouping.FindAllStringSubmatch(s, -1) {
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				info.Grouping = append(info.Grouping, l)
			}
		}
	}
	return info
}

// labelValuesQuery matches a Grafana label_values(metric, label) variable
// query.
var labelValuesQuery = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$`)

// legendLabels returns the label names a Grafana legend format uses.
func legendLabels(format string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`).FindAllStringSubmatch(format, -1) {
		out = append(out, m[1])
	}
	return out
}

func TestAnalyzeExpr(t *testing.T) {
	cases := []struct {
		expr      string
		selectors []selector
		grouping  []string
	}{
		{`vigil_raft_term`, []selector{{Metric: "vigil_raft_term"}}, nil},
		{`max by (group) (vigil_group_paused{group=~"$group", job!="vigil_fake"}) == 1`,
			[]selector{{Metric: "vigil_group_paused", Labels: []string{"group", "job"}}}, []string{"group"}},
		{`histogram_quantile(0.99, sum by (le, observer) (rate(vigil_probe_duration_seconds_bucket{group=~"a}b"}[$__rate_interval]) * on (instance) group_left (observer) vigil_observer_info{observer=~"$observer"}))`,
			[]selector{{Metric: "vigil_probe_duration_seconds_bucket", Labels: []string{"group"}}, {Metric: "vigil_observer_info", Labels: []string{"observer"}}},
			[]string{"le", "observer", "instance", "observer"}},
		{`up{job="vigil-observer"} == 0`, nil, nil},
		{`label_replace(x, "dst", "$1", "src", "vigil_(.*)")`, nil, nil},
		{`$vigil_var + vigil_a{ a = "1" , b=~'2' }`, []selector{{Metric: "vigil_a", Labels: []string{"a", "b"}}}, nil},
	}
	for _, c := range cases {
		got := analyzeExpr(c.expr)
		if !slices.EqualFunc(got.Selectors, c.selectors, func(a, b selector) bool {
			return a.Metric == b.Metric && slices.Equal(a.Labels, b.Labels)
		}) {
			t.Errorf("analyzeExpr(%q) selectors = %+v, want %+v", c.expr, got.Selectors, c.selectors)
		}
		if !slices.Equal(got.Grouping, c.grouping) {
			t.Errorf("analyzeExpr(%q) grouping = %v, want %v", c.expr, got.Grouping, c.grouping)
		}
	}
	if got := legendLabels("p99 {{group}}/{{ member }} by {{observer}}"); !slices.Equal(got, []string{"group", "member", "observer"}) {
		t.Errorf("legendLabels = %v", got)
	}
	if m := labelValuesQuery.FindStringSubmatch("label_values(vigil_observer_info, observer)"); m == nil || m[1] != "vigil_observer_info" || m[2] != "observer" {
		t.Errorf("label_values not parsed: %v", m)
	}
}

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
