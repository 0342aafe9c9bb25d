package health

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseLSN parses PostgreSQL's textual pg_lsn ("16/B374D848") into the
// 64-bit WAL position it denotes.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("health: invalid LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("health: invalid LSN %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("health: invalid LSN %q", s)
	}
	return h<<32 | l, nil
}

// FormatLSN formats a WAL position the way PostgreSQL prints pg_lsn.
func FormatLSN(lsn uint64) string {
	return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn))
}
