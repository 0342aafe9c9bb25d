package pglab

import (
	"context"
	"os"
	"testing"
	"time"
)

// RequireEnv names the environment variable that turns "PostgreSQL is
// not available here" from a skip into a failure (set it in CI).
const RequireEnv = "VIGIL_REQUIRE_PG"

// SkipUnlessAvailable skips tb when PostgreSQL cannot run here, saying
// why; with VIGIL_REQUIRE_PG=1 it fails instead.
func SkipUnlessAvailable(tb testing.TB) {
	tb.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("PostgreSQL required (%s=1) but unavailable: %v", RequireEnv, err)
	}
	tb.Skipf("PostgreSQL unavailable, skipping (set %s=1 to fail instead): %v", RequireEnv, err)
}

// StartForTest starts a cluster in tb.TempDir() (unless opts.BaseDir is
// set), fails tb if that does not work, and registers Close as cleanup.
// It calls SkipUnlessAvailable first.
func StartForTest(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	SkipUnlessAvailable(tb)
	if opts.BaseDir == "" {
		opts.BaseDir = tb.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		tb.Fatalf("pglab.Start: %v", err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("pglab: Close: %v", err)
		}
	})
	return c
}
