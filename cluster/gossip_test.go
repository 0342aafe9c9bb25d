package cluster_test

import (
	"crypto/rand"
	"fmt"
	"io"
	"log"
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
