package deploytest

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// unit is a parsed systemd unit file: section -> key -> values (a key may
// repeat).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, rel string) unit {
	t.Helper()
	f, err := os.Open(kitPath(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot parse %q", rel, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// last returns the effective (last) value of a key.
func (u unit) last(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return "<unset>"
	}
	return v[len(v)-1]
}

func expectUnit(t *testing.T, name string, u unit, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := u.last("Service", k); got != v {
			t.Errorf("%s: %s=%s, want %s", name, k, got, v)
		}
	}
	if u.last("Install", "WantedBy") != "multi-user.target" {
		t.Errorf("%s: WantedBy=%s, want multi-user.target", name, u.last("Install", "WantedBy"))
	}
}

func TestSystemdUnits(t *testing.T) {
	hardening := map[string]string{
		"User": "vigil", "Group": "vigil", "Restart": "on-failure",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
		"PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
		"ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
	}

	obs := parseUnit(t, "deploy/systemd/vigil-observer.service")
	want := map[string]string{
		"ExecStart":      "/usr/local/bin/vigil observer --config /etc/vigil/observer.yaml",
		"StateDirectory": "vigil", "ReadWritePaths": "/var/lib/vigil",
		// No capabilities at all.
		"CapabilityBoundingSet": "", "AmbientCapabilities": "",
	}
	for k, v := range hardening {
		want[k] = v
	}
	expectUnit(t, "vigil-observer.service", obs, want)

	node := parseUnit(t, "deploy/systemd/vigil-node.service")
	want = map[string]string{"ExecStart": "/usr/local/bin/vigil node --config /etc/vigil/node.yaml"}
	for k, v := range hardening {
		want[k] = v
	}
	expectUnit(t, "vigil-node.service", node, want)
	// The agent needs netlink (VIP) and raw sockets (gratuitous ARP), nothing else.
	for _, k := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
		caps := strings.Fields(node.last("Service", k))
		slices.Sort(caps)
		if !slices.Equal(caps, []string{"CAP_NET_ADMIN", "CAP_NET_RAW"}) {
			t.Errorf("vigil-node.service: %s=%v, want exactly CAP_NET_ADMIN CAP_NET_RAW", k, caps)
		}
	}

	// The sysusers entry creates the user both units run as.
	data, err := os.ReadFile(kitPath(t, "deploy/systemd/vigil.sysusers.conf"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "u" && f[1] == "vigil" {
			found = true
		}
	}
	if !found {
		t.Error("vigil.sysusers.conf does not create the user vigil")
	}
}

// TestSystemdAnalyze has systemd check the units (syntax, every directive
// known) and rate their sandboxing, when systemd-analyze is installed.
func TestSystemdAnalyze(t *testing.T) {
	bin, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install -y systemd); the units are still checked by TestSystemdUnits")
	}
	dir := t.TempDir()
	// verify wants the programs to exist: point ExecStart at a stand-in.
	fake := filepath.Join(dir, "vigil")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Highest acceptable exposure, in tenths (systemd prints 2.0 for 20).
	exposure := map[string]string{"vigil-observer.service": "20", "vigil-node.service": "25"}
	for _, name := range sortedKeys(exposure) {
		data, err := os.ReadFile(kitPath(t, "deploy/systemd/"+name))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, bytes.ReplaceAll(data, []byte("/usr/local/bin/vigil"), []byte(fake)), 0o644); err != nil {
			t.Fatal(err)
		}
		// verify exits 0 on unknown directives but reports them: any
		// output is a finding.
		out, err := exec.Command(bin, "verify", path).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
		out, err = exec.Command(bin, "security", "--offline=true", "--threshold="+exposure[name], path).CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze security %s: exposure above %s/10: %v\n%s", name, exposure[name], err, out)
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Logf("%s: %s", name, lines[len(lines)-1])
	}
}
