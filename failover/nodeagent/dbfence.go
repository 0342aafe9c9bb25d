package nodeagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

// DatabaseFencer is the database fence of one group on this host (see
// DatabaseFence for its configuration and the package comment for what it
// does and cannot do). The agent uses the nftables + PostgreSQL
// implementation (NewPostgresFence) unless New is given another with
// WithDatabaseFencer (unit tests use a fake, see nodeagenttest).
//
// Install, Installed and Remove act on the kernel only (netlink): they
// neither write to disk nor wait for the database. The SQL methods are
// bounded by ctx, which the agent bounds by the section's timeout.
type DatabaseFencer interface {
	// Describe names the fence for Status, e.g. "postgres port 5432".
	Describe() string
	// Install puts the network fence in place, replacing any previous
	// version of it atomically (idempotent), and verifies it by reading
	// it back: nil means it is verifiably in force.
	Install() error
	// Installed reports whether the network fence is in place (e.g. left
	// by a previous run of the agent: it is kernel state).
	Installed() (bool, error)
	// Remove removes the network fence; false (and no error) if it was
	// not in place.
	Remove() (bool, error)
	// TerminateSessions ends every client session of the database except
	// its own and returns how many it ended. Replication connections
	// (walsenders) are kept.
	TerminateSessions(ctx context.Context) (int, error)
	// SetReadOnly makes new transactions read-only by default and
	// reloads the configuration (PostgreSQL: ALTER SYSTEM SET
	// default_transaction_read_only = on, which writes a file).
	SetReadOnly(ctx context.Context) error
	// ResetReadOnly undoes SetReadOnly.
	ResetReadOnly(ctx context.Context) error
	// InRecovery reports whether the local database is a standby
	// (pg_is_in_recovery()).
	InRecovery(ctx context.Context) (bool, error)
}

// DatabaseFencerFactory builds the database fence of one group from its
// configuration (defaults applied, validated).
type DatabaseFencerFactory func(group string, cfg DatabaseFence) (DatabaseFencer, error)

// WithDatabaseFencer replaces NewPostgresFence for the groups that have a
// database_fence section (tests use a fake).
func WithDatabaseFencer(f DatabaseFencerFactory) Option {
	return func(o *options) { o.dbFencer = f }
}

// fenceTablePrefix starts the name of every table the agent owns; the
// group name follows, sanitized (fenceTableName).
const fenceTablePrefix = "vigil_fence_"

// fenceTableName is the nftables table (family inet) of a group's database
// fence: "vigil_fence_" and the group name with every character other
// than a-z, A-Z, 0-9 and '_' replaced by '_' ("pg-main" ->
// "vigil_fence_pg_main"). Validate refuses two fenced groups whose names
// map to the same table.
func fenceTableName(group string) string {
	b := []byte(group)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return fenceTablePrefix + string(b)
}

// fenceChainPriority is the priority of the fence's base chains: filter -
// 10, ahead of the host's own filter chains. The order does not change
// the outcome (a drop in any base chain of a hook is final, an accept
// only ends that chain), but packets are dropped before other filtering
// costs anything.
const fenceChainPriority = nftables.ChainPriority(-10)

// loopback is always allowed: the agent's own local connection and the
// host's local clients over 127.0.0.1/::1.
var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// postgresFence is the real DatabaseFencer: an nftables table for the
// traffic, pgx over the local connection for the sessions.
type postgresFence struct {
	group string
	cfg   DatabaseFence
	table *nftables.Table
	allow []netip.Prefix // allow_from and loopback
	pg    *pgx.ConnConfig
	// nftOpts are the options of every nftables connection: none (the
	// agent's own network namespace), or, in tests, another namespace.
	nftOpts []nftables.ConnOption
	// committed, if set, is called with the time each Install's netlink
	// transaction was acknowledged, i.e. the rules were in force (tests
	// measure against it).
	committed func(time.Time)
}

// pgFenceOption adjusts a postgresFence (tests: another network
// namespace).
type pgFenceOption func(*postgresFence)

// withNFTNetNS makes the fence act on the network namespace open as fd.
func withNFTNetNS(fd int) pgFenceOption {
	return func(f *postgresFence) { f.nftOpts = append(f.nftOpts, nftables.WithNetNSFd(fd)) }
}

// withCommitHook sets postgresFence.committed.
func withCommitHook(f func(time.Time)) pgFenceOption {
	return func(pf *postgresFence) { pf.committed = f }
}

// withPGDial replaces the dialer of the local database connection.
func withPGDial(d pgconn.DialFunc) pgFenceOption {
	return func(f *postgresFence) { f.pg.DialFunc = d }
}

// NewPostgresFence returns the nftables + PostgreSQL fence of a group. It
// reads password_file now (never while fencing) and prepares the local
// connection's configuration; it does not connect nor touch nftables.
func NewPostgresFence(group string, cfg DatabaseFence) (DatabaseFencer, error) {
	return newPostgresFence(group, cfg)
}

func newPostgresFence(group string, cfg DatabaseFence, opts ...pgFenceOption) (*postgresFence, error) {
	cfg.ApplyDefaults()
	if cfg.Kind != DatabaseFenceKindPostgres {
		return nil, fmt.Errorf("database fence of group %q: kind %q is not %q", group, cfg.Kind, DatabaseFenceKindPostgres)
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("database fence of group %q: %d is not a port", group, cfg.Port)
	}
	var password string
	if cfg.PasswordFile != "" {
		b, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("database fence of group %q: password_file: %w", group, err)
		}
		password, _, _ = strings.Cut(string(b), "\n")
		password = strings.TrimSuffix(password, "\r")
	}
	// Keyword/value form, every value quoted; target_session_attrs=any
	// because a standby must be reachable too (InRecovery).
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable target_session_attrs=any application_name=vigil-node-fence",
		pgQuote(cfg.Host), cfg.Port, pgQuote(cfg.User), pgQuote(cfg.Database))
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("database fence of group %q: local connection: %w", group, err)
	}
	if password != "" {
		pc.Password = password
	}
	pc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	pc.StatementCacheCapacity = 0
	pc.DescriptionCacheCapacity = 0
	pc.Fallbacks = nil
	f := &postgresFence{
		group: group,
		cfg:   cfg,
		table: &nftables.Table{Family: nftables.TableFamilyINet, Name: fenceTableName(group)},
		allow: append(cfg.AllowedPrefixes(), loopback...),
		pg:    pc,
	}
	for _, o := range opts {
		o(f)
	}
	return f, nil
}

// pgQuote quotes a keyword/value connection string value.
func pgQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func (f *postgresFence) Describe() string { return f.cfg.Describe() }

func (f *postgresFence) tableDesc() string { return "inet " + f.table.Name }

// conn opens a lasting nftables connection (one netlink socket for the
// whole operation); the caller must CloseLasting it.
func (f *postgresFence) conn() (*nftables.Conn, error) {
	c, err := nftables.New(append(append([]nftables.ConnOption(nil), f.nftOpts...), nftables.AsLasting())...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// chains returns the fence's two base chains of table t.
func (f *postgresFence) chains(t *nftables.Table) (in, out *nftables.Chain) {
	accept := nftables.ChainPolicyAccept
	prio := fenceChainPriority
	in = &nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: &prio, Policy: &accept}
	out = &nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: &prio, Policy: &accept}
	return in, out
}

// rules returns the expressions of the rules of the input chain (in) and
// of the output chain (out), in order:
//
//	input:  tcp dport PORT ip[6] saddr PREFIX accept   (per allowed prefix)
//	        tcp dport PORT drop
//	output: tcp sport PORT ip[6] daddr PREFIX accept   (per allowed prefix)
//	        tcp sport PORT drop
//
// Matching on the address, not on the interface, also fences a client on
// this host that connects to one of the host's own non-loopback addresses
// (its packets go through lo with that address as source).
func (f *postgresFence) rules() (in, out [][]expr.Any) {
	for _, p := range f.allow {
		in = append(in, allowRule(uint16(f.cfg.Port), true, p))
		out = append(out, allowRule(uint16(f.cfg.Port), false, p))
	}
	in = append(in, dropRule(uint16(f.cfg.Port), true))
	out = append(out, dropRule(uint16(f.cfg.Port), false))
	return in, out
}

// tcpPort matches TCP packets whose destination (dport) or source port
// is port.
func tcpPort(port uint16, dport bool) []expr.Any {
	off := uint32(0) // source port
	if dport {
		off = 2
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// allowRule accepts the port's packets from (input) or to (output) p.
func allowRule(port uint16, input bool, p netip.Prefix) []expr.Any {
	e := tcpPort(port, input)
	var (
		proto     byte
		off, size uint32
	)
	if p.Addr().Is4() {
		proto, size = unix.NFPROTO_IPV4, 4
		off = 16 // ip daddr
		if input {
			off = 12 // ip saddr
		}
	} else {
		proto, size = unix.NFPROTO_IPV6, 16
		off = 24 // ip6 daddr
		if input {
			off = 8 // ip6 saddr
		}
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	)
	if p.Bits() > 0 {
		e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size})
		if p.Bits() < int(size)*8 {
			mask := make([]byte, size)
			for i := 0; i < p.Bits(); i++ {
				mask[i/8] |= 0x80 >> (i % 8)
			}
			e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)})
		}
		e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
	}
	return append(e, &expr.Verdict{Kind: expr.VerdictAccept})
}

// dropRule drops every other packet of the port, in either family.
func dropRule(port uint16, input bool) []expr.Any {
	return append(tcpPort(port, input), &expr.Verdict{Kind: expr.VerdictDrop})
}

// Install replaces the group's table in one netlink transaction (add,
// delete, add again with its chains and rules: the kernel applies it
// atomically, so there is no moment without the fence when it was already
// there), then reads it back and compares.
func (f *postgresFence) Install() error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := c.AddTable(&nftables.Table{Family: f.table.Family, Name: f.table.Name})
	c.DelTable(t)
	t = c.AddTable(&nftables.Table{Family: f.table.Family, Name: f.table.Name})
	in, out := f.chains(t)
	c.AddChain(in)
	c.AddChain(out)
	rin, rout := f.rules()
	for _, e := range rin {
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: e})
	}
	for _, e := range rout {
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: e})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("installing nftables table %s: %w", f.tableDesc(), err)
	}
	if f.committed != nil {
		f.committed(time.Now())
	}
	if err := f.verify(c); err != nil {
		return fmt.Errorf("nftables table %s: installed but not verified: %w", f.tableDesc(), err)
	}
	return nil
}

// verify reads the table back and checks its chains and every rule.
func (f *postgresFence) verify(c *nftables.Conn) error {
	t, err := c.ListTableOfFamily(f.table.Name, f.table.Family)
	if err != nil {
		return fmt.Errorf("reading the table back: %w", err)
	}
	in, out := f.chains(t)
	rin, rout := f.rules()
	for _, ch := range []struct {
		want  *nftables.Chain
		rules [][]expr.Any
	}{{in, rin}, {out, rout}} {
		got, err := c.ListChain(t, ch.want.Name)
		if err != nil {
			return fmt.Errorf("chain %s: %w", ch.want.Name, err)
		}
		if got.Type != ch.want.Type || got.Hooknum == nil || *got.Hooknum != *ch.want.Hooknum ||
			got.Priority == nil || *got.Priority != *ch.want.Priority || got.Policy == nil || *got.Policy != *ch.want.Policy {
			return fmt.Errorf("chain %s: not a %s chain on hook %d at priority %d with policy accept", ch.want.Name, ch.want.Type, *ch.want.Hooknum, *ch.want.Priority)
		}
		rules, err := c.GetRules(t, ch.want)
		if err != nil {
			return fmt.Errorf("rules of chain %s: %w", ch.want.Name, err)
		}
		if len(rules) != len(ch.rules) {
			return fmt.Errorf("chain %s has %d rules, want %d", ch.want.Name, len(rules), len(ch.rules))
		}
		for i, r := range rules {
			if !sameExprs(r.Exprs, ch.rules[i]) {
				return fmt.Errorf("chain %s: rule %d differs from the one installed", ch.want.Name, i)
			}
		}
	}
	return nil
}

// sameExprs compares rule expressions as read back from the kernel with
// the ones sent.
func sameExprs(got, want []expr.Any) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := got[i], want[i]
		if reflect.TypeOf(g) != reflect.TypeOf(w) {
			return false
		}
		switch w := w.(type) {
		case *expr.Bitwise:
			g := g.(*expr.Bitwise)
			if g.SourceRegister != w.SourceRegister || g.DestRegister != w.DestRegister || g.Len != w.Len ||
				!bytes.Equal(g.Mask, w.Mask) || !bytes.Equal(g.Xor, w.Xor) {
				return false
			}
		default:
			if !reflect.DeepEqual(g, w) {
				return false
			}
		}
	}
	return true
}

func (f *postgresFence) Installed() (bool, error) {
	c, err := f.conn()
	if err != nil {
		return false, err
	}
	defer c.CloseLasting()
	return f.installed(c)
}

func (f *postgresFence) installed(c *nftables.Conn) (bool, error) {
	_, err := c.ListTableOfFamily(f.table.Name, f.table.Family)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, fmt.Errorf("looking up nftables table %s: %w", f.tableDesc(), err)
}

// Remove deletes the table if it exists (add + delete in one
// transaction, which succeeds even if it went away meanwhile) and checks
// that it is gone.
func (f *postgresFence) Remove() (bool, error) {
	c, err := f.conn()
	if err != nil {
		return false, err
	}
	defer c.CloseLasting()
	was, err := f.installed(c)
	if err != nil || !was {
		return false, err
	}
	t := c.AddTable(&nftables.Table{Family: f.table.Family, Name: f.table.Name})
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("removing nftables table %s: %w", f.tableDesc(), err)
	}
	if still, err := f.installed(c); err != nil || still {
		if err == nil {
			err = errors.New("still there after deletion")
		}
		return false, fmt.Errorf("removing nftables table %s: %w", f.tableDesc(), err)
	}
	return was, nil
}

// connect opens the local connection, bounded by ctx.
func (f *postgresFence) connect(ctx context.Context) (*pgx.Conn, error) {
	c, err := pgx.ConnectConfig(ctx, f.pg.Copy())
	if err != nil {
		return nil, fmt.Errorf("connecting to the local database (host %s port %d): %w", f.cfg.Host, f.cfg.Port, err)
	}
	return c, nil
}

// close closes c, bounded by the timeout (it may be a connection the
// server no longer answers on).
func (f *postgresFence) close(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.Timeout.D())
	defer cancel()
	_ = c.Close(ctx)
}

func (f *postgresFence) exec(ctx context.Context, what string, stmts ...string) error {
	c, err := f.connect(ctx)
	if err != nil {
		return err
	}
	defer f.close(c)
	for _, s := range stmts {
		if _, err := c.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %s: %w", what, s, err)
		}
	}
	return nil
}

func (f *postgresFence) TerminateSessions(ctx context.Context) (int, error) {
	c, err := f.connect(ctx)
	if err != nil {
		return 0, err
	}
	defer f.close(c)
	var n int
	err = c.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
		FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("terminating client sessions: %w", err)
	}
	return n, nil
}

func (f *postgresFence) SetReadOnly(ctx context.Context) error {
	return f.exec(ctx, "read-only", "ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()")
}

func (f *postgresFence) ResetReadOnly(ctx context.Context) error {
	return f.exec(ctx, "reset read-only", "ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()")
}

func (f *postgresFence) InRecovery(ctx context.Context) (bool, error) {
	c, err := f.connect(ctx)
	if err != nil {
		return false, err
	}
	defer f.close(c)
	var in bool
	if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&in); err != nil {
		return false, fmt.Errorf("pg_is_in_recovery(): %w", err)
	}
	return in, nil
}

// ---- the agent's use of the database fence ----

// Triggers (the trigger label of vigil_agent_database_fences_total).
const (
	triggerFence     = "fence"      // the observers' Fence RPC
	triggerSelfFence = "self_fence" // lease quorum lost
	triggerStartup   = "startup"    // agent started without the VIP
)

// Steps (the step label of vigil_agent_database_fence_failures_total).
const (
	stepInstall       = "install"
	stepSessions      = "sessions"
	stepReadOnly      = "read_only"
	stepUnfence       = "unfence"
	stepResetReadOnly = "reset_read_only"
)

// errSuperseded: a read-only switch skipped because a newer one was asked
// for while it waited for the previous one.
var errSuperseded = errors.New("superseded by a newer read-only switch")

// setupDatabaseFence builds g's database fence and looks whether it is
// already in force (kernel state left by a previous run of the agent): if
// so it is kept, and reported, until AddVIP or the recovery check lifts it.
func (a *Agent) setupDatabaseFence(g *group, cfg DatabaseFence, factory DatabaseFencerFactory) error {
	f, err := factory(g.name, cfg)
	if err != nil {
		return fmt.Errorf("group %q: database_fence: %w", g.name, err)
	}
	g.dbf, g.dbDesc, g.dbTimeout = f, f.Describe(), cfg.Timeout.D()
	in, err := f.Installed()
	if err != nil {
		return fmt.Errorf("group %q: database_fence: cannot read the fence's nftables state (the agent needs CAP_NET_ADMIN and nf_tables): %w", g.name, err)
	}
	if in {
		g.dbFenced = true
		a.log.Warn("database fence in force at start; kept until AddVIP, or until the database is a standby",
			"group", g.name, "database_fence", g.dbDesc)
	}
	a.m.dbFenced.WithLabelValues(g.name).Set(b2f(in))
	for _, tr := range []string{triggerFence, triggerSelfFence, triggerStartup} {
		a.m.dbFences.WithLabelValues(g.name, tr)
	}
	return nil
}

// startupFence fails closed at start: without the VIP this agent cannot
// vouch for the local database as the primary, so unless the database
// answers as a standby it is fenced before the agent serves anything. A
// host coming back from a power loss while another member was promoted
// would otherwise serve writes to its local clients (its own address is
// not in allow_from) until the observers noticed the rogue primary. The
// recovery check lifts the fence once the database answers as a standby
// (a rejoined old primary, or a standby that was still starting); the
// leader's AddVIP lifts it on the primary.
func (a *Agent) startupFence(g *group) error {
	ctx, cancel := context.WithTimeout(a.ctx, g.dbTimeout)
	in, err := g.dbf.InRecovery(ctx)
	cancel()
	if err == nil && in {
		return nil
	}
	why := "it answers as a primary"
	if err != nil {
		why = "it does not answer (" + err.Error() + ")"
	}
	a.log.Warn("database fenced at start: the local database is not known to be a standby and this host holds no VIP; lifted by AddVIP or once it answers as a standby",
		"group", g.name, "database", why, "database_fence", g.dbDesc)
	if err := a.installDatabaseFence(g, triggerStartup); err != nil {
		return fmt.Errorf("group %q: database fence at start: %w", g.name, err)
	}
	return nil
}

// installDatabaseFence installs and verifies g's network fence. The
// caller holds g.act.
func (a *Agent) installDatabaseFence(g *group, trigger string) error {
	start := time.Now()
	err := g.dbf.Install()
	took := time.Since(start)
	if err != nil {
		a.m.dbFenceFailures.WithLabelValues(g.name, stepInstall).Inc()
		a.log.Error("database fence: installing the network fence failed", "group", g.name, "trigger", trigger,
			"database_fence", g.dbDesc, "err", err)
		return err
	}
	g.mu.Lock()
	g.dbFenced = true
	g.dbGen++
	g.mu.Unlock()
	a.m.dbFenced.WithLabelValues(g.name).Set(1)
	a.m.dbFences.WithLabelValues(g.name, trigger).Inc()
	a.log.Warn("database fenced: the port is cut off except for allow_from and loopback", "group", g.name,
		"trigger", trigger, "database_fence", g.dbDesc, "took", took)
	return nil
}

// Details of SQL steps still running when Fence answers.
const (
	sessionsPending = "client sessions being terminated in the background (bounded by the timeout)"
	readOnlyPending = "read-only not done yet (goes on in the background, bounded by the timeout)"
)

// terminateSessionsAsync starts terminateSessions on its own goroutine: a
// hung database (SIGSTOP, stalled disk) would otherwise hold the fence,
// and g.act, for the whole timeout, while the network fence already cut
// every outside client off. Read-only switches asked for from now on wait
// for it (sessDone). The outcome's description arrives on the channel
// (buffered: nobody has to read it); nil if the agent is closing.
func (a *Agent) terminateSessionsAsync(g *group, trigger string) <-chan string {
	ch := make(chan string, 1)
	done := make(chan struct{})
	g.mu.Lock()
	g.sessDone = done
	g.mu.Unlock()
	if !a.goBackground(func() {
		defer close(done)
		ch <- a.terminateSessions(g, trigger)
	}) {
		close(done)
		return nil
	}
	return ch
}

// terminateSessions ends the database's client sessions, bounded by the
// timeout, and describes the outcome (also logged, and counted when it
// fails).
func (a *Agent) terminateSessions(g *group, trigger string) string {
	ctx, cancel := context.WithTimeout(a.ctx, g.dbTimeout)
	defer cancel()
	n, err := g.dbf.TerminateSessions(ctx)
	if err != nil {
		a.m.dbFenceFailures.WithLabelValues(g.name, stepSessions).Inc()
		a.log.Warn("database fence: terminating client sessions failed (the network fence stops outside clients anyway)",
			"group", g.name, "trigger", trigger, "err", err)
		return "terminating client sessions failed: " + err.Error()
	}
	a.log.Info("database fence: client sessions terminated", "group", g.name, "trigger", trigger, "sessions", n)
	return fmt.Sprintf("%d client sessions terminated", n)
}

// fenceDatabase is the Fence RPC's database step: the network fence
// (which alone decides ok), then the session termination and the
// read-only switch, both started in the background; their outcomes arrive
// on sessions and readOnly (nil if they could not be started: the agent
// is closing). The caller holds g.act.
func (a *Agent) fenceDatabase(g *group, trigger string) (ok bool, detail []string, sessions <-chan string, readOnly <-chan error) {
	if err := a.installDatabaseFence(g, trigger); err != nil {
		detail = append(detail, fmt.Sprintf("database fence (%s) NOT in force: %v", g.dbDesc, err))
	} else {
		ok = true
		detail = append(detail, fmt.Sprintf("database fence (%s) in force", g.dbDesc))
	}
	// Also when the network fence failed: every bit of fencing helps.
	// Sessions first: the read-only switch waits for them (sessDone).
	sessions = a.terminateSessionsAsync(g, trigger)
	readOnly = a.switchReadOnly(g, true)
	return ok, detail, sessions, readOnly
}

// sqlOutcomes describes the outcomes of the SQL steps fenceDatabase
// started: with wait, once both arrived (each is bounded by the timeout)
// or ctx ended; without, as far as they are in now, the others named as
// going on in the background.
func sqlOutcomes(ctx context.Context, sessions <-chan string, readOnly <-chan error, wait bool) []string {
	out := make([]string, 0, 2)
	if sessions == nil {
		out = append(out, "client sessions not terminated (agent closing)")
	} else if d, ok := await(ctx, sessions, wait); ok {
		out = append(out, d)
	} else {
		out = append(out, sessionsPending)
	}
	if readOnly == nil {
		out = append(out, "read-only not attempted (agent closing)")
	} else if err, ok := await(ctx, readOnly, wait); ok {
		out = append(out, readOnlyDetail(err))
	} else {
		out = append(out, readOnlyPending)
	}
	return out
}

// await receives from ch: at once when a value is there, else, with
// wait, once one arrives or ctx ends; false when none was received.
func await[T any](ctx context.Context, ch <-chan T, wait bool) (T, bool) {
	select {
	case v := <-ch:
		return v, true
	default:
	}
	if wait {
		select {
		case v := <-ch:
			return v, true
		case <-ctx.Done():
		}
	}
	var zero T
	return zero, false
}

// switchReadOnly starts switching the database read-only (on) or back,
// on its own goroutine, bounded by the timeout from when it starts: it
// writes a file (ALTER SYSTEM), and a stalled disk must hold up nothing
// else. It first waits for the session termination in flight, if any
// (which would end its connection). Switches run one at a time, and one
// superseded while it waited is skipped, so the last one asked for is the
// last one done. The outcome arrives on the channel; nil if the agent is
// closing.
func (a *Agent) switchReadOnly(g *group, on bool) <-chan error {
	g.mu.Lock()
	g.roGen++
	gen := g.roGen
	g.roOn = on
	sessions := g.sessDone
	g.mu.Unlock()
	ch := make(chan error, 1)
	step, what := stepReadOnly, "default_transaction_read_only = on"
	if !on {
		step, what = stepResetReadOnly, "default_transaction_read_only reset"
	}
	started := a.goBackground(func() {
		if sessions != nil {
			select {
			case <-sessions: // bounded by the timeout
			case <-a.ctx.Done():
			}
		}
		g.roMu.Lock()
		defer g.roMu.Unlock()
		g.mu.Lock()
		stale := g.roGen != gen
		g.mu.Unlock()
		if stale {
			ch <- errSuperseded
			return
		}
		ctx, cancel := context.WithTimeout(a.ctx, g.dbTimeout)
		defer cancel()
		var err error
		if on {
			err = g.dbf.SetReadOnly(ctx)
		} else {
			err = g.dbf.ResetReadOnly(ctx)
		}
		if err != nil {
			a.m.dbFenceFailures.WithLabelValues(g.name, step).Inc()
			a.log.Warn("database fence: read-only switch failed", "group", g.name, "want", what, "err", err)
		} else {
			a.log.Info("database fence: read-only switch done", "group", g.name, "done", what)
		}
		ch <- err
	})
	if !started {
		return nil
	}
	return ch
}

// readOnlyDetail describes a read-only switch's outcome.
func readOnlyDetail(err error) string {
	if err != nil {
		return "read-only failed: " + err.Error()
	}
	return "database read-only (default_transaction_read_only = on)"
}

// unfenceDatabase removes the network fence and, if a fence had been in
// force, switches read-only back off (best effort; with wait, waits for
// that switch, which is bounded). An error means the network fence may
// still be in force. The caller holds g.act.
func (a *Agent) unfenceDatabase(g *group, why string, wait bool) error {
	removed, err := g.dbf.Remove()
	if err != nil {
		a.m.dbFenceFailures.WithLabelValues(g.name, stepUnfence).Inc()
		a.log.Error("database fence: removing the network fence failed", "group", g.name, "why", why, "err", err)
		return err
	}
	g.mu.Lock()
	was := g.dbFenced || removed || g.roOn
	g.dbFenced = false
	g.dbGen++
	g.mu.Unlock()
	a.m.dbFenced.WithLabelValues(g.name).Set(0)
	if !was {
		return nil
	}
	a.log.Warn("database fence lifted", "group", g.name, "why", why, "database_fence", g.dbDesc)
	ch := a.switchReadOnly(g, false)
	if wait && ch != nil {
		<-ch // bounded: each switch is bounded by the timeout
	}
	return nil
}

// maybeCheckRecovery starts the recovery check (checkRecovery) on its own
// goroutine when it is due: every lease_timeout while the database fence
// is in force and the host does not hold the VIP. Called by the loop.
func (a *Agent) maybeCheckRecovery(g *group) {
	if g.dbf == nil {
		return
	}
	g.mu.Lock()
	now := a.now()
	due := g.dbFenced && !g.holding && !g.recoveryRunning && !now.Before(g.recoveryAt)
	if due {
		g.recoveryRunning = true
		g.recoveryAt = now.Add(a.leaseTimeout)
	}
	g.mu.Unlock()
	if due && !a.goBackground(func() { a.checkRecovery(g) }) {
		g.mu.Lock()
		g.recoveryRunning = false
		g.mu.Unlock()
	}
}

// checkRecovery lifts the database fence when the local database answers
// pg_is_in_recovery() = true: a standby takes no writes, and this lets a
// rejoined old primary serve as a standby. A database that cannot be
// reached keeps the fence, and so does a fence installed (again) after
// the check began.
func (a *Agent) checkRecovery(g *group) {
	defer func() {
		g.mu.Lock()
		g.recoveryRunning = false
		g.mu.Unlock()
	}()
	g.mu.Lock()
	gen, fenced := g.dbGen, g.dbFenced
	g.mu.Unlock()
	if !fenced {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, g.dbTimeout)
	in, err := g.dbf.InRecovery(ctx)
	cancel()
	if err != nil {
		a.log.Debug("database fence: recovery check: database not reachable; fence kept", "group", g.name, "err", err)
		return
	}
	if !in {
		return
	}
	g.act.Lock()
	defer g.act.Unlock()
	g.mu.Lock()
	still := g.dbFenced && g.dbGen == gen && !g.holding
	g.mu.Unlock()
	if !still {
		return
	}
	_ = a.unfenceDatabase(g, "the database is a standby (pg_is_in_recovery)", false)
}
