package nodeagent

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const dbFenceYAML = `
    database_fence:
      kind: postgres
      port: 5432
      allow_from: [10.0.0.11, 10.0.0.0/28, "2001:db8::/64"]
      host: /var/run/postgresql
      user: postgres
      password_file: ""
      database: postgres
      timeout: 2s
`

func TestParseDatabaseFence(t *testing.T) {
	c, err := Parse([]byte(exampleYAML + dbFenceYAML))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Groups[0].DatabaseFence
	if d == nil {
		t.Fatal("database_fence not parsed")
	}
	want := DatabaseFence{Kind: "postgres", Port: 5432, AllowFrom: []string{"10.0.0.11", "10.0.0.0/28", "2001:db8::/64"},
		Host: "/var/run/postgresql", User: "postgres", Database: "postgres", Timeout: Duration(2 * time.Second)}
	if d.Kind != want.Kind || d.Port != want.Port || strings.Join(d.AllowFrom, ",") != strings.Join(want.AllowFrom, ",") ||
		d.Host != want.Host || d.User != want.User || d.PasswordFile != "" || d.Database != want.Database || d.Timeout != want.Timeout {
		t.Errorf("database_fence = %+v, want %+v", *d, want)
	}
	if got := d.Describe(); got != "postgres port 5432" {
		t.Errorf("Describe() = %q", got)
	}
	// Absent: nil.
	c, err = Parse([]byte(exampleYAML))
	if err != nil || c.Groups[0].DatabaseFence != nil {
		t.Fatalf("no section: %+v %v", c.Groups[0].DatabaseFence, err)
	}
}

func TestParseDatabaseFenceDefaults(t *testing.T) {
	c, err := Parse([]byte(exampleYAML + "    database_fence: {kind: postgres, port: 5433}\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Groups[0].DatabaseFence
	if d.Host != DefaultDatabaseFenceHost || d.User != "postgres" || d.Database != "postgres" ||
		d.Timeout.D() != DefaultDatabaseFenceTimeout || len(d.AllowFrom) != 0 || d.Port != 5433 {
		t.Errorf("defaults: %+v", *d)
	}
	c, err = Parse([]byte(exampleYAML + "    database_fence: {kind: postgres, port: 5432, host: '::1'}\n"))
	if err != nil || c.Groups[0].DatabaseFence.Host != "::1" {
		t.Fatalf("host ::1: %v", err)
	}
}

func TestParseDatabaseFenceErrors(t *testing.T) {
	section := func(repl ...string) string {
		s := dbFenceYAML
		for i := 0; i < len(repl); i += 2 {
			if !strings.Contains(s, repl[i]) {
				t.Fatalf("test bug: %q not in the section", repl[i])
			}
			s = strings.Replace(s, repl[i], repl[i+1], 1)
		}
		return exampleYAML + s
	}
	missing := filepath.Join(t.TempDir(), "nope", "pgpass")
	dir := t.TempDir()
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"port 0", section("port: 5432", "port: 0"), []string{"groups[0].database_fence.port: 0 is not a port (1..65535)"}},
		{"port too big", section("port: 5432", "port: 65536"), []string{"groups[0].database_fence.port: 65536 is not a port (1..65535)"}},
		{"port missing", section("      port: 5432\n", ""), []string{"groups[0].database_fence.port: 0 is not a port (1..65535)"}},
		{"port not a number", section("port: 5432", "port: pg"), []string{`groups[0].database_fence.port: "pg": expected an integer`}},
		{"kind missing", section("      kind: postgres\n", ""), []string{"groups[0].database_fence.kind: required"}},
		{"kind unknown", section("kind: postgres", "kind: mysql"), []string{`groups[0].database_fence.kind: "mysql": unknown database kind`}},
		{"empty section", exampleYAML + "    database_fence: {}\n", []string{"groups[0].database_fence.kind: required", "groups[0].database_fence.port: 0 is not a port"}},
		{"bad allow_from", section("10.0.0.0/28", "10.0.0.300"), []string{`groups[0].database_fence.allow_from[1]: "10.0.0.300": not an IPv4 or IPv6 address or CIDR`}},
		{"bad allow_from prefix", section("10.0.0.0/28", "10.0.0.0/33"), []string{`groups[0].database_fence.allow_from[1]: "10.0.0.0/33"`}},
		{"allow_from name", section("10.0.0.11", "db2.example"), []string{`groups[0].database_fence.allow_from[0]: "db2.example"`}},
		{"allow_from zone", section("10.0.0.11", "fe80::1%eth0"), []string{`groups[0].database_fence.allow_from[0]: "fe80::1%eth0": an address with a zone`}},
		{"host not local", section("host: /var/run/postgresql", "host: 10.0.0.11"), []string{`groups[0].database_fence.host: "10.0.0.11": must be a unix socket directory`}},
		{"host name", section("host: /var/run/postgresql", "host: localhost"), []string{`groups[0].database_fence.host: "localhost"`}},
		{"host relative", section("host: /var/run/postgresql", "host: run/pg"), []string{`groups[0].database_fence.host: "run/pg"`}},
		{"password_file missing", section(`password_file: ""`, "password_file: "+missing), []string{`groups[0].database_fence.password_file: "` + missing + `": cannot be read`}},
		{"password_file directory", section(`password_file: ""`, "password_file: "+dir), []string{`groups[0].database_fence.password_file: "` + dir + `": cannot be read`}},
		{"timeout negative", section("timeout: 2s", "timeout: -1s"), []string{"groups[0].database_fence.timeout: -1s: must be positive"}},
		{"timeout too long", section("timeout: 2s", "timeout: 2h"), []string{"groups[0].database_fence.timeout: 2h0m0s: must be positive and at most 1m0s"}},
		{"timeout without unit", section("timeout: 2s", "timeout: 2"), []string{`groups[0].database_fence.timeout: "2": a duration needs a unit`}},
		{"unknown key", section("timeout: 2s", "timeout: 2s\n      dbname: x"), []string{"groups[0].database_fence.dbname: unknown field (known: allow_from"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseDatabaseFenceTableCollision(t *testing.T) {
	y := `
node: h
listen: h:1
data_dir: /d
observers: [a, b, c]
groups:
  - {name: pg-main, member: m, vip: 10.0.0.1/32, interface: e0, database_fence: {kind: postgres, port: 5432}}
  - {name: pg_main, member: m, vip: 10.0.0.2/32, interface: e0, database_fence: {kind: postgres, port: 5433}}
`
	_, err := Parse([]byte(y))
	if err == nil || !strings.Contains(err.Error(), `groups[1].name: "pg_main": its database fence table vigil_fence_pg_main is also that of groups[0] ("pg-main")`) {
		t.Fatalf("collision: %v", err)
	}
	// Without a database fence on one of them there is no table to share.
	if _, err := Parse([]byte(strings.Replace(y, ", database_fence: {kind: postgres, port: 5433}", "", 1))); err != nil {
		t.Fatal(err)
	}
}

func TestLoadResolvesPasswordFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pgpass"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "node.yaml")
	y := exampleYAML + strings.Replace(dbFenceYAML, `password_file: ""`, "password_file: pgpass", 1)
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Groups[0].DatabaseFence.PasswordFile; got != filepath.Join(dir, "pgpass") {
		t.Errorf("password_file = %q", got)
	}
	// Relative to the file, not to the working directory: Parse alone
	// does not find it.
	if _, err := Parse([]byte(y)); err == nil || !strings.Contains(err.Error(), `password_file: "pgpass": cannot be read`) {
		t.Errorf("Parse with a relative password_file: %v", err)
	}
	f, err := newPostgresFence(tGroup, *c.Groups[0].DatabaseFence)
	if err != nil {
		t.Fatal(err)
	}
	if f.pg.Password != "s3cret" || f.pg.Host != "/var/run/postgresql" || f.pg.Port != 5432 || f.pg.User != "postgres" || f.pg.Database != "postgres" {
		t.Errorf("connection config: host %q port %d user %q db %q password %q", f.pg.Host, f.pg.Port, f.pg.User, f.pg.Database, f.pg.Password)
	}
}

func TestAllowedPrefixes(t *testing.T) {
	d := DatabaseFence{AllowFrom: []string{"10.0.0.11", "10.0.0.5/28", "::ffff:10.1.2.3", "2001:db8::1/64", " 192.0.2.1 ", "::/0"}}
	var got []string
	for _, p := range d.AllowedPrefixes() {
		got = append(got, p.String())
	}
	want := "10.0.0.11/32 10.0.0.0/28 10.1.2.3/32 2001:db8::/64 192.0.2.1/32 ::/0"
	if strings.Join(got, " ") != want {
		t.Errorf("AllowedPrefixes = %v, want %s", got, want)
	}
}

func TestFenceTableName(t *testing.T) {
	for group, want := range map[string]string{"pg-main": "vigil_fence_pg_main", "pg_2": "vigil_fence_pg_2", "a": "vigil_fence_a"} {
		if got := fenceTableName(group); got != want {
			t.Errorf("fenceTableName(%q) = %q, want %q", group, got, want)
		}
	}
}

// TestFenceRules checks the rules' shape without the kernel: one accept
// per allowed prefix (allow_from, then loopback) and a final drop, in
// each chain.
func TestFenceRules(t *testing.T) {
	f, err := newPostgresFence(tGroup, DatabaseFence{Kind: "postgres", Port: 5432, AllowFrom: []string{"10.0.0.0/28", "2001:db8::1"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.allow) != 4 || f.allow[2] != netip.MustParsePrefix("127.0.0.0/8") || f.allow[3] != netip.MustParsePrefix("::1/128") {
		t.Fatalf("allowed prefixes %v", f.allow)
	}
	in, out := f.rules()
	if len(in) != 5 || len(out) != 5 {
		t.Fatalf("%d input and %d output rules, want 5 each", len(in), len(out))
	}
	// A /28 needs a mask, a /128 and a /32 do not.
	if n := len(in[0]); n != 10 {
		t.Errorf("10.0.0.0/28 rule has %d expressions, want 10", n)
	}
	if n := len(in[1]); n != 9 {
		t.Errorf("2001:db8::1 rule has %d expressions, want 9", n)
	}
	if n := len(in[4]); n != 5 {
		t.Errorf("drop rule has %d expressions, want 5", n)
	}
	if !sameExprs(in[0], in[0]) || sameExprs(in[0], out[0]) || sameExprs(in[0], in[1]) {
		t.Error("sameExprs does not tell rules apart")
	}
}
