package haproxy

import (
	"strings"
	"testing"
)

// Captured from HAProxy 2.6.12 after "set server pg/srv1 state maint" and
// "set server pg/srv2 state ready" (srv2 and srv3 "disabled" in the config).
const sampleState = `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
2 pg 1 srv1 127.0.0.1 0 1 1 1 0 6 3 0 14 0 0 0 - 16001 - 0 0 - - 0
2 pg 2 srv2 127.0.0.1 2 4 1 1 0 1 0 1 6 0 0 0 - 16002 - 0 7401 10.0.0.1 - 0
2 pg 3 srv3 127.0.0.1 0 5 1 1 1 1 0 0 14 0 0 0 - 16003 - 0 0 - - 0

`

func TestParseServersState(t *testing.T) {
	got, err := ParseServersState(sampleState)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("want 3 servers, got %d", len(got))
	}
	s1, s2, s3 := got[0], got[1], got[2]
	if s1.Name != "srv1" || s1.Backend != "pg" || !s1.Maint() || s1.Ready() || s1.Up() || s1.Port != 16001 {
		t.Errorf("srv1: %+v", s1)
	}
	// Admin state 4 (config maint remembered) is ready.
	if s2.AdminState != 4 || !s2.Ready() || s2.Maint() || !s2.Up() || s2.CheckPort != 7401 || s2.CheckAddr != "10.0.0.1" {
		t.Errorf("srv2: %+v", s2)
	}
	if s3.AdminState != 5 || !s3.Maint() {
		t.Errorf("srv3: %+v", s3)
	}
	if s2.Fields["srv_check_status"] != "1" {
		t.Errorf("Fields: %v", s2.Fields)
	}
	drain := ServerState{AdminState: AdminForcedDrain}
	if drain.Ready() || drain.Maint() || !drain.Drain() {
		t.Errorf("drain: ready=%v maint=%v", drain.Ready(), drain.Maint())
	}

	for _, bad := range []string{"Can't find backend.\n\n", "", "1\n2 pg 1 srv1\n", "1\n# be_id be_name srv_id srv_name srv_op_state srv_admin_state\n2 pg 1\n"} {
		if _, err := ParseServersState(bad); err == nil {
			t.Errorf("ParseServersState(%q) succeeded", bad)
		}
	}
	_, err = ParseServersState("Can't find backend.\n\n")
	if err == nil || !strings.Contains(err.Error(), "Can't find backend.") {
		t.Errorf("error does not carry HAProxy's answer: %v", err)
	}
	// An empty backend is not an error.
	if s, err := ParseServersState("1\n# be_id be_name srv_id srv_name srv_op_state srv_admin_state\n"); err != nil || len(s) != 0 {
		t.Errorf("empty backend: %v %v", s, err)
	}
}

func TestSocketAddr(t *testing.T) {
	for in, want := range map[string][2]string{
		"/run/haproxy/admin.sock": {"unix", "/run/haproxy/admin.sock"},
		"unix:admin.sock":         {"unix", "admin.sock"},
		"admin.sock":              {"unix", "admin.sock"},
		"127.0.0.1:9999":          {"tcp", "127.0.0.1:9999"},
		"tcp:lb:9999":             {"tcp", "lb:9999"},
		"[::1]:9999":              {"tcp", "[::1]:9999"},
	} {
		n, a := socketAddr(in)
		if n != want[0] || a != want[1] {
			t.Errorf("socketAddr(%q) = %s %s, want %v", in, n, a, want)
		}
	}
}
