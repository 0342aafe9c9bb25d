package nemesis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vigilha/vigil/failover/haproxy"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Client-side budgets. A write gets longer than a sample: it may wait
// for a synchronous standby.
const (
	connectTimeout = 300 * time.Millisecond
	writeTimeout   = time.Second
	probeTimeout   = 100 * time.Millisecond
	sampleEvery    = 10 * time.Millisecond
	writePace      = 5 * time.Millisecond
	// A member's writability result older than this counts as "not
	// writable": its probe is stuck (host cut, fenced, hung).
	probeFresh = 150 * time.Millisecond
)

// recorder collects one run's client history.
type recorder struct {
	mu        sync.Mutex
	attempts  []Attempt
	samples   []Sample
	failovers map[uint64]*Failover
	group     *vigilv1.Group // the newest group state read
	// base is the epoch the run started at: failovers up to it belong to
	// earlier runs on the same lab.
	base uint64
}

func newRecorder() *recorder { return &recorder{failovers: map[uint64]*Failover{}} }

func (r *recorder) add(a Attempt) {
	r.mu.Lock()
	r.attempts = append(r.attempts, a)
	r.mu.Unlock()
}

// lastGroup returns the newest group state the recorder read.
func (r *recorder) lastGroup() *vigilv1.Group {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.group
}

// dialer opens a connection the way one client does and reports the
// server (cluster_name) that answered.
type dialer func(ctx context.Context) (*pgx.Conn, error)

// dialFrom returns a dialer that connects from inside a lab host.
func (l *Lab) dialFrom(host, addr string, port int) dialer {
	dsn := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=1", addr, port)
	return func(ctx context.Context) (*pgx.Conn, error) {
		var conn *pgx.Conn
		err := l.Net.InNS(host, func() error {
			var err error
			conn, err = pgx.Connect(ctx, dsn)
			return err
		})
		return conn, err
	}
}

// writer inserts (client, id) rows one at a time and records every
// attempt.
func (l *Lab) writer(ctx context.Context, rec *recorder, table, client string, dial dialer) {
	var conn *pgx.Conn
	server := ""
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for id := int64(1); ctx.Err() == nil; id++ {
		start := time.Now()
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, connectTimeout)
			c, err := dial(cctx)
			if err == nil {
				err = c.QueryRow(cctx, "SELECT current_setting('cluster_name')").Scan(&server)
				if err != nil {
					c.Close(context.Background())
				}
			}
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				rec.add(Attempt{Client: client, ID: id, Start: start, End: time.Now(), Outcome: Failed, Error: "connect: " + shortErr(err)})
				// Refused connections come back at once: do not spin.
				select {
				case <-ctx.Done():
					return
				case <-time.After(20 * time.Millisecond):
				}
				continue
			}
			conn = c
		}
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		_, err := conn.Exec(wctx, "INSERT INTO "+table+" (client, id) VALUES ($1, $2)", client, id)
		expired := wctx.Err() != nil
		cancel()
		a := Attempt{Client: client, ID: id, Start: start, End: time.Now(), Server: server}
		var pgErr *pgconn.PgError
		switch {
		case err == nil && !expired:
			a.Outcome = OK
		case err == nil:
			// Success after our cancel request: PostgreSQL may have
			// committed locally and given up waiting for the synchronous
			// standby. Not an acknowledgement we count on.
			a.Outcome, a.Error = Unknown, "answered after the client's timeout"
		case errors.As(err, &pgErr) && pgErr.Code != "57014":
			// The server refused the statement (read-only, shutting
			// down): not applied.
			a.Outcome, a.Error = Failed, shortErr(err)
		default:
			a.Outcome, a.Error = Unknown, shortErr(err)
		}
		if ctx.Err() != nil && a.Outcome != OK {
			return // the run ended under it; not a client-visible outcome
		}
		rec.add(a)
		if err != nil {
			conn.Close(context.Background())
			conn = nil
		}
		// Paced: five writers and a sampler share two cores with the
		// whole cluster.
		select {
		case <-ctx.Done():
		case <-time.After(writePace):
		}
	}
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}

// writability probes one member directly from the client host, as fast
// as it answers, and keeps its newest answer.
type writability struct {
	mu       sync.Mutex
	writable bool
	at       time.Time
}

func (w *writability) get(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writable && now.Sub(w.at) <= probeFresh
}

func (w *writability) set(v bool) {
	w.mu.Lock()
	w.writable, w.at = v, time.Now()
	w.mu.Unlock()
}

func (l *Lab) probeWritable(ctx context.Context, m string, w *writability) {
	dial := l.dialFrom("client", l.Net.IP(hostOf(m)), pgPort)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, probeTimeout)
			c, err := dial(cctx)
			cancel()
			if ctx.Err() != nil {
				break
			}
			if err != nil {
				w.set(false)
			} else {
				conn = c
			}
		}
		if conn != nil {
			cctx, cancel := context.WithTimeout(ctx, probeTimeout)
			var ro bool
			err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool").Scan(&ro)
			cancel()
			if ctx.Err() != nil {
				break
			}
			if err != nil {
				w.set(false)
				conn.Close(context.Background())
				conn = nil
			} else {
				w.set(!ro)
			}
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// vipReader reads which database hosts hold the VIP, through netlink
// handles opened once per namespace.
type vipReader struct {
	handles map[string]*netlink.Handle // member -> handle in its host
	links   map[string]netlink.Link
}

func (l *Lab) newVIPReader() (*vipReader, error) {
	r := &vipReader{handles: map[string]*netlink.Handle{}, links: map[string]netlink.Link{}}
	for _, m := range l.Members {
		h := l.Net.Hosts[hostOf(m)]
		ns, err := netns.GetFromName(h.NS)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("netns of %s: %w", h.Name, err)
		}
		hd, err := netlink.NewHandleAt(ns)
		ns.Close()
		if err != nil {
			r.close()
			return nil, fmt.Errorf("netlink in %s: %w", h.Name, err)
		}
		r.handles[m] = hd
		link, err := hd.LinkByName(h.Iface)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("%s in %s: %w", h.Iface, h.Name, err)
		}
		r.links[m] = link
	}
	return r, nil
}

func (r *vipReader) holders(vip string, members []string) []string {
	var res []string
	for _, m := range members {
		addrs, err := r.handles[m].AddrList(r.links[m], netlink.FAMILY_V4)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.IP.String() == vip {
				res = append(res, m)
				break
			}
		}
	}
	return res
}

func (r *vipReader) close() {
	for _, h := range r.handles {
		h.Close()
	}
}

// routedByHAProxy lists the servers HAProxy would send a new connection
// to: up and neither in maintenance nor draining.
func routedByHAProxy(ctx context.Context, hp *haproxy.Router) []string {
	cctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	st, err := hp.State(cctx)
	if err != nil {
		return nil
	}
	var res []string
	for name, s := range st {
		if s.Up() && s.Ready() {
			res = append(res, name)
		}
	}
	sort.Strings(res)
	return res
}

// sampler takes a Sample every sampleEvery until ctx ends.
func (l *Lab) sampler(ctx context.Context, rec *recorder) error {
	vr, err := l.newVIPReader()
	if err != nil {
		return err
	}
	defer vr.close()
	hp := haproxy.New(haproxy.Config{Socket: l.HAPSock, Backend: Group, Timeout: probeTimeout}, nil)
	probes := map[string]*writability{}
	var wg sync.WaitGroup
	for _, m := range l.Members {
		w := &writability{}
		probes[m] = w
		wg.Go(func() { l.probeWritable(ctx, m, w) })
	}
	defer wg.Wait()
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		s := l.sample(ctx, vr, hp, probes)
		if ctx.Err() != nil {
			// Taken while the run was stopping: its probes were cut
			// short, it says nothing about the cluster.
			return nil
		}
		rec.mu.Lock()
		rec.samples = append(rec.samples, s)
		rec.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (l *Lab) sample(ctx context.Context, vr *vipReader, hp *haproxy.Router, probes map[string]*writability) Sample {
	s := Sample{VIP: vr.holders(l.VIP, l.Members), HAProxy: routedByHAProxy(ctx, hp)}
	s.At = time.Now()
	for _, m := range l.Members {
		if probes[m].get(s.At) {
			s.Writable = append(s.Writable, m)
		}
	}
	return s
}

// watchFailovers reads the group every 100ms and notes when each
// failover epoch was first seen.
func (l *Lab) watchFailovers(ctx context.Context, rec *recorder) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if r, _, err := l.GetGroup(ctx); err == nil {
			rec.noteGroup(r.GetGroup(), time.Now())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// noteGroup records the failovers a group state shows.
func (r *recorder) noteGroup(g *vigilv1.Group, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g == nil {
		return
	}
	if r.group == nil || g.GetEpoch() >= r.group.GetEpoch() {
		r.group = g
	}
	all := slices.Clone(g.GetFailovers())
	if a := g.GetActiveFailover(); a != nil {
		all = append(all, a)
	}
	for _, f := range all {
		if f.GetEpoch() <= r.base {
			continue
		}
		cur, ok := r.failovers[f.GetEpoch()]
		if !ok {
			cur = &Failover{Epoch: f.GetEpoch(), SeenAt: now}
			r.failovers[f.GetEpoch()] = cur
		}
		cur.Kind, cur.Old, cur.New, cur.Reason = f.GetKind(), f.GetOldPrimary(), f.GetNewPrimary(), f.GetReason()
		cur.Outcome, cur.OutcomeDetail = f.GetOutcome(), f.GetOutcomeDetail()
		cur.Steps = cur.Steps[:0]
		for _, s := range f.GetSteps() {
			cur.Steps = append(cur.Steps, Step{Name: s.GetName(), Failed: s.GetFailed(), Detail: s.GetDetail()})
		}
	}
}

// failoverList returns the recorded failovers by epoch.
func (r *recorder) failoverList() []Failover {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res []Failover
	for _, f := range r.failovers {
		res = append(res, *f)
	}
	sort.Slice(res, func(i, j int) bool { return res[i].Epoch < res[j].Epoch })
	return res
}
