package deploytest

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// TestDashboardIsAGrafanaModel checks what Grafana needs to import the
// dashboard JSON: a schema version, unique panel ids, a gridPos inside
// the 24-column grid for every panel (without overlaps), every query on
// the datasource variable, and the group/observer variables.
func TestDashboardIsAGrafanaModel(t *testing.T) {
	d, raw := loadDashboard(t)
	if d.SchemaVersion == nil {
		t.Fatal("schemaVersion missing")
	}
	if *d.SchemaVersion != 39 {
		t.Errorf("schemaVersion = %d, want 39", *d.SchemaVersion)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q and title %q must be set", d.UID, d.Title)
	}
	if id, ok := raw["id"]; ok && id != nil {
		t.Errorf("id = %v: an exported dashboard has id null (Grafana assigns one on import)", id)
	}

	// Variables: datasource, group, observer.
	vars := map[string]templateVar{}
	for _, v := range d.Templating.List {
		if _, dup := vars[v.Name]; dup {
			t.Errorf("variable %s defined twice", v.Name)
		}
		vars[v.Name] = v
	}
	if ds, ok := vars["datasource"]; !ok || ds.Type != "datasource" || ds.query() != "prometheus" {
		t.Errorf("want a variable datasource of type datasource over prometheus, got %+v", ds)
	}
	for _, name := range []string{"group", "observer"} {
		v, ok := vars[name]
		if !ok {
			t.Errorf("variable %s missing", name)
			continue
		}
		if v.Type != "query" || !usesVariable(v.Datasource) {
			t.Errorf("variable %s: type %q datasource %+v, want a query on ${datasource}", name, v.Type, v.Datasource)
		}
		if !v.Multi || !v.IncludeAll {
			t.Errorf("variable %s should allow several values and All", name)
		}
		m := labelValuesQuery.FindStringSubmatch(v.query())
		if m == nil || m[2] != name {
			t.Errorf("variable %s: query %q is not label_values(metric, %s)", name, v.query(), name)
			continue
		}
		// Grafana's variable editor keeps metric and label next to the query.
		if q, ok := v.Query.(map[string]any); ok && (q["metric"] != m[1] || q["label"] != m[2]) {
			t.Errorf("variable %s: metric %v and label %v differ from the query %q", name, q["metric"], q["label"], v.query())
		}
	}

	// Panels.
	ids := map[int]string{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	panels := d.allPanels()
	if len(panels) == 0 {
		t.Fatal("no panels")
	}
	knownTypes := map[string]bool{"row": true, "stat": true, "timeseries": true, "state-timeline": true, "table": true, "bargauge": true, "gauge": true, "text": true}
	for i, p := range panels {
		where := fmt.Sprintf("panel #%d %q", i, p.Title)
		if p.ID == nil {
			t.Errorf("%s: no id", where)
		} else if other, dup := ids[*p.ID]; dup {
			t.Errorf("%s: id %d also used by %s", where, *p.ID, other)
		} else {
			ids[*p.ID] = where
		}
		if !knownTypes[p.Type] {
			t.Errorf("%s: unexpected panel type %q", where, p.Type)
		}
		if p.Title == "" {
			t.Errorf("%s: no title", where)
		}
		g := p.GridPos
		if g == nil || g.H == nil || g.W == nil || g.X == nil || g.Y == nil {
			t.Errorf("%s: gridPos with h, w, x and y required, got %+v", where, g)
			continue
		}
		if *g.W < 1 || *g.H < 1 || *g.X < 0 || *g.Y < 0 || *g.X+*g.W > 24 {
			t.Errorf("%s: gridPos h=%d w=%d x=%d y=%d is outside the 24-column grid", where, *g.H, *g.W, *g.X, *g.Y)
			continue
		}
		for x := *g.X; x < *g.X+*g.W; x++ {
			for y := *g.Y; y < *g.Y+*g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Errorf("%s overlaps %s at x=%d y=%d", where, other, x, y)
					goto next
				}
				taken[cell{x, y}] = where
			}
		}
	next:
		if p.Type == "row" {
			if len(p.Targets) > 0 {
				t.Errorf("%s: a row has no queries", where)
			}
			continue
		}
		if p.Description == "" {
			t.Errorf("%s: no description (operators read it as the panel's help)", where)
		}
		if !usesVariable(p.Datasource) {
			t.Errorf("%s: datasource %+v, want {type: prometheus, uid: ${datasource}}", where, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no queries", where)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("%s: refId %q empty or repeated", where, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource != nil && !usesVariable(tg.Datasource) {
				t.Errorf("%s target %s: datasource %+v, want ${datasource}", where, tg.RefID, tg.Datasource)
			}
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s target %s: empty expr", where, tg.RefID)
			}
			checkVariables(t, where+" target "+tg.RefID, tg.Expr, vars)
		}
	}
	for _, a := range d.Annotations.List {
		if a.BuiltIn == 1 {
			continue
		}
		if !usesVariable(a.Datasource) {
			t.Errorf("annotation %q: datasource %+v, want ${datasource}", a.Name, a.Datasource)
		}
		checkVariables(t, "annotation "+a.Name, a.Expr, vars)
	}
}

// usesVariable reports whether ds is the Prometheus datasource variable.
func usesVariable(ds *datasource) bool {
	return ds != nil && ds.Type == "prometheus" && (ds.UID == "${datasource}" || ds.UID == "$datasource")
}

var grafanaVariable = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)

// checkVariables fails for a $variable that is neither defined nor one of
// Grafana's built-ins.
func checkVariables(t *testing.T, where, expr string, vars map[string]templateVar) {
	t.Helper()
	builtin := map[string]bool{"__rate_interval": true, "__interval": true, "__range": true}
	for _, m := range grafanaVariable.FindAllStringSubmatch(expr, -1) {
		if _, ok := vars[m[1]]; !ok && !builtin[m[1]] {
			t.Errorf("%s: unknown variable $%s in %q", where, m[1], expr)
		}
	}
}

// TestDashboardCoversTheOperatorsView checks that the dashboard has a panel
// for each subject the operators asked for, by the metrics each uses.
func TestDashboardCoversTheOperatorsView(t *testing.T) {
	d, _ := loadDashboard(t)
	var all []string
	byType := map[string][]string{}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			all = append(all, tg.Expr)
			byType[p.Type] = append(byType[p.Type], tg.Expr)
		}
	}
	has := func(exprs []string, metric string) bool {
		for _, e := range exprs {
			for _, s := range analyzeExpr(e).Selectors {
				if s.Metric == metric {
					return true
				}
			}
		}
		return false
	}
	subjects := []struct {
		what, metric, panelType string
	}{
		{"leader present", "vigil_raft_has_leader", ""},
		{"Raft term", "vigil_raft_term", ""},
		{"observers alive by gossip", "vigil_gossip_members_alive", ""},
		{"leader changes", "vigil_raft_leader_changes_total", ""},
		{"current primary per group", "vigil_group_primary", ""},
		{"epoch per group", "vigil_group_epoch", ""},
		{"member verdicts per observer as a state timeline", "vigil_member_verdict", "state-timeline"},
		{"ODOWN periods", "vigil_member_odown", "state-timeline"},
		{"rogue primaries as a state timeline", "vigil_rogue_primary", "state-timeline"},
		{"replication lag in bytes", "vigil_replication_lag_bytes", ""},
		{"replication lag in seconds", "vigil_replication_lag_seconds", ""},
		{"failovers", "vigil_failovers_total", ""},
		{"per-step failover durations", "vigil_failover_step_duration_seconds_bucket", ""},
		{"probe latency", "vigil_probe_duration_seconds_bucket", ""},
		{"probe errors by kind", "vigil_probe_errors_total", ""},
		{"gossip traffic", "vigil_gossip_vote_packets_sent_total", ""},
		{"gossip drops", "vigil_gossip_votes_dropped_total", ""},
		{"Raft commit latency", "vigil_raft_commit_duration_seconds_bucket", ""},
		{"paused groups", "vigil_group_paused", ""},
		{"fence failures", "vigil_fence_failures_total", ""},
		{"candidate eligibility", "vigil_candidate_eligible", ""},
	}
	for _, s := range subjects {
		exprs := all
		if s.panelType != "" {
			exprs = byType[s.panelType]
		}
		if !has(exprs, s.metric) {
			t.Errorf("no %s panel showing %s: %s", s.panelType, s.metric, s.what)
		}
	}
}
