package cluster_test

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/vigilha/vigil/cluster/clustertest"
)

// TestGossipRefusesForeignKeyAndLabel: a node with another key, or with the
// right key but another cluster label, cannot join the observers' gossip.
func TestGossipRefusesForeignKeyAndLabel(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{})
	c.WaitForLeader(waitLong)
	clustertest.Eventually(t, waitLong, "gossip to see all three", func() bool { return c.Nodes[0].Obs.Gossip().AliveMembers() == 3 })
	rightKey, err := c.Nodes[0].Cfg.GossipKey()
	if err != nil {
		t.Fatal(err)
	}
	otherKey := make([]byte, 32)
	if _, err := rand.Read(otherKey); err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]struct {
		key   []byte
		label string
	}{
		"another key":   {otherKey, c.Set.Label},
		"another label": {rightKey, "another-cluster"},
	} {
		port := clustertest.FreePorts(t, 1)[0]
		mc := memberlist.DefaultLANConfig()
		mc.Name = "intruder"
		mc.BindAddr, mc.BindPort = "127.0.0.1", port
		mc.AdvertiseAddr, mc.AdvertisePort = "127.0.0.1", port
		mc.SecretKey, mc.Label = k.key, k.label
		mc.Logger = log.New(io.Discard, "", 0)
		ml, err := memberlist.Create(mc)
		if err != nil {
			t.Fatal(err)
		}
		n, err := ml.Join([]string{c.Nodes[0].Cfg.Gossip.Advertise})
		_ = ml.Shutdown()
		if err == nil || n != 0 {
			t.Fatalf("%s: joined %d observers (err %v)", name, n, err)
		}
		for _, node := range c.Nodes {
			if got := node.Obs.Gossip().MemberStates()["intruder"]; got != "" {
				t.Fatalf("%s: %s lists the intruder as %s", name, node.ID, got)
			}
		}
		t.Logf("%s: refused: %v", name, fmt.Sprint(err))
	}
}

// TestGossipKeyRotation rotates the gossip key the documented way, one
// observer at a time: add the new key second, then make it first, then
// drop the old one. Gossip never splits, and at the end the old key alone
// no longer gets in.
func TestGossipKeyRotation(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{})
	c.WaitForLeader(waitLong)
	allAlive := func(what string) {
		t.Helper()
		clustertest.WaitFor(t, waitLong, what, func() (bool, string) {
			for _, n := range c.Nodes {
				if got := n.Obs.Gossip().AliveMembers(); got != 3 {
					return false, fmt.Sprintf("%s sees %d alive", n.ID, got)
				}
			}
			return true, ""
		})
	}
	allAlive("gossip among the three with the first key")
	oldKey := c.Set.Key
	newKeyBytes := make([]byte, 32)
	if _, err := rand.Read(newKeyBytes); err != nil {
		t.Fatal(err)
	}
	newKey := base64.StdEncoding.EncodeToString(newKeyBytes)
	dir := t.TempDir()
	for step, content := range []string{oldKey + "\n" + newKey, newKey + "\n" + oldKey, newKey} {
		path := filepath.Join(dir, fmt.Sprintf("gossip-%d.key", step))
		if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for i, n := range c.Nodes {
			c.StopNode(i)
			n.Cfg.Gossip.Key, n.Cfg.Gossip.KeyFile = "", path
			c.StartNode(i)
			allAlive(fmt.Sprintf("gossip whole after step %d on %s", step+1, n.ID))
		}
	}
	c.WaitForLeader(waitLong)

	old, _ := base64.StdEncoding.DecodeString(oldKey)
	port := clustertest.FreePorts(t, 1)[0]
	mc := memberlist.DefaultLANConfig()
	mc.Name = "stale"
	mc.BindAddr, mc.BindPort = "127.0.0.1", port
	mc.AdvertiseAddr, mc.AdvertisePort = "127.0.0.1", port
	mc.SecretKey, mc.Label = old, c.Set.Label
	mc.Logger = log.New(io.Discard, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	if n, err := ml.Join([]string{c.Nodes[0].Cfg.Gossip.Advertise}); err == nil || n != 0 {
		t.Fatalf("a node with the retired key joined %d observers", n)
	}
}
