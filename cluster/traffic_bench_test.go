package cluster_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/vigilha/vigil/deploy/lab/pglab"
	"github.com/vigilha/vigil/fsm"
)

// ackWriter inserts rows one at a time through dial (VIP or HAProxy) and
// records every acknowledged id and which server acknowledged it.
type ackWriter struct {
	pg   *pglab.Cluster
	dial func(ctx context.Context) (*pgx.Conn, error)

	mu    sync.Mutex
	acked []int64
	first map[string]time.Time // server name -> first ack
}

func (w *ackWriter) run(ctx context.Context) {
	var conn *pgx.Conn
	server := ""
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for id := int64(1); ctx.Err() == nil; id++ {
		if conn == nil {
			// Like a client with a 300ms connect timeout: while the VIP is
			// nowhere, connects hang until it (no RST comes back).
			cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			c, err := w.dial(cctx)
			if err == nil {
				// cluster_name is the server's own name (pg0, pg1, …): the
				// address that answered may be the VIP.
				if err = c.QueryRow(cctx, "SELECT current_setting('cluster_name')").Scan(&server); err == nil {
					conn = c
				} else {
					c.Close(context.Background())
				}
			}
			cancel()
			if conn == nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := conn.Exec(cctx, "INSERT INTO acked VALUES ($1)", id)
		cancel()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			continue
		}
		w.mu.Lock()
		w.acked = append(w.acked, id)
		if _, ok := w.first[server]; !ok {
			w.first[server] = time.Now()
		}
		w.mu.Unlock()
	}
}

// trafficRun kills the primary under a continuous writer and returns the
// time to the first write acknowledged by the new primary and how many
// acknowledged writes the new primary lacks.
func trafficRun(b *testing.B, pg *pglab.Cluster, waitNew func() string, dial func(context.Context) (*pgx.Conn, error)) (time.Duration, int) {
	execSQL(b, pg.Primary(), "CREATE TABLE acked (id bigint PRIMARY KEY)")
	w := &ackWriter{pg: pg, dial: dial, first: map[string]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.run(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	for start := time.Now(); ; {
		w.mu.Lock()
		n := len(w.acked)
		w.mu.Unlock()
		if n >= 50 {
			break
		}
		if time.Since(start) > 30*time.Second {
			b.Fatal("the writer could not write before the kill")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := pg.Primary().Kill(); err != nil {
		b.Fatal(err)
	}
	killed := time.Now()
	newP := waitNew()
	var first time.Time
	for first.IsZero() {
		w.mu.Lock()
		first = w.first[newP]
		w.mu.Unlock()
		if time.Since(killed) > time.Minute {
			b.Fatalf("no write acknowledged by %s within a minute", newP)
		}
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	w.mu.Lock()
	ids := append([]int64(nil), w.acked...)
	w.mu.Unlock()
	have := query(b, node(pg, newP), "SELECT count(*) FROM acked WHERE id = ANY($1)", ids)
	var present int
	fmt.Sscan(have, &present)
	return first.Sub(killed), len(ids) - present
}

func reportTraffic(b *testing.B, title string, took []time.Duration, lost []int) {
	s, at := quantiles(took)
	total := 0
	for _, l := range lost {
		total += l
	}
	b.ReportMetric(float64(at(0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(at(0.99).Milliseconds()), "p99-ms")
	b.ReportMetric(float64(total), "writes-lost")
	fmt.Printf("\n%s (%d runs)\n%-22s %8s %8s %8s %11s\n%-22s %8s %8s %8s %11d\n", title, len(s), "", "p50", "p99", "max", "writes lost",
		"kill -> first write", at(0.5).Round(time.Millisecond), at(0.99).Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), total)
}

// BenchmarkFailoverThroughVIP: in the network-namespace lab (three database
// hosts with node agents, a client host), a client on its own host writes
// through the VIP; the primary is killed; measured: kill → first write
// acknowledged by the new primary through the VIP, and acknowledged
// writes lost (synchronous replication, ANY 1). Probe 300ms/250ms,
// down_after 2s, lease_timeout 1s. VIGIL_BENCH_RUNS runs (default 20),
// each in a fresh lab.
func BenchmarkFailoverThroughVIP(b *testing.B) {
	runs := benchRuns(20)
	var took []time.Duration
	var lost []int
	for r := 0; r < runs; r++ {
		b.Run(fmt.Sprint("run", r), func(b *testing.B) {
			v := startVIPLab(b, true)
			d, l := trafficRun(b, v.pg, func() string {
				f := waitFailovers(b, v.c, 1, fsm.OutcomeCompleted)
				return f.GetNewPrimary()
			}, func(ctx context.Context) (*pgx.Conn, error) {
				var conn *pgx.Conn
				err := v.lab.InNS("client", func() error {
					var err error
					conn, err = pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable connect_timeout=1", v.vip))
					return err
				})
				return conn, err
			})
			took, lost = append(took, d), append(lost, l)
		})
	}
	reportTraffic(b, "through the VIP, network-namespace lab, node agents, probe 300ms, down_after 2s", took, lost)
}

// BenchmarkFailoverThroughHAProxy is the same on loopback with the client
// going through a real HAProxy (checks on the /primary role endpoint every
// 200ms, re-pointed through the Runtime API).
func BenchmarkFailoverThroughHAProxy(b *testing.B) {
	runs := benchRuns(20)
	var took []time.Duration
	var lost []int
	for r := 0; r < runs; r++ {
		b.Run(fmt.Sprint("run", r), func(b *testing.B) {
			sock := filepath.Join(b.TempDir(), "admin.sock")
			pg, c := failoverLab(b, labOptions{sync: true, downAfter: "2s", failover: fmt.Sprintf("      haproxy: {socket: %q, backend: pg-main}", sock)})
			front := startTestHAProxy(b, sock, pg, c)
			d, l := trafficRun(b, pg, func() string {
				return waitFailovers(b, c, 1, fsm.OutcomeCompleted).GetNewPrimary()
			}, func(ctx context.Context) (*pgx.Conn, error) {
				return pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=1", front))
			})
			took, lost = append(took, d), append(lost, l)
		})
	}
	reportTraffic(b, "through HAProxy, loopback, probe 300ms, down_after 2s", took, lost)
}
