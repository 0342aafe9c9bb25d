package deploytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vigilha/vigil/cluster/clustertest"
)

// promServer is a real Prometheus started by a test, scraping observers
// with the kit's scrape config and evaluating the kit's alert rules.
type promServer struct {
	url string
	mu  sync.Mutex
	log bytes.Buffer
}

// lockedWriter serialises the process' output into the log buffer.
type lockedWriter struct{ p *promServer }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.log.Write(b)
}

func (p *promServer) logTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.log.String()
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return s
}

// scrapeConfigFor turns the kit's prometheus.yml into a config for the
// test: the vigil-observer job scrapes targets every second, rules are
// evaluated every second, alerts go nowhere.
func scrapeConfigFor(t testing.TB, targets []string) []byte {
	t.Helper()
	data, err := os.ReadFile(kitPath(t, scrapeFile))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("%s: %v", scrapeFile, err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"}
	cfg["rule_files"] = []string{kitPath(t, rulesFile)}
	delete(cfg, "alerting")
	jobs, _ := cfg["scrape_configs"].([]any)
	found := false
	for _, j := range jobs {
		job, _ := j.(map[string]any)
		if job["job_name"] != "vigil-observer" {
			continue
		}
		found = true
		job["scrape_interval"] = "1s"
		job["scrape_timeout"] = "1s"
		job["static_configs"] = []any{map[string]any{"targets": targets}}
	}
	if !found {
		t.Fatalf("%s: no scrape job named vigil-observer (the alert rules select up{job=\"vigil-observer\"})", scrapeFile)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// startPrometheus starts Prometheus scraping targets. It returns nil (and
// says so) when prometheus is not installed, unless VIGIL_REQUIRE_TOOLS=1.
func startPrometheus(t testing.TB, targets []string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv(requireToolsEnv) == "1" {
			t.Fatalf("prometheus is required (%s=1) but not installed: apt-get install -y prometheus", requireToolsEnv)
		}
		t.Logf("prometheus not installed: dashboard queries and alert rules are not evaluated (apt-get install -y prometheus)")
		return nil
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, scrapeConfigFor(t, targets), 0o644); err != nil {
		t.Fatal(err)
	}
	port := clustertest.FreePorts(t, 1)[0]
	p := &promServer{url: "http://127.0.0.1:" + strconv.Itoa(port)}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:"+strconv.Itoa(port), "--log.level=warn")
	cmd.Stdout, cmd.Stderr = lockedWriter{p}, lockedWriter{p}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	clustertest.WaitFor(t, 30*time.Second, "prometheus ready", func() (bool, string) {
		select {
		case <-done:
			t.Fatalf("prometheus exited:\n%s", p.logTail())
		default:
		}
		resp, err := http.Get(p.url + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	return p
}

type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

func (p *promServer) get(path string, params url.Values) (json.RawMessage, error) {
	u := p.url + path
	if params != nil {
		u += "?" + params.Encode()
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r apiResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	return r.Data, nil
}

// query evaluates expr now and returns the number of series (or 1 for a
// scalar or string) and the first value.
func (p *promServer) query(expr string) (int, string, error) {
	data, err := p.get("/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return 0, "", err
	}
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return 0, "", err
	}
	switch d.ResultType {
	case "vector", "matrix":
		var rs []struct {
			Value []any `json:"value"`
		}
		if err := json.Unmarshal(d.Result, &rs); err != nil {
			return 0, "", err
		}
		if len(rs) == 0 {
			return 0, "", nil
		}
		v := ""
		if len(rs[0].Value) == 2 {
			v = fmt.Sprint(rs[0].Value[1])
		}
		return len(rs), v, nil
	default:
		return 1, string(d.Result), nil
	}
}

// grafanaVars replaces the dashboard's variables for a direct query: all
// groups and observers, ranges suited to a 1s scrape interval.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "10s", "$__interval", "5s", "$__range", "1m",
	"${group}", ".*", "$group", ".*", "${observer}", ".*", "$observer", ".*")

// waitSamples waits until Prometheus holds n samples of every observer.
func (p *promServer) waitSamples(t testing.TB, observers, n int) {
	t.Helper()
	expr := fmt.Sprintf(`count(count_over_time(vigil_observer_info[1m]) >= %d)`, n)
	clustertest.WaitFor(t, 60*time.Second, fmt.Sprintf("prometheus to hold %d samples of each of %d observers", n, observers), func() (bool, string) {
		_, v, err := p.query(expr)
		if err != nil {
			return false, err.Error()
		}
		return v == strconv.Itoa(observers), "observers with enough samples: " + v
	})
}

// waitSeries waits until Prometheus has scraped every series name the
// queries select that the live catalog holds.
func (p *promServer) waitSeries(t testing.TB, queries []query, live catalog) {
	t.Helper()
	clustertest.WaitFor(t, 60*time.Second, "prometheus to have scraped every metric the kit uses", func() (bool, string) {
		for _, name := range usedSeries(queries) {
			if live.series(name) == nil {
				continue
			}
			n, _, err := p.query("count(" + name + ")")
			if err != nil || n == 0 {
				return false, fmt.Sprintf("%s: %d series, %v", name, n, err)
			}
		}
		return true, ""
	})
}

// usedSeries returns the distinct series names the queries select.
func usedSeries(queries []query) []string {
	set := map[string]bool{}
	for _, q := range queries {
		for _, s := range analyzeExpr(q.Expr).Selectors {
			set[s.Metric] = true
		}
	}
	return sortedKeys(set)
}

// evaluateKit runs every dashboard query through Prometheus (no query may
// fail; with requireData every panel must show something) and checks that
// every alert rule has been evaluated without error.
func (p *promServer) evaluateKit(t *testing.T, queries []query, requireData func(q query) bool) {
	t.Helper()
	panelData := map[int]bool{}
	panelWhere := map[int]string{}
	for _, q := range queries {
		if strings.HasPrefix(q.Where, rulesFile) {
			continue // rules are checked through the rules API below
		}
		expr := q.Expr
		if q.Label != "" {
			// label_values(metric, label) lists the label's values.
			expr = fmt.Sprintf("count by (%s) (%s)", q.Label, q.Expr)
		}
		expr = grafanaVars.Replace(expr)
		if strings.Contains(expr, "$") {
			t.Errorf("%s: unknown variable left in %q", q.Where, expr)
			continue
		}
		n, _, err := p.query(expr)
		if err != nil {
			t.Errorf("%s: Prometheus rejects the query: %v\n  expr: %s", q.Where, err, expr)
			continue
		}
		if q.Panel != 0 {
			panelData[q.Panel] = panelData[q.Panel] || n > 0
			panelWhere[q.Panel] = q.Where
		} else if q.Label != "" && n == 0 {
			t.Errorf("%s: no values (%s)", q.Where, expr)
		}
		if n == 0 && q.Panel == 0 && q.Label == "" {
			t.Logf("%s: no data now (fine for an annotation): %s", q.Where, expr)
		}
	}
	for _, q := range queries {
		if q.Panel != 0 && !panelData[q.Panel] && requireData(q) {
			t.Errorf("%s: the panel shows no data although every metric it uses is exported", panelWhere[q.Panel])
			panelData[q.Panel] = true // report each panel once
		}
	}

	// Alert rules: every rule evaluated at least once, without error.
	type ruleState struct {
		Name           string `json:"name"`
		Health         string `json:"health"`
		LastError      string `json:"lastError"`
		LastEvaluation string `json:"lastEvaluation"`
		State          string `json:"state"`
	}
	var rules []ruleState
	clustertest.WaitFor(t, 30*time.Second, "every alert rule evaluated", func() (bool, string) {
		data, err := p.get("/api/v1/rules", nil)
		if err != nil {
			return false, err.Error()
		}
		var d struct {
			Groups []struct {
				Rules []ruleState `json:"rules"`
			} `json:"groups"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			return false, err.Error()
		}
		rules = rules[:0]
		for _, g := range d.Groups {
			rules = append(rules, g.Rules...)
		}
		for _, r := range rules {
			if r.Health == "unknown" || strings.HasPrefix(r.LastEvaluation, "0001-") {
				return false, r.Name + " not evaluated yet"
			}
		}
		return len(rules) > 0, fmt.Sprintf("%d rules loaded", len(rules))
	})
	if want := len(loadRules(t)); len(rules) != want {
		t.Errorf("Prometheus loaded %d rules, %s has %d", len(rules), rulesFile, want)
	}
	var firing []string
	for _, r := range rules {
		if r.Health != "ok" || r.LastError != "" {
			t.Errorf("alert %s: health %s: %s", r.Name, r.Health, r.LastError)
		}
		if r.State != "inactive" {
			firing = append(firing, r.Name+" ("+r.State+")")
		}
	}
	t.Logf("Prometheus evaluated %d queries and %d alert rules; pending or firing now: %v", len(queries), len(rules), firing)
}
