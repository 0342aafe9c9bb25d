// Package cluster runs one vigil observer: Raft (hashicorp/raft with
// raft-boltdb/v2), gossip (hashicorp/memberlist), the leader loop, and the
// gRPC admin and HTTP metrics servers. It is the only package that talks to
// Raft and memberlist.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/vigilha/vigil/cluster/config"
	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/failover"
	"github.com/vigilha/vigil/failover/hook"
	"github.com/vigilha/vigil/failover/viprouter"
	"github.com/vigilha/vigil/fsm"
	"github.com/vigilha/vigil/health"
)

// Options are what New needs besides the config.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// Registry receives the observer's metrics; nil means a new registry.
	Registry *prometheus.Registry
	// WrapStreamLayer, when set, wraps the Raft stream layer (tests use it
	// to cut an observer off the network; TLS will wrap it too).
	WrapStreamLayer func(raft.StreamLayer) raft.StreamLayer
	// LeaderWork runs on the leader only, after the barrier and config sync,
	// under a context cancelled the moment leadership is lost.
	LeaderWork []func(ctx context.Context)
	// AfterFailoverStep, for tests, runs on the leader right after each
	// failover step is committed (e.g. to stop a leader mid-failover).
	AfterFailoverStep func(ctx context.Context, group string, epoch uint64, step string)
	// Now is the clock for command timestamps; nil means time.Now.
	Now func() time.Time
}

// Observer is one running vigil observer.
type Observer struct {
	cfg     *config.Config
	log     *slog.Logger
	now     func() time.Time
	reg     *prometheus.Registry
	metrics *metrics

	fsm       *fsm.FSM
	raftFSM   *raftFSM
	raft      *raft.Raft
	store     *raftboltdb.BoltStore
	transport *raft.NetworkTransport
	gossip    *Gossip
	monitor   *health.Monitor
	tls       *tlsconf.Store
	limiter   *rateLimiter
	control   *failover.Controller
	notifiers []*hook.Notify
	agents    *viprouter.Agents
	leases    *leases
	seen      *seenClock
	bgCancel  context.CancelFunc

	grpcServer *grpc.Server
	grpcLn     net.Listener
	httpServer *http.Server
	httpLn     net.Listener
	peers      *peerClients

	leaderWork []func(ctx context.Context)
	notifyCh   chan bool
	// leaderSince is when this observer last became the Raft leader (its
	// monotonic clock); the lease-expiry fence counts from it.
	leaderSince atomic.Pointer[time.Time]
	stopCh      chan struct{}
	wg          sync.WaitGroup

	shutdownOnce sync.Once
	shutdownErr  error
}

// New starts an observer: it opens the Raft stores in the data directory,
// bootstraps the static observer set on first start only, joins gossip and
// starts serving. On error everything already opened is closed again.
func New(opts Options) (_ *Observer, err error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("start observer: no config")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("start observer: invalid config: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("observer", cfg.NodeID)
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	// Not the named result: the undo closures below need o after a
	// failing "return nil, err" has set the result to nil.
	o := &Observer{
		cfg: cfg, log: logger, now: now, reg: reg,
		metrics:    newMetrics(reg, cfg.NodeID),
		fsm:        fsm.New(),
		leases:     newLeases(),
		seen:       newSeenClock(),
		leaderWork: opts.LeaderWork,
		notifyCh:   make(chan bool, 16),
		// Operators pause, resume and switch over by hand: 5 per second
		// with a burst of 20 is far above that and far below a flood.
		limiter: newRateLimiter(5, 20, now),
		stopCh:  make(chan struct{}),
	}
	// Undo what was started when a later step fails: nothing half-applied.
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	if cfg.TLS.Enabled() {
		o.tls, err = tlsconf.Load(tlsconf.Files{CA: cfg.TLS.CA, Cert: cfg.TLS.Cert, Key: cfg.TLS.Key})
		if err != nil {
			return nil, fmt.Errorf("start observer: tls: %w", err)
		}
	}
	if err := o.startRaft(opts.WrapStreamLayer); err != nil {
		if o.store != nil {
			_ = o.store.Close()
		}
		return nil, err
	}
	closers = append(closers, func() { _ = o.raft.Shutdown().Error(); _ = o.store.Close() })

	keys, err := cfg.GossipKeys()
	if err != nil {
		return nil, fmt.Errorf("start observer: gossip key: %w", err)
	}
	var peers []string
	for _, ob := range cfg.Observers {
		if ob.ID != cfg.NodeID {
			peers = append(peers, ob.Gossip)
		}
	}
	o.gossip, err = newGossip(gossipConfig{
		NodeID: cfg.NodeID, Bind: cfg.Gossip.Bind, Advertise: cfg.Gossip.Advertise,
		Keys: keys, Label: cfg.Gossip.Label, ProbeInterval: cfg.Gossip.ProbeInterval.D(), Peers: peers,
	}, logger.With("component", "gossip"), reg)
	if err != nil {
		return nil, fmt.Errorf("start observer: %w", err)
	}
	closers = append(closers, func() { _ = o.gossip.shutdown(time.Second) })
	reg.MustRegister(newRaftCollector(o.raft, o.gossip.AliveMembers, o.fsm.AppliedIndex), newGroupCollector(o.fsm.Groups))

	ids := make([]string, 0, len(cfg.Observers))
	for _, ob := range cfg.Observers {
		ids = append(ids, ob.ID)
	}
	signer, verifier, learnVoteKeys := o.voteAuth()
	// The controller is built after the monitor (it reads it), and votes
	// may arrive before: until it exists a change wakes nothing.
	var control atomic.Pointer[failover.Controller]
	o.monitor, err = health.NewMonitor(health.MonitorConfig{
		Self: cfg.NodeID, Observers: ids, Quorum: cfg.QuorumSize(), Send: o.gossip.SendToPeers,
		Logger: logger.With("component", "health"), Registerer: reg, Now: now,
		Signer: signer, Verifier: verifier,
		// A changed verdict reaches the failover controller at once, not
		// at its next tick.
		OnChange: func(group string) {
			if c := control.Load(); c != nil {
				c.Wake(group)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("start observer: %w", err)
	}
	kick := o.monitor.Kick
	o.raftFSM.promoted.Store(&kick)
	o.gossip.SetHandler(o.monitor.Receive)
	o.gossip.SetLeaveHandler(o.monitor.Forget)

	set := buildActuators(o, cfg, logger, o.tls)
	acts := set.groups
	o.notifiers, o.agents = set.notifiers, set.agents
	closers = append(closers, o.agents.Close)
	o.control = failover.NewController(failover.Options{
		Self: cfg.NodeID, Log: o, State: o.fsm, Health: o.monitor,
		Actuators: func(group string) (failover.GroupActuators, bool) { a, ok := acts[group]; return a, ok },
		Logger:    logger.With("component", "failover"), Metrics: failover.NewMetrics(reg), Now: now,
		AfterStep: opts.AfterFailoverStep, Seen: o.seen, AgentSelfFenced: o.agentSelfFenced,
	})
	control.Store(o.control)
	o.leaderWork = append(o.leaderWork, o.control.Run)

	var peerCreds credentials.TransportCredentials
	if o.tls != nil {
		peerCreds = credentials.NewTLS(o.tls.ClientConfig("", kindObserver))
	}
	o.peers = newPeerClients(peerCreds)
	closers = append(closers, o.peers.close)
	if err := o.startGRPC(); err != nil {
		return nil, err
	}
	closers = append(closers, func() { o.grpcServer.Stop() })
	if err := o.startHTTP(); err != nil {
		return nil, err
	}

	bg, cancel := context.WithCancel(context.Background())
	o.bgCancel = cancel
	o.wg.Add(5)
	go func() { defer o.wg.Done(); o.leaseLoop(bg) }()
	if o.tls != nil {
		o.wg.Add(1)
		go func() { defer o.wg.Done(); o.tls.WatchSIGHUP(bg, logger.With("component", "tls")) }()
	}
	if learnVoteKeys != nil {
		o.wg.Add(1)
		go func() { defer o.wg.Done(); learnVoteKeys(bg) }()
	}
	go o.monitorLeadership()
	go o.observeLeaders()
	go func() { defer o.wg.Done(); o.planLoop(bg) }()
	go func() {
		defer o.wg.Done()
		if err := o.monitor.Run(bg); err != nil {
			o.log.Error("health monitor stopped", "err", err)
		}
	}()
	logger.Info("observer started",
		"raft", cfg.Raft.Advertise, "gossip", cfg.Gossip.Advertise,
		"grpc", o.grpcLn.Addr().String(), "http", o.httpLn.Addr().String(), "quorum", cfg.QuorumSize())
	return o, nil
}

// startRaft opens the stores and starts Raft; it bootstraps the configured
// observer set only when the data directory holds no Raft state yet.
func (o *Observer) startRaft(wrap func(raft.StreamLayer) raft.StreamLayer) error {
	cfg := o.cfg
	dir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create raft data directory %s: %w", dir, err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return fmt.Errorf("open raft store %s: %w", filepath.Join(dir, "raft.db"), err)
	}
	o.store = store
	hlog := newHCLog(o.log, "raft")
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 3, hlog)
	if err != nil {
		return fmt.Errorf("open raft snapshot store in %s: %w", dir, err)
	}
	// Bounded listener, named peers with TLS, then wrap (transport.go).
	stream, err := o.raftStreamLayer(wrap)
	if err != nil {
		return fmt.Errorf("start raft transport: %w", err)
	}
	o.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 3, Timeout: 5 * time.Second, Logger: hlog,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.Raft.HeartbeatTimeout.D()
	rc.ElectionTimeout = cfg.Raft.ElectionTimeout.D()
	rc.LeaderLeaseTimeout = cfg.Raft.LeaderLeaseTimeout.D()
	rc.CommitTimeout = cfg.Raft.CommitTimeout.D()
	rc.SnapshotInterval = cfg.Raft.SnapshotInterval.D()
	rc.SnapshotThreshold = cfg.Raft.SnapshotThreshold
	rc.NotifyCh = o.notifyCh
	rc.Logger = hlog
	if err := raft.ValidateConfig(rc); err != nil {
		_ = o.transport.Close()
		return fmt.Errorf("raft settings: %w", err)
	}

	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		_ = o.transport.Close()
		return fmt.Errorf("read raft state in %s: %w", dir, err)
	}
	o.raftFSM = newRaftFSM(o.fsm, o.metrics, o.log, o.seen, o.now)
	r, err := raft.NewRaft(rc, o.raftFSM, store, store, snaps, o.transport)
	if err != nil {
		_ = o.transport.Close()
		return fmt.Errorf("start raft: %w", err)
	}
	o.raft = r
	if !existing {
		// Every observer bootstraps the same static set; identical
		// configurations make this safe, and it only ever happens once.
		var servers []raft.Server
		for _, ob := range cfg.Observers {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(ob.ID), Address: raft.ServerAddress(ob.Raft)})
		}
		if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			_ = r.Shutdown().Error()
			return fmt.Errorf("bootstrap raft cluster: %w", err)
		}
		o.log.Info("bootstrapped raft with the configured observers", "observers", len(servers))
	} else {
		o.log.Info("restarting from raft state on disk", "dir", dir)
	}
	return nil
}

// Shutdown stops the observer gracefully: it stops taking requests, stops
// leader work, leaves gossip and shuts Raft down. Safe to call twice.
func (o *Observer) Shutdown(ctx context.Context) error {
	o.shutdownOnce.Do(func() {
		o.log.Info("observer shutting down")
		var errs []error
		close(o.stopCh)
		done := make(chan struct{})
		go func() { o.grpcServer.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			o.grpcServer.Stop()
		}
		if err := o.httpServer.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop http server: %w", err))
		}
		o.peers.close()
		// Stop probing before leaving gossip, so no vote goes out after.
		o.bgCancel()
		if err := o.gossip.shutdown(time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stop gossip: %w", err))
		}
		if err := o.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("stop raft: %w", err))
		}
		// monitorLeadership ends with stopCh and cancels leader work.
		o.wg.Wait()
		o.agents.Close()
		for _, n := range o.notifiers {
			if err := n.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("wait for notify hooks: %w", err))
			}
		}
		if err := o.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft store: %w", err))
		}
		o.shutdownErr = errors.Join(errs...)
		o.log.Info("observer stopped")
	})
	return o.shutdownErr
}

// ID is this observer's node id.
func (o *Observer) ID() string { return o.cfg.NodeID }

// FSM is the observer's replicated state (read-only use).
func (o *Observer) FSM() *fsm.FSM { return o.fsm }

// Monitor is the observer's health pipeline (probes, votes, verdicts).
func (o *Observer) Monitor() *health.Monitor { return o.monitor }

// Gossip is the observer's gossip layer.
func (o *Observer) Gossip() *Gossip { return o.gossip }

// Registry holds the observer's metrics.
func (o *Observer) Registry() *prometheus.Registry { return o.reg }

// GRPCAddr is the address the admin API listens on.
func (o *Observer) GRPCAddr() string { return o.grpcLn.Addr().String() }

// HTTPAddr is the address /metrics and /health listen on.
func (o *Observer) HTTPAddr() string { return o.httpLn.Addr().String() }

// IsLeader reports whether this observer is the Raft leader right now.
func (o *Observer) IsLeader() bool { return o.raft.State() == raft.Leader }

// Leader returns the id and Raft address of the leader this observer
// knows, empty when none.
func (o *Observer) Leader() (id, addr string) {
	a, i := o.raft.LeaderWithID()
	return string(i), string(a)
}

// VerifyLeader checks with a quorum that this observer is still the
// leader; the controller calls it right before fencing and promotion.
func (o *Observer) VerifyLeader(ctx context.Context) error {
	f := o.raft.VerifyLeader()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("verify leadership: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("verify leadership: %w", ctx.Err())
	}
}

// Controller is the failover controller (active on the leader only).
func (o *Observer) Controller() *failover.Controller { return o.control }

// Snapshot forces a Raft snapshot now.
func (o *Observer) Snapshot() error {
	if err := o.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("raft snapshot: %w", err)
	}
	return nil
}

// RaftStats exposes raft's own counters (term, indexes, state).
func (o *Observer) RaftStats() map[string]string { return o.raft.Stats() }
