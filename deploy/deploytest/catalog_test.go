package deploytest

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// family is one metric family that a query may use.
type family struct {
	Name   string
	Type   string // counter, gauge, histogram, summary, untyped
	Labels map[string]bool
	// Origin says where it was found: "scrape", or the Go source position
	// of a labelled vector without children yet.
	Origin string
}

// catalog holds metric families by name.
type catalog map[string]*family

// series returns the family a query selects with name, with the labels
// the series has: histograms are selected as NAME_bucket (with "le"),
// NAME_sum and NAME_count, never by their bare name.
func (c catalog) series(name string) *family {
	if f := c[name]; f != nil {
		switch f.Type {
		case "histogram":
			return nil
		case "summary":
			return withLabel(f, "quantile")
		}
		return f
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		f := c[base]
		switch {
		case f == nil:
		case f.Type == "histogram" && suffix == "_bucket":
			return withLabel(f, "le")
		case (f.Type == "histogram" || f.Type == "summary") && suffix != "_bucket":
			return f
		}
	}
	return nil
}

// hasFamilyFor reports whether a family that name could belong to exists
// (even if name is the wrong way to select it).
func (c catalog) hasFamilyFor(name string) bool {
	if c[name] != nil {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && c[base] != nil {
			return true
		}
	}
	return false
}

func withLabel(f *family, l string) *family {
	g := *f
	g.Labels = map[string]bool{l: true}
	for k := range f.Labels {
		g.Labels[k] = true
	}
	return &g
}

// scrape fetches and parses /metrics of one observer.
func scrape(addr string) (map[string]*dto.MetricFamily, []byte, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return nil, nil, fmt.Errorf("GET /metrics: content type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("parse /metrics: %w", err)
	}
	return mfs, body, nil
}

// addScrape adds the vigil_* families of a scrape to the catalog, merging
// label names with what other observers exported.
func (c catalog) addScrape(mfs map[string]*dto.MetricFamily) {
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "vigil_") {
			continue
		}
		f := c[name]
		if f == nil {
			f = &family{Name: name, Type: strings.ToLower(mf.GetType().String()), Labels: map[string]bool{}, Origin: "scrape"}
			c[name] = f
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				f.Labels[lp.GetName()] = true
			}
		}
	}
}

// sourceVectors parses the module's Go source (tests excluded) for metric
// vectors, prometheus.New{Counter,Gauge,Histogram,Summary}Vec(Opts{Name:
// "vigil_..."}, labels): the families that are registered but absent from
// a scrape until their first child exists. Nothing else is taken from the
// source: plain metrics and collectors must show up in the scrape.
func sourceVectors(t testing.TB) catalog {
	t.Helper()
	root := repoRoot(t)
	kinds := map[string]string{"NewCounterVec": "counter", "NewGaugeVec": "gauge", "NewHistogramVec": "histogram", "NewSummaryVec": "summary"}
	out := catalog{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "testdata", "vendor", "node_modules":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 2 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || kinds[sel.Sel.Name] == "" {
				return true
			}
			name := optsName(call.Args[0])
			if !strings.HasPrefix(name, "vigil_") {
				return true
			}
			labels, ok := stringList(file, call.Args[1])
			if !ok {
				t.Errorf("%s: labels of %s are not a []string literal the test can read", fset.Position(call.Pos()), name)
				return true
			}
			rel, _ := filepath.Rel(root, fset.Position(call.Pos()).Filename)
			f := &family{Name: name, Type: kinds[sel.Sel.Name], Labels: map[string]bool{},
				Origin: fmt.Sprintf("%s:%d", filepath.ToSlash(rel), fset.Position(call.Pos()).Line)}
			for _, l := range labels {
				f.Labels[l] = true
			}
			out[name] = f
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// optsName returns the Name field of a prometheus.XxxOpts literal.
func optsName(e ast.Expr) string {
	if u, ok := e.(*ast.UnaryExpr); ok {
		e = u.X
	}
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return ""
	}
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Name" {
			if s, ok := kv.Value.(*ast.BasicLit); ok && s.Kind == token.STRING {
				v, _ := strconv.Unquote(s.Value)
				return v
			}
		}
	}
	return ""
}

// stringList reads a []string{"a", "b"} literal, or an identifier assigned
// one in the same file.
func stringList(file *ast.File, e ast.Expr) ([]string, bool) {
	if id, ok := e.(*ast.Ident); ok {
		var found ast.Expr
		ast.Inspect(file, func(n ast.Node) bool {
			switch s := n.(type) {
			case *ast.AssignStmt:
				for i, l := range s.Lhs {
					if li, ok := l.(*ast.Ident); ok && li.Name == id.Name && i < len(s.Rhs) {
						found = s.Rhs[i]
					}
				}
			case *ast.ValueSpec:
				for i, n := range s.Names {
					if n.Name == id.Name && i < len(s.Values) {
						found = s.Values[i]
					}
				}
			}
			return found == nil
		})
		if found == nil {
			return nil, false
		}
		e = found
	}
	lit, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil, false
	}
	var out []string
	for _, el := range lit.Elts {
		s, ok := el.(*ast.BasicLit)
		if !ok || s.Kind != token.STRING {
			return nil, false
		}
		v, _ := strconv.Unquote(s.Value)
		out = append(out, v)
	}
	return out, true
}

// checkQueries checks every query against the live catalog; a family
// missing there is accepted from src (labelled vectors without children)
// when src is not nil. It returns the families accepted from src, each
// with the queries that use it.
func checkQueries(t testing.TB, queries []query, live, src catalog) map[string][]string {
	t.Helper()
	fromSource := map[string][]string{}
	for _, q := range queries {
		info := analyzeExpr(q.Expr)
		if q.Label != "" && len(info.Selectors) != 1 {
			t.Errorf("%s: want exactly one vigil_* metric in %q", q.Where, q.Expr)
			continue
		}
		known := map[string]bool{"instance": true, "job": true}
		for _, s := range info.Selectors {
			f := live.series(s.Metric)
			if f == nil && src != nil && !live.hasFamilyFor(s.Metric) {
				if f = src.series(s.Metric); f != nil {
					fromSource[f.Name] = append(fromSource[f.Name], q.Where)
				}
			}
			if f == nil {
				t.Errorf("%s: metric %s is not exported (not in the live scrape%s)\n  expr: %s",
					q.Where, s.Metric, map[bool]string{true: ", nor a labelled vector in the source", false: ""}[src != nil], q.Expr)
				continue
			}
			for _, l := range s.Labels {
				if !f.Labels[l] && !known[l] && l != "__name__" {
					t.Errorf("%s: %s has no label %q (it has %v)\n  expr: %s", q.Where, s.Metric, l, sortedKeys(f.Labels), q.Expr)
				}
			}
			for l := range f.Labels {
				known[l] = true
			}
		}
		if len(info.Selectors) == 0 {
			continue // only Prometheus' own series (up): nothing of vigil's to check
		}
		for _, l := range info.Grouping {
			if !known[l] {
				t.Errorf("%s: grouping label %q is on none of the metrics of the query (%v)\n  expr: %s", q.Where, l, sortedKeys(known), q.Expr)
			}
		}
		if q.Label != "" && !known[q.Label] {
			t.Errorf("%s: label_values: %s has no label %q", q.Where, info.Selectors[0].Metric, q.Label)
		}
		if q.Legend != "__auto" {
			for _, l := range legendLabels(q.Legend) {
				if !known[l] {
					t.Errorf("%s: legend %q uses label %q, which is on none of the metrics of the query", q.Where, q.Legend, l)
				}
			}
		}
	}
	return fromSource
}

// usedFamilies returns the family names the queries select, sorted.
func usedFamilies(queries []query, cats ...catalog) []string {
	set := map[string]bool{}
	for _, q := range queries {
		for _, s := range analyzeExpr(q.Expr).Selectors {
			name := s.Metric
			for _, c := range cats {
				if f := c.series(s.Metric); f != nil {
					name = f.Name
					break
				}
			}
			set[name] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func TestSourceVectorsFindsTheControllerMetrics(t *testing.T) {
	// The fallback must see the vectors that only appear after a failover,
	// with their labels; otherwise the live test would report them missing.
	src := sourceVectors(t)
	f := src["vigil_failovers_total"]
	if f == nil || f.Type != "counter" || !f.Labels["group"] || !f.Labels["kind"] || !f.Labels["result"] {
		t.Fatalf("vigil_failovers_total from source = %+v", f)
	}
	if h := src.series("vigil_failover_step_duration_seconds_bucket"); h == nil || !h.Labels["step"] || !h.Labels["le"] {
		t.Fatalf("vigil_failover_step_duration_seconds_bucket from source = %+v", h)
	}
	// A label list held in a variable (health's "gm") is resolved.
	if f := src["vigil_replication_lag_bytes"]; f == nil || !f.Labels["member"] {
		t.Fatalf("vigil_replication_lag_bytes from source = %+v", f)
	}
	// Plain metrics and collectors are never taken from the source.
	for _, name := range []string{"vigil_raft_term", "vigil_gossip_vote_packets_sent_total", "vigil_group_epoch"} {
		if src[name] != nil {
			t.Errorf("%s taken from source; only labelled vectors may be", name)
		}
	}
}
