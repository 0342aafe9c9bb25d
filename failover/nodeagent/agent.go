package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/failover"
	"github.com/vigilha/vigil/failover/hook"
	"github.com/vigilha/vigil/failover/ratelog"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Option configures New.
type Option func(*options)

type options struct {
	addrs    Addrs
	now      func() time.Time
	dbFencer DatabaseFencerFactory
	gatherer prometheus.Gatherer
	// handshake, idle: the gRPC port's connection deadlines (tests
	// shorten them).
	handshake, idle time.Duration
	// noStartupFence: start open like agents before the startup fence
	// (unit tests of what follows the start).
	noStartupFence bool
}

// WithAddrs replaces the netlink + ARP implementation (tests use a fake).
func WithAddrs(x Addrs) Option { return func(o *options) { o.addrs = x } }

// withClock replaces time.Now (unit tests drive lease expiry by hand).
func withClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// withoutStartupFence starts the agent without the startup database
// fence (tests of the behaviour after the start; the startup fence has
// tests of its own).
func withoutStartupFence() Option { return func(o *options) { o.noStartupFence = true } }

// WithGatherer sets what the metrics_listen endpoint serves. By default
// it is New's registerer when that is also a prometheus.Gatherer (a
// *prometheus.Registry is).
func WithGatherer(g prometheus.Gatherer) Option { return func(o *options) { o.gatherer = g } }

// withConnTimeouts replaces the gRPC port's handshake deadline and idle
// timeout (tests).
func withConnTimeouts(handshake, idle time.Duration) Option {
	return func(o *options) { o.handshake, o.idle = handshake, idle }
}

// Agent is the node agent: it serves vigilv1.NodeAgentServer and enforces
// the lease rule for every configured group. See the package comment.
type Agent struct {
	vigilv1.UnimplementedNodeAgentServer

	cfg          Config
	log          *slog.Logger
	m            *metrics
	addrs        Addrs
	now          func() time.Time
	store        *epochStore
	hooks        *hook.Runner
	quorum       int
	leaseTimeout time.Duration
	observers    map[string]bool
	groups       map[string]*group
	order        []*group
	// tls is the mutual-TLS material (cfg.TLS), nil without TLS. When
	// set, the gRPC server requires observer certificates and the
	// handlers check the caller's identity (authorize).
	tls *tlsconf.Store
	// gatherer is what /metrics serves (nil: no metrics_listen).
	gatherer prometheus.Gatherer
	// handshake, idle: see handshakeTimeout, idleTimeout.
	handshake, idle time.Duration
	// logLimit rate-limits repetitive warnings (refused requests and
	// connections): see warnLimited.
	logLimit *ratelog.Limiter

	ctx    context.Context // cancelled by Close; bounds fence commands
	cancel context.CancelFunc

	bgMu    sync.Mutex // guards closed and wg.Add
	closed  bool
	started bool
	wg      sync.WaitGroup
}

// group is one configured group's state.
//
// Locking: act serialises everything that changes the interface or runs
// the fence command for the group (AddVIP, RemoveVIP, Fence, a lease that
// raises the epoch, the self-fencing reconcile, each GARP packet); mu
// guards the fields below and is never held across netlink calls or
// commands. act is always taken before mu.
type group struct {
	name, member, iface string
	cidr, ip            string
	fence               *hook.Command // nil: no fence command
	// dbf is the database fence (nil: none configured), dbTimeout bounds
	// each of its SQL steps.
	dbf       DatabaseFencer
	dbDesc    string
	dbTimeout time.Duration

	act sync.Mutex
	// roMu serialises the read-only switches of the database (SetReadOnly,
	// ResetReadOnly), which run on their own goroutines; roGen (under mu)
	// lets a switch that was superseded while it waited skip itself.
	roMu sync.Mutex

	mu sync.Mutex
	// highest is the confirmed epoch: persisted, raised only when a
	// quorum of observers' fresh leases carry an epoch at least as high
	// (confirmLocked). tentative, valid until tentativeUntil, is a
	// higher epoch one observer's request raised (tentativeLocked); the
	// epoch enforced is the higher of the two (effectiveLocked).
	highest        uint64
	tentative      uint64
	tentativeUntil time.Time
	tentativeBy    string
	// claims: each configured observer's latest lease epoch, accepted or
	// refused as stale (the quorum rule's input).
	claims map[string]claim
	leases map[string]lease // by configured observer id: its latest accepted lease
	// The AddVIP grant: valid until grantUntil, for grantEpoch only.
	grantUntil time.Time
	grantEpoch uint64
	// startupGrace: the grant is the startup grace for a VIP found on
	// the interface, not an AddVIP; it follows the epoch up while leases
	// of a newer epoch keep naming this member (a freshly installed agent
	// knows no epoch yet).
	startupGrace bool
	// holding: the VIP is on the interface, as far as the agent knows (it
	// is the only one changing it).
	holding bool
	// leasedPrimary: the host was supported as the primary (a quorum of
	// current leases for the enforced epoch named this member, or a valid
	// AddVIP grant) at some point since the last fence or self-fence
	// episode. Losing that support starts a self-fence episode even
	// without the VIP. A standby's agent never gets here.
	leasedPrimary bool
	// A self-fence episode: started when the agent held the VIP or was
	// leased as the primary and lost its support; ends when the VIP is
	// gone, the database fence (if any) is in force and the fence command
	// (if any) succeeded, or when support comes back.
	pendingFence bool
	fenceCmdDone bool
	fenceRetryAt time.Time
	fenceBackoff time.Duration
	// epDBTried: this episode tried the database fence once (then
	// terminated the sessions and started read-only); epDBDone: this
	// episode installed it (until then every reconcile retries).
	epDBTried, epDBDone bool
	// fenced: the last Fence was confirmed or the last self-fence
	// completed, and no AddVIP since.
	fenced bool
	// dbFenced: the database fence is in force (installed and verified, or
	// found at start); dbGen changes whenever it is installed or removed,
	// so that a recovery check does not lift a fence installed after it
	// began.
	dbFenced bool
	dbGen    uint64
	// roGen counts read-only switches asked for; roOn: the last one
	// asked for was "on".
	roGen uint64
	roOn  bool
	// sessDone is closed when the latest session termination (started in
	// the background) has finished; nil before the first. A read-only
	// switch waits for the one in flight when it is asked for: the
	// termination ends every client backend but its own, the switch's
	// connection included.
	sessDone <-chan struct{}
	// The recovery check (see checkRecovery): next due, and running.
	recoveryAt      time.Time
	recoveryRunning bool
	// garpGen changes whenever the VIP is added or removed, so a GARP
	// burst in flight stops once its VIP has been removed.
	garpGen uint64
}

type lease struct {
	epoch   uint64
	primary string
	at      time.Time // receive time, with Go's monotonic clock reading
}

// New checks cfg (applying defaults to a copy), opens data_dir, loads the
// confirmed epochs and looks at which VIPs are already on their interfaces.
// It starts nothing: call Serve (or Register + Start, and Close).
// logger nil discards logs; reg nil registers no metrics.
func New(cfg *Config, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Agent, error) {
	if cfg == nil {
		return nil, errors.New("nodeagent: nil config")
	}
	c := *cfg
	c.Observers = slices.Clone(cfg.Observers)
	c.Groups = slices.Clone(cfg.Groups)
	for i := range c.Groups {
		// The caller's sections stay untouched by the defaults.
		c.Groups[i].DatabaseFence = c.Groups[i].DatabaseFence.clone()
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("nodeagent: invalid configuration: %w", err)
	}
	o := options{addrs: netlinkAddrs{}, now: time.Now, dbFencer: func(group string, cfg DatabaseFence) (DatabaseFencer, error) {
		return NewPostgresFence(group, cfg)
	}, handshake: handshakeTimeout, idle: idleTimeout}
	if g, ok := reg.(prometheus.Gatherer); ok {
		o.gatherer = g
	}
	for _, opt := range opts {
		opt(&o)
	}
	if c.MetricsListen != "" && o.gatherer == nil {
		return nil, errors.New("nodeagent: metrics_listen is set but there is no registry to serve (pass a *prometheus.Registry, or WithGatherer)")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var tlsStore *tlsconf.Store
	if c.TLS.Enabled() {
		st, err := tlsconf.Load(tlsconf.Files{CA: c.TLS.CA, Cert: c.TLS.Cert, Key: c.TLS.Key})
		if err != nil {
			return nil, fmt.Errorf("nodeagent: tls: %w", err)
		}
		// The observers accept only agent certificates from an agent
		// (and an observer certificate here would let this host act as
		// an observer towards the others): refuse to start with another.
		if kind, name := st.Identity(); kind != tlsconf.KindAgent {
			return nil, fmt.Errorf("nodeagent: tls: the certificate in %s is for %s/%s; the node agent needs an %q certificate", c.TLS.Cert, kind, name, tlsconf.KindAgent)
		}
		tlsStore = st
	}
	store, err := openEpochStore(c.DataDir)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{
		cfg:          c,
		log:          logger,
		m:            newMetrics(reg),
		addrs:        o.addrs,
		now:          o.now,
		store:        store,
		hooks:        hook.New(logger.With("component", "fence_command")),
		quorum:       c.QuorumSize(),
		leaseTimeout: c.LeaseTimeout.D(),
		observers:    map[string]bool{},
		groups:       map[string]*group{},
		tls:          tlsStore,
		gatherer:     o.gatherer,
		handshake:    o.handshake,
		idle:         o.idle,
		logLimit:     ratelog.New(logEvery, 1024),
		ctx:          ctx,
		cancel:       cancel,
	}
	for _, id := range c.Observers {
		a.observers[id] = true
	}
	now := a.now()
	for _, gc := range c.Groups {
		p, _ := parseVIP(gc.VIP) // validated
		g := &group{
			name: gc.Name, member: gc.Member, iface: gc.Interface,
			cidr: p.String(), ip: p.Addr().String(),
			leases:  map[string]lease{},
			claims:  map[string]claim{},
			highest: store.get(gc.Name),
		}
		if len(gc.FenceCommand) > 0 {
			g.fence = &hook.Command{Argv: slices.Clone(gc.FenceCommand), Timeout: gc.FenceTimeout.D()}
		}
		if df := gc.DatabaseFence; df != nil {
			if err := a.setupDatabaseFence(g, *df, o.dbFencer); err != nil {
				cancel()
				return nil, fmt.Errorf("nodeagent: %w", err)
			}
		}
		has, err := a.addrs.Has(g.iface, g.cidr)
		if err != nil {
			// Unknown: assume it may be there, so that the lease rule
			// removes it unless the observers confirm this host.
			a.log.Error("cannot tell whether the VIP is on its interface; assuming it is", "group", g.name, "vip", g.cidr, "interface", g.iface, "err", err)
			has = true
		}
		if has {
			// Startup grace: the VIP is already here (the agent was
			// restarted on the primary). Keep it for one lease_timeout,
			// as if granted at the highest known epoch; the observers'
			// leases (every lease_timeout/3) take over from there, or the
			// VIP is removed and the host fenced like after any lease loss.
			g.holding = true
			g.grantUntil = now.Add(a.leaseTimeout)
			g.grantEpoch = g.highest
			g.startupGrace = true
			a.log.Warn("VIP already on its interface at start; keeping it for lease_timeout pending the observers' leases",
				"group", g.name, "vip", g.cidr, "interface", g.iface, "epoch", g.highest, "lease_timeout", a.leaseTimeout)
		} else if g.dbf != nil && !g.dbFenced && !o.noStartupFence && !unsafeNoFence {
			if err := a.startupFence(g); err != nil {
				cancel()
				return nil, fmt.Errorf("nodeagent: %w", err)
			}
		}
		a.m.holding.WithLabelValues(g.name).Set(b2f(g.holding))
		a.m.highestEpoch.WithLabelValues(g.name).Set(float64(g.highest))
		a.m.tentativeEpoch.WithLabelValues(g.name).Set(0)
		a.m.epochJumps.WithLabelValues(g.name)
		a.m.leaseObservers.WithLabelValues(g.name).Set(0)
		a.m.selfFences.WithLabelValues(g.name)
		a.groups[g.name] = g
		a.order = append(a.order, g)
	}
	return a, nil
}

// Config returns the agent's configuration, defaults applied.
func (a *Agent) Config() Config { return a.cfg }

// Register registers the NodeAgent service on s (for a server of the
// caller's, e.g. an in-process one in tests; call Start and Close too).
func (a *Agent) Register(s grpc.ServiceRegistrar) {
	vigilv1.RegisterNodeAgentServer(s, a)
}

// NewGRPCServer returns a gRPC server with the agent and server reflection
// (for grpcurl) registered. With the tls section configured it serves
// mutual TLS and accepts only observer certificates signed by the CA (the
// handshake fails for any other client; the handlers then accept only the
// configured observers' names); without it, it serves plaintext and is
// meant to listen on a network only the observers reach.
//
// Connections are bounded: the TLS handshake and HTTP/2 preface must be
// done within handshakeTimeout (grpc.ConnectionTimeout: the deadline is
// set on the raw connection before the handshake), a connection without
// RPCs is closed after idleTimeout (keepalive MaxConnectionIdle), a peer
// that stops answering pings is dropped, and clients pinging more often
// than every 10s are disconnected (keepalive enforcement). Serve adds the
// cap on concurrent connections (max_connections).
//
// A server of the caller's (Register) must use the same credentials: with
// TLS configured, the handlers refuse calls that did not come over a TLS
// connection with an observer certificate.
func (a *Agent) NewGRPCServer() *grpc.Server {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(64 << 10),
		grpc.MaxConcurrentStreams(128),
		grpc.ConnectionTimeout(a.handshake),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: a.idle, Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if a.tls != nil {
		creds := credentials.NewTLS(a.tls.ServerConfig(tlsconf.KindObserver))
		opts = append(opts, grpc.Creds(handshakeReporter{TransportCredentials: creds, onFail: a.handshakeFailed}))
	}
	s := grpc.NewServer(opts...)
	a.Register(s)
	reflection.Register(s)
	return s
}

// handshakeFailed counts and logs (rate-limited) a connection whose TLS
// handshake failed.
func (a *Agent) handshakeFailed(remote net.Addr, err error) {
	a.m.connRefused.WithLabelValues(connHandshake).Inc()
	a.warnLimited("conn/handshake", "connection refused: TLS handshake failed", "remote", addrString(remote), "err", err)
}

func addrString(addr net.Addr) string {
	if addr == nil {
		return ""
	}
	return addr.String()
}

// Start starts the per-group lease enforcement (one goroutine per group,
// waking every lease_timeout/4 and at the exact moment support expires)
// and, with TLS, the reload of the certificate files on SIGHUP (while it
// runs, SIGHUP no longer terminates the process). Idempotent; Close stops
// them.
func (a *Agent) Start() {
	a.bgMu.Lock()
	start := !a.started && !a.closed
	a.started = true
	a.bgMu.Unlock()
	if !start {
		return
	}
	for _, g := range a.order {
		a.goBackground(func() { a.loop(g) })
	}
	if a.tls != nil {
		a.goBackground(func() { a.tls.WatchSIGHUP(a.ctx, a.log.With("component", "tls")) })
	} else {
		a.log.Warn("INSECURE: the node agent has no tls section: it serves plaintext and trusts EVERY caller that reaches its port "+
			"(anyone there can move the VIP, fence this host or send leases in any configured observer's name). "+
			"Configure tls (ca, cert, key) outside a lab.", "listen", a.cfg.Listen)
	}
	a.log.Info("node agent started", "node", a.cfg.Node, "groups", len(a.order), "observers", a.cfg.Observers,
		"quorum", a.quorum, "lease_timeout", a.leaseTimeout, "tls", a.tls != nil, "max_connections", a.cfg.MaxConnections,
		"metrics_listen", a.cfg.MetricsListen)
}

// Close stops the enforcement loops and GARP bursts, kills a fence command
// still running, and waits for them. VIPs are left as they are: a crash
// would leave them too, and a restarted agent keeps a VIP it finds for one
// lease_timeout (startup grace) and then follows the leases.
func (a *Agent) Close() {
	a.bgMu.Lock()
	a.closed = true
	a.bgMu.Unlock()
	a.cancel()
	a.wg.Wait()
}

// Serve listens on cfg.Listen (and cfg.MetricsListen when set) and serves
// until ctx is done.
func (a *Agent) Serve(ctx context.Context) error {
	lis, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("nodeagent: listen: %w", err)
	}
	var mlis net.Listener
	if a.cfg.MetricsListen != "" {
		if mlis, err = net.Listen("tcp", a.cfg.MetricsListen); err != nil {
			lis.Close()
			return fmt.Errorf("nodeagent: metrics_listen: %w", err)
		}
	}
	return a.ServeListeners(ctx, lis, mlis)
}

// ServeListener is ServeListeners without a metrics listener.
func (a *Agent) ServeListener(ctx context.Context, lis net.Listener) error {
	return a.ServeListeners(ctx, lis, nil)
}

// ServeListeners starts the agent, serves gRPC on lis (at most
// max_connections at once: a connection beyond is closed at once) and,
// when metrics is not nil, GET /metrics on it (with the tls section:
// mutual TLS, any certificate of the CA), until ctx is done; then it
// stops the servers (gracefully, for up to 5s) and closes the agent.
func (a *Agent) ServeListeners(ctx context.Context, lis, metrics net.Listener) error {
	if metrics != nil && a.gatherer == nil {
		lis.Close()
		metrics.Close()
		return errors.New("nodeagent: a metrics listener but no registry to serve (pass a *prometheus.Registry to New, or WithGatherer)")
	}
	s := a.NewGRPCServer()
	a.Start()
	defer a.Close()
	limited := newLimitListener(lis, a.cfg.MaxConnections, func(remote net.Addr) {
		a.m.connRefused.WithLabelValues(connLimit).Inc()
		a.warnLimited("conn/limit", "connection refused: max_connections reached", "remote", addrString(remote), "max_connections", a.cfg.MaxConnections)
	}, func(n int64) { a.m.connections.Set(float64(n)) })
	errc := make(chan error, 2)
	go func() { errc <- s.Serve(limited) }()
	a.log.Info("node agent serving", "addr", lis.Addr().String())
	var hs *http.Server
	if metrics != nil {
		hs = a.metricsServer()
		ml := newLimitListener(metrics, maxMetricsConnections, func(remote net.Addr) {
			a.warnLimited("conn/metrics_limit", "metrics connection refused: too many at once", "remote", addrString(remote), "max", maxMetricsConnections)
		}, nil)
		useTLS := hs.TLSConfig != nil // ServeTLS changes the config: read it here only
		go func() {
			var err error
			if useTLS {
				err = hs.ServeTLS(ml, "", "")
			} else {
				err = hs.Serve(ml)
			}
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
		a.log.Info("node agent serving metrics", "addr", metrics.Addr().String(), "tls", useTLS)
	}
	running := 1
	if hs != nil {
		running++
	}
	var serveErr error
	select {
	case err := <-errc:
		running--
		serveErr = fmt.Errorf("nodeagent: serve: %w", err)
	case <-ctx.Done():
	}
	if hs != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = hs.Shutdown(sctx)
		cancel()
	}
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.Stop()
		<-done
	}
	for ; running > 0; running-- {
		<-errc
	}
	return serveErr
}

// metricsServer is the HTTP server of metrics_listen: GET /metrics of the
// agent's registry, bounded read/write/idle times, and with the tls
// section mutual TLS for any certificate of the CA.
func (a *Agent) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.gatherer, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	hs := &http.Server{
		Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 15 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(a.log.With("component", "metrics").Handler(), slog.LevelDebug),
	}
	if a.tls != nil {
		hs.TLSConfig = a.tls.ServerConfig() // any certificate of the CA
		hs.TLSConfig.NextProtos = []string{"http/1.1"}
	}
	return hs
}

// goBackground runs f on a goroutine Close waits for, unless closed.
func (a *Agent) goBackground(f func()) bool {
	a.bgMu.Lock()
	defer a.bgMu.Unlock()
	if a.closed {
		return false
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
	return true
}

// ---- requests ----

func (a *Agent) count(rpc string, err error) {
	result := resultOK
	if err != nil {
		switch status.Code(err) {
		case codes.FailedPrecondition:
			result = resultStaleEpoch
		case codes.InvalidArgument:
			result = resultInvalid
		case codes.NotFound:
			result = resultNotFound
		case codes.PermissionDenied, codes.Unauthenticated:
			result = resultDenied
		default:
			result = resultError
		}
	}
	a.m.requests.WithLabelValues(rpc, result).Inc()
}

// countStale counts RemoveVIP and Fence: on success, stale says whether
// the request's epoch was below the agent's (acted on, epoch unchanged).
func (a *Agent) countStale(rpc string, stale bool, err error) {
	if err == nil && stale {
		a.m.requests.WithLabelValues(rpc, resultStaleActed).Inc()
		return
	}
	a.count(rpc, err)
}

// authorize checks, when TLS is on, that the caller presented an observer
// certificate whose name is one of the configured observers and, for a
// request made in an observer's name (observer is its observer field,
// checked when matchName), that the certificate is that observer's: an
// observer cannot send a lease, or move the VIP, in another observer's
// name, and a certificate of an observer this agent does not know (e.g.
// of another cluster sharing the CA, or one not yet configured here) can
// do nothing, Status included. The handshake already admits only
// observer certificates of the CA; checking the kind again here also
// covers a server of the caller's (Register) with other credentials.
// Without TLS every caller is trusted (Start says so, loudly). Called
// before anything else, so a refused caller learns nothing about the
// groups and changes nothing.
func (a *Agent) authorize(ctx context.Context, rpc, observer string, matchName bool) error {
	if a.tls == nil {
		return nil
	}
	deny := func(code codes.Code, identity, format string, args ...any) error {
		err := status.Errorf(code, format, args...)
		remote := ""
		if p, ok := peer.FromContext(ctx); ok {
			remote = addrString(p.Addr)
		}
		a.warnLimited("denied/"+rpc+"/"+code.String(), "refused request", "rpc", rpc, "identity", identity, "observer", observer,
			"remote", remote, "err", status.Convert(err).Message())
		return err
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return deny(codes.Unauthenticated, "", "no peer information: TLS is configured and the caller must present an observer certificate")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return deny(codes.Unauthenticated, "", "not a TLS connection: TLS is configured and the caller must present an observer certificate")
	}
	kind, name, err := tlsconf.IdentityOfConn(info.State)
	if err != nil {
		return deny(codes.Unauthenticated, "", "client certificate: %v", err)
	}
	id := kind + "/" + name
	if kind != tlsconf.KindObserver {
		return deny(codes.PermissionDenied, id, "%s may not call %s: only observers may call the node agent", id, rpc)
	}
	if !a.observers[name] {
		return deny(codes.PermissionDenied, id, "%s may not call %s: %q is not one of this agent's configured observers %v", id, rpc, name, a.cfg.Observers)
	}
	if matchName && observer != name {
		return deny(codes.PermissionDenied, id, "%s may not send %s in the name of observer %q: the request's observer must be the certificate's name", id, rpc, observer)
	}
	return nil
}

// lookup validates the fields every epoch-carrying request has. Epoch 0
// is valid: it is a group's epoch before its first failover.
func (a *Agent) lookup(name string) (*group, error) {
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "group is required")
	}
	g := a.groups[name]
	if g == nil {
		return nil, status.Errorf(codes.NotFound, "group %q is not configured on this node agent (node %s)", name, a.cfg.Node)
	}
	return g, nil
}

// persist makes sure the confirmed epoch h is on disk. Callers do not
// hold g.act: a stalled disk must never hold up a fence or the
// self-fencing loop.
func (a *Agent) persist(g *group, h uint64) error {
	if err := a.store.raise(g.name, h); err != nil {
		a.log.Error("cannot persist the confirmed epoch", "group", g.name, "epoch", h, "err", err)
		return status.Errorf(codes.Internal, "group %q: %v", g.name, err)
	}
	return nil
}

func (g *group) setHoldingLocked(a *Agent, v bool) {
	g.holding = v
	a.m.holding.WithLabelValues(g.name).Set(b2f(v))
}

// AddVIP lifts the database fence (if configured and in force), adds the
// group's VIP, announces it with gratuitous ARP and grants the host a
// lease "as if from a quorum" for lease_timeout: the leader calls it only
// after committing the failover's epoch through Raft, so it speaks for a
// quorum; the observers' leases must then keep coming. An epoch below the
// one the agent enforces is refused; one above the confirmed epoch is
// only tentative (see the package comment), and so is the grant.
func (a *Agent) AddVIP(ctx context.Context, req *vigilv1.VIPRequest) (resp *vigilv1.VIPResponse, err error) {
	defer func() { a.count("AddVIP", err) }()
	g, _, unlock, err := a.enter(ctx, "AddVIP", req.GetGroup(), req.GetEpoch(), req.GetObserver(), false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if g.dbf != nil {
		// This host is the primary of the current epoch again (e.g. after
		// an aborted failover): it must take writes.
		if uerr := a.unfenceDatabase(g, "add_vip", true); uerr != nil {
			return nil, status.Errorf(codes.Internal, "group %q: cannot lift the database fence: %v", g.name, uerr)
		}
	}
	changed, aerr := a.addrs.Add(g.iface, g.cidr)
	if aerr != nil {
		a.log.Error("adding the VIP failed", "group", g.name, "vip", g.cidr, "interface", g.iface, "epoch", req.GetEpoch(), "err", aerr)
		return nil, status.Errorf(codes.Internal, "group %q: %v", g.name, aerr)
	}
	g.mu.Lock()
	now := a.now()
	g.setHoldingLocked(a, true)
	g.grantUntil = now.Add(a.leaseTimeout)
	g.grantEpoch = req.GetEpoch() // the enforced epoch: only act holders change it upwards
	g.startupGrace = false
	g.fenced = false
	g.pendingFence = false
	g.leasedPrimary = true // the grant is support as the primary
	g.garpGen++
	gen, h := g.garpGen, a.effectiveLocked(g, now)
	g.mu.Unlock()
	a.log.Info("VIP added", "group", g.name, "vip", g.cidr, "interface", g.iface, "epoch", req.GetEpoch(), "changed", changed, "observer", req.GetObserver())

	// The first gratuitous ARP goes out before the answer (so a completed
	// route step means neighbours were told); the rest of the burst
	// follows in the background and stops if the VIP is removed meanwhile.
	a.announce(g)
	if a.cfg.GARP.Count > 1 {
		a.goBackground(func() { a.garpBurst(g, gen) })
	}
	return &vigilv1.VIPResponse{Changed: changed, HighestEpoch: h}, nil
}

func (a *Agent) announce(g *group) {
	if err := a.addrs.Announce(g.iface, g.ip, 1, 0); err != nil {
		a.m.garp.WithLabelValues(g.name, "failed").Inc()
		a.log.Warn("gratuitous ARP failed; neighbours may keep the old MAC until their entry expires", "group", g.name, "vip", g.ip, "interface", g.iface, "err", err)
		return
	}
	a.m.garp.WithLabelValues(g.name, "sent").Inc()
}

// garpBurst sends the remaining count-1 packets of the burst started by
// the AddVIP that set generation gen.
func (a *Agent) garpBurst(g *group, gen uint64) {
	interval := a.cfg.GARP.Interval.D()
	t := time.NewTimer(interval)
	defer t.Stop()
	for i := 1; i < a.cfg.GARP.Count; i++ {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		g.act.Lock()
		g.mu.Lock()
		current := g.garpGen == gen && g.holding
		g.mu.Unlock()
		if current {
			a.announce(g)
		}
		g.act.Unlock()
		if !current {
			return
		}
		t.Reset(interval)
	}
}

// enter is the common start of AddVIP, RemoveVIP and Fence: check the
// caller, find the group, take its action lock and apply the epoch rule
// (the fencing token): an absurd jump is refused; an epoch above the
// confirmed one raises the tentative epoch; one below the enforced epoch
// is refused, except for fencing requests (RemoveVIP, Fence: removing the
// VIP and fencing are safe at any epoch), which go on with stale set and
// must then neither lift anything nor change the epoch. Nothing is
// persisted here: only a quorum of leases confirms an epoch. On success
// the caller must call unlock.
func (a *Agent) enter(ctx context.Context, rpc, name string, epoch uint64, observer string, fencing bool) (g *group, stale bool, unlock func(), err error) {
	if err := a.authorize(ctx, rpc, observer, true); err != nil {
		return nil, false, nil, err
	}
	g, err = a.lookup(name)
	if err != nil {
		return nil, false, nil, err
	}
	g.act.Lock()
	g.mu.Lock()
	now := a.now()
	a.expireTentativeLocked(g, now)
	err = a.checkJumpLocked(g, epoch, rpc, observer)
	if err == nil {
		switch eff := a.effectiveLocked(g, now); {
		case epoch < eff && !fencing:
			err = a.staleLocked(g, epoch, eff, rpc, observer)
		case epoch < eff:
			stale = true
			a.warnLimited("stale_acted/"+rpc+"/"+g.name+"/"+a.observerKey(observer), "request of a stale epoch: acting on it anyway (removing the VIP or fencing is safe at any epoch), epoch unchanged",
				"rpc", rpc, "group", g.name, "epoch", epoch, "highest_epoch", eff, "observer", observer)
		default:
			a.tentativeLocked(g, epoch, now, rpc, observer)
		}
	}
	g.mu.Unlock()
	if err != nil {
		g.act.Unlock()
		return nil, false, nil, err
	}
	return g, stale, g.act.Unlock, nil
}

// RemoveVIP removes the group's VIP and cancels any AddVIP grant, at
// any epoch (a stale one changes no epoch).
func (a *Agent) RemoveVIP(ctx context.Context, req *vigilv1.VIPRequest) (resp *vigilv1.VIPResponse, err error) {
	var stale bool
	defer func() { a.countStale("RemoveVIP", stale, err) }()
	g, stale, unlock, err := a.enter(ctx, "RemoveVIP", req.GetGroup(), req.GetEpoch(), req.GetObserver(), true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	g.mu.Lock()
	g.grantUntil, g.startupGrace = time.Time{}, false
	g.mu.Unlock()
	changed, derr := a.addrs.Del(g.iface, g.cidr)
	if derr != nil {
		a.log.Error("removing the VIP failed", "group", g.name, "vip", g.cidr, "interface", g.iface, "epoch", req.GetEpoch(), "err", derr)
		return nil, status.Errorf(codes.Internal, "group %q: %v", g.name, derr)
	}
	g.mu.Lock()
	g.setHoldingLocked(a, false)
	g.garpGen++
	h := a.effectiveLocked(g, a.now())
	g.mu.Unlock()
	a.log.Info("VIP removed", "group", g.name, "vip", g.cidr, "interface", g.iface, "epoch", req.GetEpoch(), "changed", changed, "observer", req.GetObserver(), "stale", stale)
	return &vigilv1.VIPResponse{Changed: changed, HighestEpoch: h}, nil
}

// Fence removes the VIP, puts the database fence in force (if
// configured: the port cut off, client sessions terminated, read-only
// attempted) and runs the fence command. Confirmed means the VIP is gone,
// the database fence (if any) is verifiably in force and the command (if
// any) exited 0. The session termination and the read-only switch go on
// in the background, their outcomes logged and counted, unless the
// request sets wait_sql (a switchover): they are not part of the
// confirmation, and on a hung database they would only make the failover
// wait out their timeout. It acts at any epoch: one above the confirmed epoch
// raises the tentative epoch (nothing is persisted, so a stalled disk
// cannot hold a fence up); a stale one fences all the same but changes
// no epoch and leaves a self-fence episode in progress to run its course
// (its answer says so in detail).
func (a *Agent) Fence(ctx context.Context, req *vigilv1.AgentFenceRequest) (resp *vigilv1.AgentFenceResponse, err error) {
	var stale bool
	defer func() { a.countStale("Fence", stale, err) }()
	g, stale, unlock, err := a.enter(ctx, "Fence", req.GetGroup(), req.GetEpoch(), req.GetObserver(), true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if unsafeNoFence {
		// The vigil_unsafe_nofence build for checker tests: claim the
		// fence and leave the VIP, the database and the command alone.
		g.mu.Lock()
		h := a.effectiveLocked(g, a.now())
		g.mu.Unlock()
		a.log.Error("UNSAFE BUILD: Fence answered confirmed without fencing (vigil_unsafe_nofence)",
			"group", g.name, "epoch", req.GetEpoch(), "observer", req.GetObserver())
		return &vigilv1.AgentFenceResponse{
			Confirmed: true, Detail: "UNSAFE BUILD: fencing disabled (vigil_unsafe_nofence)", HighestEpoch: h,
			TrafficFenced: true, DatabaseFenced: g.dbf != nil,
		}, nil
	}
	g.mu.Lock()
	g.grantUntil, g.startupGrace = time.Time{}, false
	if !stale {
		g.pendingFence = false // this fence supersedes a self-fence in progress
		g.leasedPrimary = false
	}
	g.mu.Unlock()

	var detail []string
	gone := true
	if changed, derr := a.addrs.Del(g.iface, g.cidr); derr != nil {
		gone = false
		detail = append(detail, fmt.Sprintf("VIP %s may still be on %s: %v", g.cidr, g.iface, derr))
	} else {
		g.mu.Lock()
		g.setHoldingLocked(a, false)
		g.garpGen++
		g.mu.Unlock()
		if changed {
			detail = append(detail, fmt.Sprintf("VIP %s removed from %s", g.cidr, g.iface))
		} else {
			detail = append(detail, fmt.Sprintf("VIP %s not on %s", g.cidr, g.iface))
		}
	}
	dbOK := true
	var sessions <-chan string
	var readOnly <-chan error
	if g.dbf != nil {
		var d []string
		dbOK, d, sessions, readOnly = a.fenceDatabase(g, triggerFence)
		detail = append(detail, d...)
	} else {
		detail = append(detail, "no database fence configured")
	}
	cmdOK := true
	if g.fence != nil {
		if ferr := a.runFence(g, hook.StepFence, req.GetEpoch(), req.GetObserver()); ferr != nil {
			cmdOK = false
			detail = append(detail, "fence command failed: "+ferr.Error())
		} else {
			detail = append(detail, "fence command succeeded")
		}
	} else {
		detail = append(detail, "no fence command configured")
	}
	if g.dbf != nil {
		detail = append(detail, sqlOutcomes(ctx, sessions, readOnly, req.GetWaitSql())...)
	}
	confirmed := gone && dbOK && cmdOK
	g.mu.Lock()
	if !stale || confirmed {
		g.fenced = confirmed
	}
	dbFenced := g.dbFenced
	h := a.effectiveLocked(g, a.now())
	g.mu.Unlock()
	if stale {
		detail = append([]string{fmt.Sprintf("stale epoch %d (this agent has seen epoch %d): fenced anyway, epoch unchanged", req.GetEpoch(), h)}, detail...)
	}
	d := strings.Join(detail, "; ")
	if confirmed {
		a.log.Info("fenced", "group", g.name, "epoch", req.GetEpoch(), "observer", req.GetObserver(), "detail", d)
	} else {
		a.log.Error("fence not confirmed", "group", g.name, "epoch", req.GetEpoch(), "observer", req.GetObserver(), "detail", d)
	}
	return &vigilv1.AgentFenceResponse{
		Confirmed: confirmed, Detail: d, HighestEpoch: h,
		TrafficFenced: gone, DatabaseFenced: g.dbf != nil && dbOK && dbFenced,
	}, nil
}

// runFence runs the group's fence command with VIGIL_GROUP, VIGIL_EPOCH,
// VIGIL_MEMBER (and VIGIL_STEP, VIGIL_NODE, VIGIL_VIP, VIGIL_INTERFACE,
// VIGIL_OBSERVER, plus the hook runner's VIGIL_OLD_MEMBER = this member),
// bounded by fence_timeout and by the agent's lifetime, not by the
// request's: a fence command is not interrupted because the observer that
// asked stopped waiting.
func (a *Agent) runFence(g *group, step string, epoch uint64, observer string) error {
	extra := map[string]string{
		"VIGIL_MEMBER":    g.member,
		"VIGIL_NODE":      a.cfg.Node,
		"VIGIL_VIP":       g.cidr,
		"VIGIL_INTERFACE": g.iface,
	}
	if namePattern.MatchString(observer) {
		extra["VIGIL_OBSERVER"] = observer
	}
	act := failover.Action{Group: g.name, Epoch: epoch, Old: failover.Member{Name: g.member}}
	return a.hooks.Run(a.ctx, *g.fence, step, act, extra)
}

// Lease records one observer's statement "member P is the primary of
// epoch E" and applies the holding rule at once. Every lease from a
// configured observer (not an absurd jump) is also that observer's claim
// for the quorum rule, even when it is refused as stale: the confirmed
// epoch rises to the quorum-th highest of the fresh claims, and is
// persisted after the rule is applied, without the action lock held.
func (a *Agent) Lease(ctx context.Context, req *vigilv1.LeaseRequest) (resp *vigilv1.LeaseResponse, err error) {
	defer func() { a.count("Lease", err) }()
	if err := a.authorize(ctx, "Lease", req.GetObserver(), true); err != nil {
		return nil, err
	}
	g, err := a.lookup(req.GetGroup())
	if err != nil {
		return nil, err
	}
	obs, epoch := req.GetObserver(), req.GetEpoch()
	if !a.observers[obs] {
		return nil, status.Errorf(codes.InvalidArgument, "group %q: observer %q is not one of the configured observers %v", g.name, obs, a.cfg.Observers)
	}
	if req.GetPrimary() == "" {
		return nil, status.Errorf(codes.InvalidArgument, "group %q: primary is required", g.name)
	}

	// A lease that changes the enforced epoch (a tentative raise, or a
	// quorum confirming a higher one) invalidates the AddVIP grant and the
	// leases of the old epoch: serialise it with AddVIP (the action lock,
	// taken before g.mu) so that a VIP being added under the old epoch is
	// seen, and dropped, here.
	actLocked := false
	defer func() {
		if actLocked {
			g.act.Unlock()
		}
	}()
	var now time.Time
	for {
		g.mu.Lock()
		now = a.now()
		if err := a.checkJumpLocked(g, epoch, "Lease", obs); err != nil {
			g.mu.Unlock()
			return nil, err
		}
		g.claims[obs] = claim{epoch: epoch, at: now}
		if actLocked || (a.quorumEpochLocked(g, now) <= g.highest && epoch <= a.effectiveLocked(g, now)) {
			break
		}
		g.mu.Unlock()
		g.act.Lock()
		actLocked = true
	}
	// g.mu is held.
	a.expireTentativeLocked(g, now)
	raised := a.confirmLocked(g, now)
	var refused error
	if eff := a.effectiveLocked(g, now); epoch < eff {
		refused = a.staleLocked(g, epoch, eff, "Lease", obs)
	} else {
		a.tentativeLocked(g, epoch, now, "Lease", obs)
		if g.startupGrace {
			if req.GetPrimary() == g.member {
				g.grantEpoch = a.effectiveLocked(g, now)
			} else {
				g.grantUntil, g.startupGrace = time.Time{}, false
			}
		}
		g.leases[obs] = lease{epoch: epoch, primary: req.GetPrimary(), at: now}
	}
	act := false
	if refused == nil || raised {
		// Refused and nothing raised: nothing changed, nothing to do.
		ok, supporters, _ := a.supportLocked(g, now)
		a.m.leaseObservers.WithLabelValues(g.name).Set(float64(len(supporters)))
		if ok {
			g.leasedPrimary = true
			if g.pendingFence {
				g.pendingFence = false
				a.log.Info("lease quorum back; pending self-fence cancelled", "group", g.name, "epoch", a.effectiveLocked(g, now), "observers", supporters)
			}
		}
		act = (g.holding || g.leasedPrimary) && !ok
	}
	h, eff := g.highest, a.effectiveLocked(g, now)
	g.mu.Unlock()
	if act {
		// The rule no longer holds (e.g. a higher epoch naming another
		// member): fence now, not at the next tick, and before persisting
		// the epoch (fencing is safe whatever the epoch; a stalled disk
		// must not hold it up).
		if !actLocked {
			g.act.Lock()
			actLocked = true
		}
		a.reconcileLocked(g, "lease")
	}
	if actLocked {
		g.act.Unlock()
		actLocked = false
	}
	if raised {
		if perr := a.persist(g, h); perr != nil {
			return nil, perr
		}
	}
	if refused != nil {
		return nil, refused
	}
	g.mu.Lock()
	holding := g.holding
	g.mu.Unlock()
	return &vigilv1.LeaseResponse{HighestEpoch: eff, Holding: holding, DatabaseFence: g.dbf != nil, LeaseTimeoutMs: a.leaseTimeout.Milliseconds()}, nil
}

// Status reports the agent's view of every group (highest_epoch is the
// epoch it enforces: the confirmed one, or a valid tentative one above
// it). With TLS, any configured observer may ask.
func (a *Agent) Status(ctx context.Context, _ *vigilv1.AgentStatusRequest) (*vigilv1.AgentStatusResponse, error) {
	if err := a.authorize(ctx, "Status", "", false); err != nil {
		a.count("Status", err)
		return nil, err
	}
	resp := &vigilv1.AgentStatusResponse{Node: a.cfg.Node}
	now := a.now()
	for _, g := range a.order {
		g.mu.Lock()
		_, supporters, _ := a.supportLocked(g, now)
		resp.Groups = append(resp.Groups, &vigilv1.AgentGroupStatus{
			Group: g.name, Member: g.member, Vip: g.cidr, Interface: g.iface,
			HighestEpoch: a.effectiveLocked(g, now), Holding: g.holding, LeaseObservers: supporters, Fenced: g.fenced,
			DatabaseFenced: g.dbFenced, DatabaseFence: g.dbDesc,
		})
		g.mu.Unlock()
	}
	a.count("Status", nil)
	return resp, nil
}
