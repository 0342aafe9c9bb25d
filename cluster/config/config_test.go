package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestLoadValid(t *testing.T) {
	c, err := Load(validFile)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	checks := []struct {
		name      string
		got, want any
	}{
		// Explicit values are kept.
		{"log.level", c.Log.Level, "debug"},
		{"raft.election_timeout", c.Raft.ElectionTimeout.D(), time.Second},
		{"grpc.listen", c.GRPC.Listen, "0.0.0.0:7301"},
		// Static defaults.
		{"raft.heartbeat_timeout", c.Raft.HeartbeatTimeout.D(), 500 * time.Millisecond},
		{"raft.leader_lease_timeout", c.Raft.LeaderLeaseTimeout.D(), 250 * time.Millisecond},
		{"raft.commit_timeout", c.Raft.CommitTimeout.D(), 50 * time.Millisecond},
		{"raft.snapshot_interval", c.Raft.SnapshotInterval.D(), 30 * time.Second},
		{"raft.snapshot_threshold", c.Raft.SnapshotThreshold, uint64(1024)},
		{"raft.apply_timeout", c.Raft.ApplyTimeout.D(), 5 * time.Second},
		{"gossip.label", c.Gossip.Label, "vigil"},
		{"gossip.probe_interval", c.Gossip.ProbeInterval.D(), 500 * time.Millisecond},
		// Advertise addresses default to the bind addresses.
		{"raft.advertise", c.Raft.Advertise, "127.0.0.1:7101"},
		{"gossip.advertise", c.Gossip.Advertise, "127.0.0.1:7201"},

		// Group defaults, postgres kind.
		{"groups[0].kind", c.Groups[0].Kind, KindPostgres},
		{"groups[0].down_after", c.Groups[0].DownAfter.D(), 2 * time.Second},
		{"groups[0].max_lag", c.Groups[0].MaxLag.Int64(), int64(16 << 20)},
		{"groups[0].cooldown", c.Groups[0].Cooldown.D(), 5 * time.Minute},
		{"groups[0].probe.type", c.Groups[0].Probe.Type, ProbePostgres},
		{"groups[0].probe.interval", c.Groups[0].Probe.Interval.D(), 500 * time.Millisecond},
		{"groups[0].probe.timeout", c.Groups[0].Probe.Timeout.D(), 400 * time.Millisecond},
		// 3 * 500ms + 400ms
		{"groups[0].stale_after", c.Groups[0].StaleAfter.D(), 1900 * time.Millisecond},
		{"groups[0].probe.postgres", *c.Groups[0].Probe.Postgres, PostgresProbe{User: "postgres", Database: "postgres", SSLMode: "disable"}},
		{"groups[0].probe.http", c.Groups[0].Probe.HTTP, (*HTTPProbe)(nil)},
		{"groups[0].members[0].priority", c.Groups[0].Members[0].Priority, 100},
		{"groups[0].members[1].priority", c.Groups[0].Members[1].Priority, 50},
		// An explicit 0 must survive defaulting: it means "never promote".
		{"groups[0].members[2].priority", c.Groups[0].Members[2].Priority, 0},

		// Group defaults, generic kind with http probe.
		{"groups[1].max_lag", c.Groups[1].MaxLag.Int64(), int64(1_000_000)},
		{"groups[1].cooldown", c.Groups[1].Cooldown.D(), time.Duration(0)},
		{"groups[1].probe.interval", c.Groups[1].Probe.Interval.D(), time.Second},
		{"groups[1].probe.timeout", c.Groups[1].Probe.Timeout.D(), 800 * time.Millisecond},
		{"groups[1].probe.http", *c.Groups[1].Probe.HTTP, HTTPProbe{Scheme: "http", Port: 8008, Path: "/alive", ExpectStatus: 200}},
		{"groups[1].probe.postgres", c.Groups[1].Probe.Postgres, (*PostgresProbe)(nil)},

		// Accessors.
		{"Self", c.Self(), Observer{ID: "obs1", Raft: "127.0.0.1:7101", Gossip: "127.0.0.1:7201", GRPC: "127.0.0.1:7301"}},
		{"QuorumSize", c.QuorumSize(), 2},
	}
	for _, tc := range checks {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s = %#v, want %#v", tc.name, tc.got, tc.want)
		}
	}

	key, err := c.GossipKey()
	if err != nil {
		t.Fatalf("GossipKey: %v", err)
	}
	if len(key) != 32 || key[0] != 0 || key[31] != 31 {
		t.Errorf("GossipKey = %x, want 000102..1f", key)
	}

	if g, ok := c.Group("cache"); !ok || g.Kind != KindGeneric {
		t.Errorf("Group(cache) = %+v, %v", g, ok)
	}
	if _, ok := c.Group("nope"); ok {
		t.Error("Group(nope) found")
	}
	if o, ok := c.ObserverByID("obs3"); !ok || o.GRPC != "localhost:7303" {
		t.Errorf("ObserverByID(obs3) = %+v, %v", o, ok)
	}
	if _, ok := c.ObserverByID("obs9"); ok {
		t.Error("ObserverByID(obs9) found")
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate after Load: %v", err)
	}
}

func TestParseMatchesLoad(t *testing.T) {
	loaded, err := Load(validFile)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse(readValid(t))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(loaded, parsed) {
		t.Errorf("Parse and Load differ:\n%+v\n%+v", parsed, loaded)
	}
}

// A marshalled config must parse back to the same config, so tools can
// print the effective configuration.
func TestMarshalRoundTrip(t *testing.T) {
	c, err := Parse(readValid(t))
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(out)
	if err != nil {
		t.Fatalf("re-parse: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(c, again) {
		t.Errorf("round trip changed the config:\n%s", out)
	}
}

func TestQuorumSize(t *testing.T) {
	tests := []struct {
		name string
		muts []mutation
		want int
	}{
		{"default majority of 3", nil, 2},
		{"explicit 3 of 3", []mutation{set("quorum", 3)}, 3},
		{"majority of 5", []mutation{addObserver(4), addObserver(5)}, 3},
		{"explicit 4 of 5", []mutation{addObserver(4), addObserver(5), set("quorum", 4)}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(mutate(t, tc.muts...))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.QuorumSize(); got != tc.want {
				t.Errorf("QuorumSize() = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestKeyFile(t *testing.T) {
	writeConfig := func(t *testing.T, keyFileContent string) string {
		t.Helper()
		dir := t.TempDir()
		if keyFileContent != "" {
			if err := os.WriteFile(filepath.Join(dir, "gossip.key"), []byte(keyFileContent), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		// A relative key_file is resolved against the config's directory.
		cfg := mutate(t, del("gossip.key"), set("gossip.key_file", "gossip.key"))
		path := filepath.Join(dir, "observer.yaml")
		if err := os.WriteFile(path, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	t.Run("valid", func(t *testing.T) {
		path := writeConfig(t, testKey+"\n")
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(filepath.Dir(path), "gossip.key"); c.Gossip.KeyFile != want {
			t.Errorf("KeyFile = %q, want %q", c.Gossip.KeyFile, want)
		}
		key, err := c.GossipKey()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := base64.StdEncoding.DecodeString(testKey)
		if !bytes.Equal(key, want) {
			t.Errorf("GossipKey = %x, want %x", key, want)
		}
		// The key is read once at load time.
		if err := os.Remove(c.Gossip.KeyFile); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GossipKey(); err != nil {
			t.Errorf("GossipKey after the file was removed: %v", err)
		}
	})

	badKey := base64.StdEncoding.EncodeToString([]byte("0123456789"))
	tests := []struct {
		name, content, want string
	}{
		{"missing file", "", "cannot read"},
		{"short key", badKey, "decoded length 10 bytes: must be 16, 24 or 32"},
		{"not base64", "%%%not base64%%%", "not valid base64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.content)
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if !strings.HasPrefix(err.Error(), path+": ") {
				t.Errorf("error does not start with the file path: %v", err)
			}
			fe := fieldError(t, err, "gossip.key_file")
			if !strings.Contains(fe.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", fe, tc.want)
			}
			if tc.content != "" && strings.Contains(err.Error(), tc.content) {
				t.Errorf("error leaks the key: %v", err)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v, want an error naming the file", err)
	}

	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, mutate(t, del("node_id"), del("data_dir")), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil {
		t.Fatal("Load succeeded")
	}
	want := path + ": 2 problems:\n  node_id: required\n  data_dir: required"
	if err.Error() != want {
		t.Errorf("Load error:\n%s\nwant:\n%s", err, want)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "node_id" {
		t.Errorf("errors.As(*FieldError) = %v", fe)
	}
}

func TestInvalid(t *testing.T) {
	short := base64.StdEncoding.EncodeToString([]byte("0123456789"))
	tests := []struct {
		name  string
		muts  []mutation
		field string
		want  []string // substrings of that field's error
	}{
		{"missing node_id", []mutation{del("node_id")}, "node_id", []string{"required"}},
		{"missing data_dir", []mutation{set("data_dir", "")}, "data_dir", []string{"required"}},
		{"node_id not an observer", []mutation{set("node_id", "obs9")}, "node_id",
			[]string{`"obs9"`, "not one of observers[].id (obs1, obs2, obs3)"}},
		{"bad node_id", []mutation{set("node_id", "Obs1")}, "node_id", []string{`"Obs1"`, "a-z"}},
		{"duplicate observer id", []mutation{set("observers[1].id", "obs1")}, "observers[1].id",
			[]string{`observers[1].id: "obs1": duplicate id (also observers[0])`}},
		{"duplicate raft address", []mutation{set("observers[2].raft", "127.0.0.1:7102")}, "observers[2].raft",
			[]string{`"127.0.0.1:7102"`, "duplicate raft address (also observers[1])"}},
		{"duplicate gossip address, other spelling", []mutation{set("observers[2].gossip", "[::ffff:127.0.0.1]:7202")}, "observers[2].gossip",
			[]string{`"[::ffff:127.0.0.1]:7202"`, "duplicate gossip address (also observers[1])"}},
		{"address without port", []mutation{set("raft.bind", "127.0.0.1"), set("raft.advertise", "127.0.0.1:7101")}, "raft.bind",
			[]string{`"127.0.0.1"`, "missing port"}},
		{"port 70000", []mutation{set("grpc.listen", "127.0.0.1:70000")}, "grpc.listen",
			[]string{`"127.0.0.1:70000"`, "port 70000 out of range 1..65535"}},
		{"port abc", []mutation{set("http.listen", "127.0.0.1:abc")}, "http.listen",
			[]string{`"127.0.0.1:abc"`, `port "abc" is not a number`}},
		{"hostname where an IP is required", []mutation{set("observers[1].raft", "obs2.example.com:7102")}, "observers[1].raft",
			[]string{`"obs2.example.com:7102"`, "not an IP address"}},
		{"wildcard advertise", []mutation{set("raft.advertise", "0.0.0.0:7101")}, "raft.advertise",
			[]string{`"0.0.0.0:7101"`, "wildcard"}},
		{"wildcard bind without advertise", []mutation{set("gossip.bind", "0.0.0.0:7201")}, "gossip.advertise",
			[]string{`"0.0.0.0:7201"`, "wildcard", "gossip.advertise defaults to gossip.bind"}},
		{"self raft differs from advertise", []mutation{set("raft.advertise", "127.0.0.2:7101")}, "observers[0].raft",
			[]string{`"127.0.0.1:7101"`, `differs from raft.advertise "127.0.0.2:7101"`}},
		{"self gossip differs from advertise", []mutation{set("observers[0].gossip", "127.0.0.1:7299")}, "observers[0].gossip",
			[]string{`"127.0.0.1:7299"`, `differs from gossip.advertise "127.0.0.1:7201"`}},
		{"2 observers", []mutation{truncate("observers", 2)}, "observers", []string{"2 configured", "odd number between 3 and 7"}},
		{"4 observers", []mutation{addObserver(4)}, "observers", []string{"4 configured", "odd number between 3 and 7"}},
		{"no observers", []mutation{del("observers")}, "observers", []string{"required"}},
		{"observers not a list", []mutation{set("observers", "obs1")}, "observers", []string{"expected a list"}},
		{"key too short", []mutation{set("gossip.key", short)}, "gossip.key",
			[]string{"gossip.key: decoded length 10 bytes: must be 16, 24 or 32"}},
		{"key not base64", []mutation{set("gossip.key", "not*base64")}, "gossip.key", []string{"not valid base64"}},
		{"key and key_file", []mutation{set("gossip.key_file", "/etc/vigil/gossip.key")}, "gossip.key", []string{"mutually exclusive"}},
		{"neither key nor key_file", []mutation{del("gossip.key")}, "gossip.key", []string{"required", "key_file"}},
		{"bad gossip label", []mutation{set("gossip.label", "my cluster")}, "gossip.label", []string{`"my cluster"`}},
		{"unknown key", []mutation{set("raft.heartbeat_timout", "1s")}, "raft.heartbeat_timout",
			[]string{"unknown field", `did you mean "heartbeat_timeout"`}},
		{"unknown top-level key", []mutation{set("nodeid", "obs1")}, "nodeid", []string{"unknown field", `"node_id"`}},
		{"unknown key in a member", []mutation{set("groups[0].members[1].prio", 5)}, "groups[0].members[1].prio",
			[]string{"unknown field", `"priority"`}},
		{"duration without unit", []mutation{set("groups[0].probe.interval", "5")}, "groups[0].probe.interval",
			[]string{`"5"`, `needs a unit, e.g. "5s" or "5ms"`}},
		{"integer duration", []mutation{set("raft.heartbeat_timeout", 500)}, "raft.heartbeat_timeout",
			[]string{`"500"`, "needs a unit"}},
		{"not a duration", []mutation{set("raft.apply_timeout", "soon")}, "raft.apply_timeout", []string{`"soon"`, "not a duration"}},
		{"negative cooldown", []mutation{set("groups[0].cooldown", "-1s")}, "groups[0].cooldown", []string{"-1s", "must be >= 0"}},
		{"negative apply timeout", []mutation{set("raft.apply_timeout", "-1s")}, "raft.apply_timeout", []string{"-1s", "must be > 0"}},
		{"heartbeat below raft minimum", []mutation{set("raft.heartbeat_timeout", "1ms")}, "raft.heartbeat_timeout",
			[]string{"1ms", "at least 5ms"}},
		{"lease longer than heartbeat", []mutation{set("raft.leader_lease_timeout", "600ms")}, "raft.leader_lease_timeout",
			[]string{"600ms", "must be <= raft.heartbeat_timeout (500ms)"}},
		{"election shorter than heartbeat", []mutation{set("raft.election_timeout", "100ms")}, "raft.election_timeout",
			[]string{"100ms", "must be >= raft.heartbeat_timeout"}},
		{"snapshot threshold 0", []mutation{set("raft.snapshot_threshold", 0)}, "raft.snapshot_threshold", []string{"must be >= 1"}},
		{"negative snapshot threshold", []mutation{set("raft.snapshot_threshold", -1)}, "raft.snapshot_threshold",
			[]string{`"-1"`, "non-negative integer"}},
		{"timeout above interval", []mutation{set("groups[0].probe.timeout", "2s")}, "groups[0].probe.timeout",
			[]string{"groups[0].probe.timeout: 2s: must be <= probe.interval (500ms)"}},
		{"down_after below interval", []mutation{set("groups[0].down_after", "100ms")}, "groups[0].down_after",
			[]string{"100ms", "must be >= probe.interval (500ms)"}},
		{"primary not a member", []mutation{set("groups[0].primary", "db9")}, "groups[0].primary",
			[]string{`"db9"`, "not one of the members (db1, db2, db3)"}},
		{"duplicate member name", []mutation{set("groups[0].members[1].name", "db1")}, "groups[0].members[1].name",
			[]string{`"db1"`, "duplicate member name (also groups[0].members[0])"}},
		{"duplicate member address", []mutation{set("groups[1].members[1].address", "10.0.1.1:6379")}, "groups[1].members[1].address",
			[]string{`"10.0.1.1:6379"`, "duplicate member address (also groups[1].members[0])"}},
		{"priority 1001", []mutation{set("groups[0].members[0].priority", 1001)}, "groups[0].members[0].priority",
			[]string{"1001", "between 0 and 1000"}},
		{"priority not a number", []mutation{set("groups[0].members[0].priority", "high")}, "groups[0].members[0].priority",
			[]string{`"high"`, "expected an integer"}},
		{"bad group name", []mutation{set("groups[0].name", "PG Main")}, "groups[0].name", []string{`"PG Main"`}},
		{"duplicate group name", []mutation{set("groups[1].name", "pg-main")}, "groups[1].name",
			[]string{`"pg-main"`, "duplicate group name (also groups[0])"}},
		{"bad kind", []mutation{set("groups[0].kind", "mysql")}, "groups[0].kind", []string{`"mysql"`, "postgres, generic"}},
		{"quorum 1 of 3", []mutation{set("quorum", 1)}, "quorum", []string{"quorum: 1: must be between 2 (a majority of 3 observers) and 3"}},
		{"quorum 4 of 3", []mutation{set("quorum", 4)}, "quorum", []string{"4", "between 2"}},
		{"http probe without port", []mutation{del("groups[1].probe.http.port")}, "groups[1].probe.http.port",
			[]string{"required"}},
		{"http probe without http section", []mutation{del("groups[1].probe.http")}, "groups[1].probe.http",
			[]string{"required for probe type http"}},
		{"http section on a tcp probe", []mutation{set("groups[1].probe.type", "tcp")}, "groups[1].probe.http",
			[]string{"only allowed with probe type http"}},
		{"http path without slash", []mutation{set("groups[1].probe.http.path", "alive")}, "groups[1].probe.http.path",
			[]string{`"alive"`, `must start with "/"`}},
		{"bad sslmode", []mutation{set("groups[0].probe.postgres.sslmode", "on")}, "groups[0].probe.postgres.sslmode",
			[]string{`"on"`, "verify-full"}},
		{"empty list entry", []mutation{set("groups[0].members[0]", nil)}, "groups[0].members[0]", []string{"empty list entry"}},
		// yaml.v3 drops null list entries; the later indexes must not shift.
		{"index after an empty entry", []mutation{set("groups[0]", nil), set("groups[1].primary", "nobody")}, "groups[1].primary",
			[]string{`"nobody"`, "not one of the members (redis-a, redis-b)"}},
		{"one member", []mutation{truncate("groups[1].members", 1)}, "groups[1].members", []string{"1 configured", "at least 2"}},
		{"bad byte size unit", []mutation{set("groups[0].max_lag", "16mb")}, "groups[0].max_lag", []string{`"16mb"`, `unknown unit "mb"`}},
		{"negative max_lag", []mutation{set("groups[0].max_lag", -1)}, "groups[0].max_lag", []string{"-1", "must be >= 0"}},
		{"bad datacenter", []mutation{set("groups[0].members[1].datacenter", "dc 2")}, "groups[0].members[1].datacenter", []string{`"dc 2"`}},
		{"bad log level", []mutation{set("log.level", "verbose")}, "log.level", []string{`"verbose"`, "debug, info, warn, error"}},
		{"listener port conflict", []mutation{set("http.listen", "127.0.0.1:7301")}, "http.listen",
			[]string{`"127.0.0.1:7301"`, "conflicts with grpc.listen (0.0.0.0:7301)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := mutate(t, tc.muts...)
			c, err := Parse(data)
			if err == nil {
				t.Fatalf("Parse succeeded:\n%s", data)
			}
			if c != nil {
				t.Error("Parse returned a config along with an error")
			}
			fe := fieldError(t, err, tc.field)
			for _, w := range tc.want {
				if !strings.Contains(fe.Error(), w) {
					t.Errorf("error %q does not contain %q", fe, w)
				}
			}
		})
	}
}

// The gossip key is a secret: it must not appear in any error.
func TestKeyNotLeaked(t *testing.T) {
	for _, key := range []string{
		base64.StdEncoding.EncodeToString([]byte("secret-ten")),
		"c2VjcmV0!!bad",
	} {
		_, err := Parse(mutate(t, set("gossip.key", key)))
		if err == nil {
			t.Fatalf("key %q accepted", key)
		}
		if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), "c2VjcmV0") {
			t.Errorf("error leaks the key: %v", err)
		}
	}
}

func TestAllProblemsReported(t *testing.T) {
	data := mutate(t,
		del("data_dir"),
		set("raft.heartbeat_timout", "1s"),           // unknown key
		set("gossip.probe_interval", "5"),            // duration without unit
		set("observers[1].id", "obs1"),               // duplicate id
		set("groups[0].members[0].priority", "high"), // not an integer
		set("groups[0].members[1].priority", 1001),   // out of range
		set("groups[1].primary", "nobody"),           // not a member
		set("groups[1].probe.timeout", "5s"),         // above interval
		truncate("groups[1].members", 1),             // too few members
		set("groups[1].members[0].address", "x:0"),   // bad port
		set("quorum", 1),                             // below majority
		set("log.format", "xml"),                     // not an option
		set("raft.advertise", "db.example.com:7101"), // hostname
	)
	_, err := Parse(data)
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	var got []string
	for _, fe := range fieldErrors(err) {
		got = append(got, fe.Field)
	}
	// Problems in the document come first, in file order, then semantic
	// ones. A bad value hides follow-up complaints about the same field
	// (priority "high" is not also "out of range" or "required").
	want := []string{
		"gossip.probe_interval",
		"groups[0].members[0].priority",
		"raft.heartbeat_timout",
		"data_dir",
		"quorum",
		"log.format",
		"raft.advertise",
		"observers[1].id",
		"groups[0].members[1].priority",
		"groups[1].probe.timeout",
		"groups[1].members",
		"groups[1].members[0].address",
		"groups[1].primary",
	}
	if !slices.Equal(got, want) {
		t.Errorf("reported fields:\n%q\nwant:\n%q\nfull error:\n%v", got, want, err)
	}
}

func TestGarbage(t *testing.T) {
	inputs := map[string]string{
		"empty":               "",
		"blank":               "  \n\n",
		"only a comment":      "# nothing here\n",
		"null document":       "~\n",
		"binary":              "\x00\x01\xfe\xff",
		"unclosed flow":       "{{{{",
		"list":                "[1, 2, 3]",
		"scalar":              "just some words",
		"unclosed list value": "node_id: [",
		"two documents":       "node_id: a\n---\nnode_id: b\n",
		"tab indentation":     "raft:\n\tbind: x\n",
		"unknown alias":       "node_id: *nope\n",
		"duplicate key":       "node_id: a\nnode_id: b\n",
		"self-referencing":    "groups: &g [*g]\n",
		"non-string key":      "? [a, b]\n: c\n",
		"bad merge":           "raft:\n  <<: 5\n",
		"json":                `{"node_id": 1, "observers": [{}], "groups": [null, {"members": [null]}]}`,
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			c, err := Parse([]byte(in))
			if err == nil || c != nil {
				t.Fatalf("Parse(%q) = %v, %v; want an error", in, c, err)
			}
		})
	}
}

func TestDuplicateKeyReported(t *testing.T) {
	data := bytes.Replace(readValid(t), []byte("node_id: obs1\n"), []byte("node_id: obs1\nnode_id: obs2\n"), 1)
	_, err := Parse(data)
	fe := fieldError(t, err, "node_id")
	if !strings.Contains(fe.Reason, "set twice") {
		t.Errorf("got %v", fe)
	}
}

// Anchors and merge keys are plain YAML and must keep working.
func TestAnchorsAndMerge(t *testing.T) {
	data := bytes.Replace(readValid(t), []byte("    probe:\n      interval: 500ms\n"),
		[]byte("    probe: &fast\n      interval: 500ms\n"), 1)
	data = bytes.Replace(data, []byte("    probe:\n      type: http\n"),
		[]byte("    probe:\n      <<: *fast\n      type: http\n"), 1)
	c, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, data)
	}
	if got := c.Groups[1].Probe.Interval.D(); got != 500*time.Millisecond {
		t.Errorf("merged interval = %v, want 500ms", got)
	}

	bad := bytes.Replace(data, []byte("<<: *fast\n"), []byte("<<: *fast\n      intervall: 1s\n"), 1)
	_, err = Parse(bad)
	fe := fieldError(t, err, "groups[1].probe.intervall")
	if !strings.Contains(fe.Reason, `did you mean "interval"`) {
		t.Errorf("got %v", fe)
	}
}

func TestFieldErrorFormat(t *testing.T) {
	tests := []struct {
		fe   FieldError
		want string
	}{
		{FieldError{"observers[1].id", "obs1", "duplicate id (also observers[0])"}, `observers[1].id: "obs1": duplicate id (also observers[0])`},
		{FieldError{"gossip.key", nil, "decoded length 10 bytes: must be 16, 24 or 32"}, "gossip.key: decoded length 10 bytes: must be 16, 24 or 32"},
		{FieldError{"quorum", 1, "too small"}, "quorum: 1: too small"},
		{FieldError{"groups[0].probe.timeout", Duration(2 * time.Second), "too long"}, "groups[0].probe.timeout: 2s: too long"},
		{FieldError{"", nil, "bad"}, "bad"},
	}
	for _, tc := range tests {
		if got := tc.fe.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

func TestGenerateGossipKey(t *testing.T) {
	a, err := GenerateGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Error("two generated keys are equal")
	}
	k, err := base64.StdEncoding.DecodeString(a)
	if err != nil || len(k) != 32 {
		t.Fatalf("key %q: %d bytes, %v", a, len(k), err)
	}
	// A generated key must be accepted by the config.
	if _, err := Parse(mutate(t, set("gossip.key", a))); err != nil {
		t.Errorf("generated key rejected: %v", err)
	}
}
