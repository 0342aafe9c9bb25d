package cluster_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vigilha/vigil/cluster"
	"github.com/vigilha/vigil/cluster/clustertest"
	"github.com/vigilha/vigil/cluster/tlsconf"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// adminAs calls the admin API of observer i with the given transport.
func adminAs(t *testing.T, c *clustertest.Cluster, i int, creds credentials.TransportCredentials) vigilv1.AdminClient {
	t.Helper()
	cc, err := grpc.NewClient(c.Nodes[i].Obs.GRPCAddr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return vigilv1.NewAdminClient(cc)
}

func credsOf(t *testing.T, dir, name string) credentials.TransportCredentials {
	t.Helper()
	st, err := tlsconf.Load(tlsconf.Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(st.ClientConfig("", "observer"))
}

func TestMutualTLSAndRoles(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{TLS: true}})
	leader := c.WaitForLeader(waitLong) // Raft itself runs over mutual TLS here
	waitGroupsSynced(t, c)
	follower := (leader + 1) % 3
	pki := c.Set.PKIDir
	before, _ := c.Nodes[leader].Obs.FSM().Snapshot()

	// Another CA's operator, an expired operator of the right CA.
	other := t.TempDir()
	caCert, caKey, err := tlsconf.NewCA("another CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rightCA := readFile(t, filepath.Join(pki, "ca.pem"))
	rightKey := readFile(t, filepath.Join(pki, "ca-key.pem"))
	files := map[string][]byte{"ca.pem": rightCA}
	for name, issue := range map[string]struct {
		ca, key []byte
		id      tlsconf.Identity
	}{
		"mallory": {caCert, caKey, tlsconf.Identity{Name: "mallory", Kind: "operator"}},
		"old":     {rightCA, rightKey, tlsconf.Identity{Name: "old", Kind: "operator", NotAfter: time.Now().Add(-time.Hour)}},
		"agent1":  {rightCA, rightKey, tlsconf.Identity{Name: "agent1", Kind: "agent"}},
	} {
		cert, key, err := tlsconf.Issue(issue.ca, issue.key, issue.id)
		if err != nil {
			t.Fatal(err)
		}
		files[name+".pem"], files[name+"-key.pem"] = cert, key
	}
	if err := tlsconf.WriteFiles(other, files); err != nil {
		t.Fatal(err)
	}
	// Certificates our loader would refuse (expired, foreign CA) are
	// presented raw.
	raw := func(name string) tls.Certificate {
		kp, err := tls.LoadX509KeyPair(filepath.Join(other, name+".pem"), filepath.Join(other, name+"-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	pool := mustPool(t, rightCA)

	refused := map[string]credentials.TransportCredentials{
		"plaintext":           insecure.NewCredentials(),
		"no client cert":      credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}),
		"another CA's cert":   credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{raw("mallory")}}),
		"expired client cert": credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{raw("old")}}),
		"agent cert":          credsOf(t, other, "agent1"),
	}
	for name, creds := range refused {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := adminAs(t, c, follower, creds).PauseGroup(ctx, &vigilv1.PauseGroupRequest{Group: "pg-main", Reason: name})
		cancel()
		if err == nil {
			t.Fatalf("%s: pause accepted", name)
		}
		if code := status.Code(err); code != codes.Unavailable && code != codes.PermissionDenied && code != codes.Unauthenticated {
			t.Fatalf("%s: %v (code %s)", name, err, code)
		}
		t.Logf("%s refused: %v", name, err)
	}

	// A viewer reads but may not change anything.
	bob := adminAs(t, c, follower, credsOf(t, pki, "bob"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := bob.GetGroup(ctx, &vigilv1.GetGroupRequest{Name: "pg-main"}); err != nil {
		t.Fatalf("viewer cannot read: %v", err)
	}
	_, err = bob.Switchover(ctx, &vigilv1.SwitchoverRequest{Group: "pg-main"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "viewer/bob") {
		t.Fatalf("viewer switchover: %v", err)
	}
	after, _ := c.Nodes[leader].Obs.FSM().Snapshot()
	if string(before) != string(after) {
		t.Fatal("refused calls changed the replicated state")
	}

	// An operator's write through a follower is forwarded over the
	// observers' own mutual TLS and recorded with the operator's identity.
	alice := adminAs(t, c, follower, credsOf(t, pki, "alice"))
	if _, err := alice.PauseGroup(ctx, &vigilv1.PauseGroupRequest{Group: "pg-main", Reason: "tls test"}); err != nil {
		t.Fatalf("operator pause: %v", err)
	}
	g, _ := c.Nodes[follower].Obs.FSM().Group("pg-main")
	last := g.GetHistory()[len(g.GetHistory())-1]
	if !g.GetPaused() || last.GetActor() != "operator/alice" {
		t.Fatalf("pause recorded as %v by %q", g.GetPaused(), last.GetActor())
	}
}

// TestRaftRefusesForeignPeers dials an observer's Raft port with
// certificates that must not be accepted.
func TestRaftRefusesForeignPeers(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{ConfigOptions: clustertest.ConfigOptions{TLS: true}})
	c.WaitForLeader(waitLong)
	pki := c.Set.PKIDir
	raftAddr := c.Nodes[0].Cfg.Raft.Advertise
	for _, name := range []string{"alice", "bob"} { // right CA, wrong kind
		st, err := tlsconf.Load(tlsconf.Files{CA: filepath.Join(pki, "ca.pem"), Cert: filepath.Join(pki, name+".pem"), Key: filepath.Join(pki, name+"-key.pem")})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tls.Dial("tcp", raftAddr, st.ClientConfig("", "observer"))
		if err == nil {
			// TLS 1.3: the server's verdict on our certificate arrives
			// with the first read.
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil {
			t.Fatalf("%s's certificate was accepted on the Raft port", name)
		}
	}
	// Plaintext Raft RPCs are not understood either: the cluster stays up.
	c.WaitForLeader(waitLong)
}

// TestAdminRolesFromConfig: admin.roles overrides the certificates' kinds
// (a certificate is demoted or promoted without re-issuing it).
func TestAdminRolesFromConfig(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{
		ConfigOptions: clustertest.ConfigOptions{TLS: true},
		Customize: func(_ int, o *cluster.Options) {
			o.Config.Admin.Roles = map[string]string{"alice": "viewer", "bob": "operator"}
		},
	})
	leader := c.WaitForLeader(waitLong)
	waitGroupsSynced(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alice := adminAs(t, c, leader, credsOf(t, c.Set.PKIDir, "alice"))
	if _, err := alice.PauseGroup(ctx, &vigilv1.PauseGroupRequest{Group: "pg-main"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("alice (operator certificate, viewer by config) pause: %v", err)
	}
	bob := adminAs(t, c, leader, credsOf(t, c.Set.PKIDir, "bob"))
	if _, err := bob.PauseGroup(ctx, &vigilv1.PauseGroupRequest{Group: "pg-main", Reason: "bob promoted"}); err != nil {
		t.Fatalf("bob (viewer certificate, operator by config) pause: %v", err)
	}
}

// TestHTTPOverTLS: with http.tls, /metrics and the role endpoints need a
// certificate of the cluster's CA.
func TestHTTPOverTLS(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, clustertest.Options{
		ConfigOptions: clustertest.ConfigOptions{TLS: true},
		Customize:     func(_ int, o *cluster.Options) { o.Config.HTTP.TLS = true },
	})
	c.WaitForLeader(waitLong)
	pki := c.Set.PKIDir
	url := "https://" + c.Nodes[0].Obs.HTTPAddr() + "/metrics"
	pool := mustPool(t, readFile(t, filepath.Join(pki, "ca.pem")))
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if resp, err := anon.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("/metrics served to a client without a certificate: %s", resp.Status)
	}
	bob, err := tls.LoadX509KeyPair(filepath.Join(pki, "bob.pem"), filepath.Join(pki, "bob-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	viewer := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{bob}}}}
	resp, err := viewer.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics with a viewer certificate: %s", resp.Status)
	}
}
