package config

import (
	"bytes"
	"os"
	"reflect"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzParse checks that Parse never panics, that whatever it accepts also
// passes Validate, and that an accepted config survives a marshal/parse
// round trip unchanged.
func FuzzParse(f *testing.F) {
	valid, err := os.ReadFile(validFile)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(bytes.Replace(valid, []byte("node_id: obs1"), []byte("node_id: obs9"), 1))
	f.Add(bytes.Replace(valid, []byte("interval: 500ms"), []byte("interval: 5"), 1))
	f.Add(bytes.Replace(valid, []byte("priority: 50"), []byte("priority: 1001"), 1))
	f.Add(bytes.Replace(valid, []byte("raft:\n"), []byte("raft:\n  heartbeat_timout: 1s\n"), 1))
	f.Add(bytes.Replace(valid, []byte("    probe:\n      interval: 500ms\n"), []byte("    probe: &p\n      interval: 500ms\n"), 1))
	f.Add([]byte("node_id: [\n"))
	f.Add([]byte("groups: &g [*g]\n"))
	f.Add([]byte("raft:\n  <<: {bind: 1.2.3.4:5}\n"))
	f.Add([]byte(""))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if c != nil {
				t.Fatal("Parse returned a config along with an error")
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate rejects: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of marshalled config: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("round trip changed the config:\n%s", out)
		}
	})
}
