package config

import (
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestDurationYAML(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{`500ms`, 500 * time.Millisecond, ""},
		{`"1m30s"`, 90 * time.Second, ""},
		{`0`, 0, ""},
		{`0s`, 0, ""},
		{`-1s`, -time.Second, ""}, // range checks belong to Validate
		{`5`, 0, `"5": duration needs a unit, e.g. "5s" or "5ms"`},
		{`1.5`, 0, "needs a unit"},
		{`"10"`, 0, "needs a unit"},
		{`5 s`, 0, "not a duration"},
		{`soon`, 0, "not a duration"},
		{`""`, 0, "empty duration"},
		{`[1s]`, 0, "expected a duration"},
		{`9999999999h`, 0, "not a duration"},
	}
	for _, tc := range tests {
		var v struct{ D Duration }
		err := yaml.Unmarshal([]byte("d: "+tc.in), &v)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.in, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: error %v, want it to contain %q", tc.in, err, tc.wantErr)
		case tc.wantErr == "" && v.D.D() != tc.want:
			t.Errorf("%s = %v, want %v", tc.in, v.D.D(), tc.want)
		}
	}

	out, err := yaml.Marshal(struct{ D Duration }{Duration(1500 * time.Millisecond)})
	if err != nil || string(out) != "d: 1.5s\n" {
		t.Errorf("Marshal = %q, %v", out, err)
	}
}

func TestByteSizeYAML(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{`1024`, 1024, ""},
		{`0`, 0, ""},
		{`-1`, -1, ""}, // range checks belong to Validate
		{`16MiB`, 16 << 20, ""},
		{`16 MiB`, 16 << 20, ""},
		{`1KiB`, 1024, ""},
		{`2GiB`, 2 << 30, ""},
		{`1KB`, 1000, ""},
		{`3MB`, 3_000_000, ""},
		{`1GB`, 1_000_000_000, ""},
		{`7B`, 7, ""},
		{`16mb`, 0, `unknown unit "mb"`},
		{`1TB`, 0, `unknown unit "TB"`},
		{`1.5GiB`, 0, "not a byte size"},
		{`MiB`, 0, "not a byte size"},
		{`""`, 0, "not a byte size"},
		{`1_000`, 0, "not a byte size"},
		{`99999999999GiB`, 0, "out of range"},
		{`99999999999999999999`, 0, "out of range"},
		{`{a: 1}`, 0, "expected a byte size"},
	}
	for _, tc := range tests {
		var v struct{ B ByteSize }
		err := yaml.Unmarshal([]byte("b: "+tc.in), &v)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.in, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: error %v, want it to contain %q", tc.in, err, tc.wantErr)
		case tc.wantErr == "" && v.B.Int64() != tc.want:
			t.Errorf("%s = %d, want %d", tc.in, v.B.Int64(), tc.want)
		}
	}
}

func TestByteSizeString(t *testing.T) {
	tests := []struct {
		in   ByteSize
		want string
	}{
		{0, "0"},
		{1, "1"},
		{1023, "1023"},
		{1024, "1KiB"},
		{1000, "1KB"},
		{16 << 20, "16MiB"},
		{1_500_000, "1500KB"},
		{3 << 30, "3GiB"},
		{-2048, "-2048"},
	}
	for _, tc := range tests {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", int64(tc.in), got, tc.want)
		}
		// Whatever String produces must parse back to the same value.
		back, err := parseByteSize(tc.in.String())
		if err != nil || back != tc.in {
			t.Errorf("parse(%q) = %d, %v", tc.in.String(), back, err)
		}
		out, err := yaml.Marshal(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		var again ByteSize
		if err := yaml.Unmarshal(out, &again); err != nil || again != tc.in {
			t.Errorf("YAML round trip of %d via %q = %d, %v", int64(tc.in), out, int64(again), err)
		}
	}
}

func TestValidateHostPort(t *testing.T) {
	tests := []struct {
		in        string
		requireIP bool
		wantErr   string
	}{
		{"127.0.0.1:7101", true, ""},
		{"[::1]:7101", true, ""},
		{"[fe80::1%eth0]:7101", true, ""},
		{"10.0.0.1:65535", true, ""},
		{"db1.example.com:5432", false, ""},
		{"localhost:1", false, ""},
		{"0.0.0.0:7301", false, ""},
		{"[::]:7301", false, ""},
		{"127.0.0.1", false, "missing port"},
		{"127.0.0.1:", false, "missing port"},
		{":7101", false, "missing host"},
		{"::1:7101", false, "too many colons"},
		{"127.0.0.1:70000", false, "port 70000 out of range 1..65535"},
		{"127.0.0.1:0", false, "port 0 out of range"},
		{"127.0.0.1:99999999999999999999", false, "out of range"},
		{"127.0.0.1:abc", false, `port "abc" is not a number`},
		{"127.0.0.1:+80", false, "not a number"},
		{"127.0.0.1:-1", false, "not a number"},
		{"db1.example.com:5432", true, `host "db1.example.com" is not an IP address`},
		{"0.0.0.0:7101", true, "wildcard"},
		{"[::]:7101", true, "wildcard"},
		{"bad host:80", false, "not a valid IP address or hostname"},
		{"-bad:80", false, "not a valid IP address or hostname"},
		{"a..b:80", false, "not a valid IP address or hostname"},
		{"", false, "missing port"},
	}
	for _, tc := range tests {
		err := ValidateHostPort(tc.in, tc.requireIP)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("ValidateHostPort(%q, %v) = %v", tc.in, tc.requireIP, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ValidateHostPort(%q, %v) = %v, want error containing %q", tc.in, tc.requireIP, err, tc.wantErr)
		}
	}
}
