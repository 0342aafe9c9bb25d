package cluster_test

import (
	"crypto/x509"
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func unmarshal(b []byte, st *vigilv1.State) error { return proto.Unmarshal(b, st) }

func equalGroups(a, b *vigilv1.State) bool {
	return proto.Equal(&vigilv1.State{Groups: a.GetGroups()}, &vigilv1.State{Groups: b.GetGroups()})
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustPool(t testing.TB, pemCA []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemCA) {
		t.Fatal("bad CA PEM")
	}
	return p
}
