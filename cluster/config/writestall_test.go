package config

import (
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestWriteStallAfterDefaultsOff(t *testing.T) {
	c, err := Parse(readValid(t))
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range c.Groups {
		if g.WriteStallAfter != 0 {
			t.Errorf("groups[%d].write_stall_after = %s, want 0 (disabled) by default", i, g.WriteStallAfter)
		}
	}
	// Disabled, it is left out of a marshalled config.
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "write_stall_after") {
		t.Errorf("marshalled config mentions write_stall_after although it is off:\n%s", out)
	}
}

func TestWriteStallAfterValid(t *testing.T) {
	// The smallest value above the interval (500ms) and the largest.
	for _, v := range []string{"501ms", "3s", "1h"} {
		c, err := Parse(mutate(t, set("groups[0].write_stall_after", v)))
		if err != nil {
			t.Fatalf("write_stall_after %s: %v", v, err)
		}
		want, _ := time.ParseDuration(v)
		if got := c.Groups[0].WriteStallAfter.D(); got != want {
			t.Fatalf("write_stall_after %s parsed as %s", v, got)
		}
	}
}

func TestWriteStallAfterInvalid(t *testing.T) {
	const field = "groups[0].write_stall_after"
	tests := []struct {
		name string
		muts []mutation
		// field is the group's field unless set.
		field string
		want  []string
	}{
		{"negative", []mutation{set(field, "-1s")}, "", []string{field + ": -1s: must be >= 0"}},
		{"equal to the interval", []mutation{set(field, "500ms")}, "", []string{field + ": 500ms: must be > probe.interval (500ms)"}},
		{"below the interval", []mutation{set(field, "100ms")}, "", []string{"100ms", "must be > probe.interval (500ms)"}},
		// The timeout is itself invalid here (above the interval); the
		// stall bound still names it.
		{"below the timeout", []mutation{set("groups[0].probe.timeout", "2s"), set(field, "1s")}, "",
			[]string{field + ": 1s: must be >= probe.timeout (2s)"}},
		{"above the maximum", []mutation{set(field, "2h")}, "", []string{field + ": 2h0m0s: must be at most 1h0m0s"}},
		{"generic group", []mutation{set("groups[1].write_stall_after", "5s")}, "groups[1].write_stall_after",
			[]string{"5s", "only allowed for kind postgres with probe.type postgres", "kind generic, probe.type http"}},
		{"postgres group with a tcp probe", []mutation{set("groups[0].probe.type", "tcp"), set(field, "5s")}, "",
			[]string{"5s", "probe.type tcp"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.field
			if f == "" {
				f = field
			}
			_, err := Parse(mutate(t, tc.muts...))
			fe := fieldError(t, err, f)
			for _, w := range tc.want {
				if !strings.Contains(fe.Error(), w) {
					t.Errorf("error %q does not contain %q", fe, w)
				}
			}
		})
	}
}
