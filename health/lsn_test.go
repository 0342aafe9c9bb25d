package health

import "testing"

func TestParseLSN(t *testing.T) {
	good := map[string]uint64{
		"0/0":               0,
		"16/B374D848":       0x16B374D848,
		"0/3000060":         0x3000060,
		"FFFFFFFF/FFFFFFFF": 1<<64 - 1,
		"a/b":               0xA0000000B,
	}
	for s, want := range good {
		got, err := ParseLSN(s)
		if err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %#x, %v; want %#x", s, got, err, want)
		}
		if back, _ := ParseLSN(FormatLSN(got)); back != got {
			t.Errorf("FormatLSN(%#x) = %q does not round-trip", got, FormatLSN(got))
		}
	}
	if FormatLSN(0x16B374D848) != "16/B374D848" {
		t.Errorf("FormatLSN = %q", FormatLSN(0x16B374D848))
	}
	for _, s := range []string{"", "/", "16", "16/", "/1", "x/1", "1/-1", "+1/1", "100000000/0", "0/100000000", "1/2/3", " 1/2"} {
		if _, err := ParseLSN(s); err == nil {
			t.Errorf("ParseLSN(%q) accepted", s)
		}
	}
}

func TestTimelineFromWALFile(t *testing.T) {
	if tli, ok := timelineFromWALFile("000000030000000000000007"); !ok || tli != 3 {
		t.Errorf("got %d %v", tli, ok)
	}
	for _, bad := range []string{"", "0000", "00000000000000", "zzzzzzzz00000000"} {
		if _, ok := timelineFromWALFile(bad); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}
