package deploytest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"
)

// requireToolsEnv turns a missing external tool (promtool, prometheus) from
// a skip into a failure; CI sets it.
const requireToolsEnv = "VIGIL_REQUIRE_TOOLS"

// tool returns the path of an external program, or skips t (fails it with
// VIGIL_REQUIRE_TOOLS=1) when it is not installed.
func tool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(requireToolsEnv) == "1" {
		t.Fatalf("%s is required (%s=1) but not installed: apt-get install -y %s", name, requireToolsEnv, pkg)
	}
	t.Skipf("%s not installed, skipping (apt-get install -y %s; set %s=1 to fail instead)", name, pkg, requireToolsEnv)
	return ""
}

// repoRoot returns the module root (the directory holding go.mod).
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// kitPath returns the path of a file of the kit, relative to the module root.
func kitPath(t testing.TB, rel string) string {
	t.Helper()
	return filepath.Join(repoRoot(t), filepath.FromSlash(rel))
}

const (
	dashboardFile = "deploy/grafana/vigil.json"
	rulesFile     = "deploy/prometheus/vigil-rules.yml"
	rulesTestFile = "deploy/prometheus/vigil-rules.test.yml"
	scrapeFile    = "deploy/prometheus/prometheus.yml"
	operationsDoc = "docs/operations.md"
)

// The Grafana dashboard model, as far as the checks need it.
type dashboard struct {
	SchemaVersion *int     `json:"schemaVersion"`
	UID           string   `json:"uid"`
	Title         string   `json:"title"`
	Panels        []*panel `json:"panels"`
	Templating    struct {
		List []templateVar `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []annotation `json:"list"`
	} `json:"annotations"`
}

type panel struct {
	ID          *int        `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	GridPos     *gridPos    `json:"gridPos"`
	Datasource  *datasource `json:"datasource"`
	Targets     []target    `json:"targets"`
	Panels      []*panel    `json:"panels"` // a collapsed row's panels
	Collapsed   bool        `json:"collapsed"`
	Description string      `json:"description"`
}

type gridPos struct {
	H, W, X, Y *int
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	Datasource   *datasource `json:"datasource"`
	Expr         string      `json:"expr"`
	LegendFormat string      `json:"legendFormat"`
	RefID        string      `json:"refId"`
	Instant      bool        `json:"instant"`
}

type templateVar struct {
	Name       string      `json:"name"`
	Type       string      `json:"type"`
	Query      any         `json:"query"`
	Definition string      `json:"definition"`
	Datasource *datasource `json:"datasource"`
	Multi      bool        `json:"multi"`
	IncludeAll bool        `json:"includeAll"`
}

type annotation struct {
	Name       string      `json:"name"`
	BuiltIn    int         `json:"builtIn"`
	Datasource *datasource `json:"datasource"`
	Expr       string      `json:"expr"`
}

// query returns the query text of a query variable (Grafana stores it as
// a string or as an object with a "query" field).
func (v templateVar) query() string {
	switch q := v.Query.(type) {
	case string:
		return q
	case map[string]any:
		s, _ := q["query"].(string)
		return s
	}
	return ""
}

func loadDashboard(t testing.TB) (*dashboard, map[string]any) {
	t.Helper()
	data, err := os.ReadFile(kitPath(t, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return &d, raw
}

// allPanels returns the panels including those inside collapsed rows.
func (d *dashboard) allPanels() []*panel {
	var out []*panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// The Prometheus rules file.
type rulesDoc struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t testing.TB) []rule {
	t.Helper()
	data, err := os.ReadFile(kitPath(t, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var doc rulesDoc
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var out []rule
	for _, g := range doc.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no rules", rulesFile)
	}
	return out
}

// query is one PromQL expression of the kit and where it comes from.
type query struct {
	Where  string
	Expr   string
	Legend string
	// Label is set for a label_values(metric, label) variable: the label
	// must exist on the metric.
	Label string
	// Panel is the dashboard panel the query belongs to (0 otherwise).
	Panel int
}

// kitQueries returns every query of the dashboard (panel targets,
// annotations, variables) and of the alert rules.
func kitQueries(t testing.TB) []query {
	t.Helper()
	d, raw := loadDashboard(t)
	var out []query
	exprs := 0
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			id := 0
			if p.ID != nil {
				id = *p.ID
			}
			out = append(out, query{Where: fmt.Sprintf("%s: panel %d %q target %s", dashboardFile, id, p.Title, tg.RefID),
				Expr: tg.Expr, Legend: tg.LegendFormat, Panel: id})
			exprs++
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			out = append(out, query{Where: fmt.Sprintf("%s: annotation %q", dashboardFile, a.Name), Expr: a.Expr})
			exprs++
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q := v.query()
		m := labelValuesQuery.FindStringSubmatch(q)
		if m == nil {
			t.Fatalf("%s: variable %s: query %q is not label_values(metric, label)", dashboardFile, v.Name, q)
		}
		out = append(out, query{Where: fmt.Sprintf("%s: variable %s", dashboardFile, v.Name), Expr: m[1], Label: m[2]})
	}
	// Every "expr" anywhere in the JSON must have been collected above.
	if n := countKey(raw, "expr"); n != exprs {
		t.Fatalf("%s has %d \"expr\" fields but the checks collected %d: a query sits where the test does not look", dashboardFile, n, exprs)
	}
	for _, r := range loadRules(t) {
		name := r.Alert
		if name == "" {
			name = r.Record
		}
		out = append(out, query{Where: fmt.Sprintf("%s: %s", rulesFile, name), Expr: r.Expr})
	}
	return out
}

// countKey counts the string values under key anywhere in a decoded JSON
// document.
func countKey(v any, key string) int {
	n := 0
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if _, ok := e.(string); ok && k == key {
				n++
			}
			n += countKey(e, key)
		}
	case []any:
		for _, e := range x {
			n += countKey(e, key)
		}
	}
	return n
}
