package config

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFailoverDefaults(t *testing.T) {
	c, err := Parse(readValid(t))
	if err != nil {
		t.Fatal(err)
	}
	f := c.Groups[0].Failover
	if f.Fence != FenceStrict || f.PromoteTimeout.D() != 30*time.Second || f.StepTimeout.D() != 30*time.Second ||
		f.Postgres == nil || f.Postgres.User != "postgres" || f.Postgres.ReplicationUser != "postgres" || f.VetoBackoff.D() != 30*time.Second {
		t.Fatalf("failover defaults: %+v (postgres %+v)", f, f.Postgres)
	}
}

func TestFailoverValidation(t *testing.T) {
	cases := []struct {
		name  string
		mut   mutation
		field string
		value string
	}{
		{"bad fence policy", set("groups[0].failover.fence", "yolo"), "groups[0].failover.fence", "yolo"},
		{"hook not found", set("groups[0].failover.hooks.pre_failover", map[string]any{"command": []any{"no-such-hook-xyz"}}), "groups[0].failover.hooks.pre_failover.command", "no-such-hook-xyz"},
		{"hook without command", set("groups[0].failover.hooks.fence", map[string]any{"timeout": "1s"}), "groups[0].failover.hooks.fence.command", ""},
		{"bad datacenter", set("groups[0].failover.allowed_datacenters", []any{"a b"}), "groups[0].failover.allowed_datacenters[0]", "a b"},
		{"bad sslmode", set("groups[0].failover.postgres", map[string]any{"sslmode": "maybe"}), "groups[0].failover.postgres.sslmode", "maybe"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(mutate(t, c.mut))
			fe := fieldError(t, err, c.field)
			if c.value != "" && !strings.Contains(fe.Error(), c.value) {
				t.Fatalf("error %q does not show the value %q", fe.Error(), c.value)
			}
		})
	}
}

func TestVIPNeedsAgentsAndShortLease(t *testing.T) {
	_, err := Parse(mutate(t, set("groups[0].failover.vip", true), set("groups[0].failover.lease_timeout", "5s")))
	fieldError(t, err, "groups[0].members[0].agent")
	fe := fieldError(t, err, "groups[0].failover.lease_timeout")
	if !strings.Contains(fe.Error(), "down_after") {
		t.Fatalf("lease_timeout error %q should explain the down_after bound", fe)
	}
	_, err = Parse(mutate(t, set("groups[0].failover.haproxy", map[string]any{"socket": "/run/haproxy.sock"})))
	fieldError(t, err, "groups[0].failover.haproxy.backend")
	_, err = Parse(mutate(t, set("groups[0].members[0].agent", "nohost")))
	fieldError(t, err, "groups[0].members[0].agent")
}

func TestGossipKeyFileWithSeveralKeys(t *testing.T) {
	dir := t.TempDir()
	k1, _ := GenerateGossipKey()
	k2, _ := GenerateGossipKey()
	path := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(path, []byte("# rotating: new key second, then first\n"+k2+"\n\n"+k1+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Parse(mutate(t, del("gossip.key"), set("gossip.key_file", path)))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := c.GossipKeys()
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys = %d, %v", len(keys), err)
	}
	if first, _ := c.GossipKey(); base64.StdEncoding.EncodeToString(first) != k2 {
		t.Fatal("the first key of the file is not the primary")
	}
	if err := os.WriteFile(path, []byte(k1+"\nnot-base64!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Parse(mutate(t, del("gossip.key"), set("gossip.key_file", path)))
	fe := fieldError(t, err, "gossip.key_file")
	if !strings.Contains(fe.Error(), "line 2") || strings.Contains(fe.Error(), k1) {
		t.Fatalf("error %q should name line 2 and never show a key", fe)
	}
}
