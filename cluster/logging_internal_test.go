package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// Raft's hclog.Fmt arguments are formatted, not printed as "[%+v [...]]".
func TestHCLogFormatsFmtArguments(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLog(slog.New(slog.NewTextHandler(&buf, nil)), "raft")
	l.Info("initial configuration", "servers", hclog.Fmt("%+v", []string{"obs1", "obs2"}))
	if s := buf.String(); !strings.Contains(s, `servers="[obs1 obs2]"`) {
		t.Fatalf("log line %q: want servers=\"[obs1 obs2]\"", s)
	}
}
