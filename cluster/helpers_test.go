package cluster_test

import (
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

func unmarshal(b []byte, st *vigilv1.State) error { return proto.Unmarshal(b, st) }

func equalGroups(a, b *vigilv1.State) bool {
	return proto.Equal(&vigilv1.State{Groups: a.GetGroups()}, &vigilv1.State{Groups: b.GetGroups()})
}
