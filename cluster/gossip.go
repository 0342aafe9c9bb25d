package cluster

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// MessageHandler receives one gossip user message. It must not block and
// must not keep msg beyond the call unless it copies it.
type MessageHandler func(msg []byte)

// gossipConfig is what the gossip layer needs from the observer's config.
type gossipConfig struct {
	NodeID    string
	Bind      string
	Advertise string
	// Keys are the encryption keys, primary first (see config.GossipKeys).
	Keys          [][]byte
	Label         string
	ProbeInterval time.Duration
	Peers         []string // gossip addresses of the other observers
}

// Gossip is the observers' memberlist: who is alive, and the channel for
// broadcasting small messages (health votes) to every observer.
type Gossip struct {
	ml     *memberlist.Memberlist
	queue  *memberlist.TransmitLimitedQueue
	log    *slog.Logger
	peers  []string
	stopCh chan struct{}
	wg     sync.WaitGroup

	mu      sync.RWMutex
	handler MessageHandler
	onLeave func(name string)
	// members is our own copy of the membership, kept by the event
	// callbacks (memberlist calls them under its node lock). Reading the
	// *Node values Members() returns races with memberlist updating them
	// (hashicorp/memberlist#306), so nothing else reads those.
	members map[string]memberCopy

	received, dropped, sendErrors prometheus.Counter
	packetErrors                  *prometheus.CounterVec
	mlog                          *memberlistLog
}

type memberCopy struct {
	addr  net.IP
	port  uint16
	state string
}

func (g *Gossip) setMember(n *memberlist.Node, state string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.members == nil {
		g.members = map[string]memberCopy{}
	}
	g.members[n.Name] = memberCopy{addr: append(net.IP(nil), n.Addr...), port: n.Port, state: state}
}

func (g *Gossip) memberCopies() map[string]memberCopy {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := make(map[string]memberCopy, len(g.members))
	for k, v := range g.members {
		out[k] = v
	}
	return out
}

// gossipDelegate connects memberlist callbacks to Gossip.
type gossipDelegate struct{ g *Gossip }

func (d gossipDelegate) NodeMeta(int) []byte { return nil }

func (d gossipDelegate) NotifyMsg(b []byte) {
	d.g.mu.RLock()
	h := d.g.handler
	d.g.mu.RUnlock()
	if h == nil {
		d.g.dropped.Inc()
		return
	}
	d.g.received.Inc()
	// memberlist reuses b after we return: hand over a copy.
	h(append([]byte(nil), b...))
}

func (d gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.g.queue.GetBroadcasts(overhead, limit)
}
func (d gossipDelegate) LocalState(bool) []byte              { return nil }
func (d gossipDelegate) MergeRemoteState(buf []byte, _ bool) {}

func splitHostPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", portStr, err)
	}
	return host, port, nil
}

func newGossip(cfg gossipConfig, log *slog.Logger, reg prometheus.Registerer) (*Gossip, error) {
	g := &Gossip{
		log:    log,
		peers:  cfg.Peers,
		stopCh: make(chan struct{}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_gossip_messages_received_total",
			Help: "Gossip user messages received from other observers.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_gossip_messages_unhandled_total",
			Help: "Gossip user messages received before any handler was installed.",
		}),
		sendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vigil_gossip_send_errors_total",
			Help: "Gossip user messages that could not be sent to a peer.",
		}),
		packetErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_gossip_packet_errors_total",
			Help: "Warnings and errors memberlist reported about gossip packets and streams (bad label, undecryptable, malformed, other), " +
				"each counted even when its log line was suppressed by the rate limit.",
		}, []string{"kind"}),
	}
	for _, k := range []string{"label", "decrypt", "malformed", "other"} {
		g.packetErrors.WithLabelValues(k)
	}
	g.mlog = newMemberlistLog(log, g.packetErrors, time.Now)
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeID
	host, port, err := splitHostPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip bind %q: %w", cfg.Bind, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	ahost, aport, err := splitHostPort(cfg.Advertise)
	if err != nil {
		return nil, fmt.Errorf("gossip advertise %q: %w", cfg.Advertise, err)
	}
	mc.AdvertiseAddr, mc.AdvertisePort = ahost, aport
	kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip keyring: %w", err)
	}
	mc.Keyring = kr
	mc.Label = cfg.Label
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
		mc.ProbeTimeout = cfg.ProbeInterval / 2
	}
	mc.Logger = g.mlog.logger()
	mc.Delegate = gossipDelegate{g: g}
	mc.Events = gossipEvents{g: g}
	g.queue = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return g.ml.NumMembers() }, RetransmitMult: mc.RetransmitMult}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.Bind, err)
	}
	g.ml = ml
	for _, c := range []prometheus.Collector{g.received, g.dropped, g.sendErrors, g.packetErrors} {
		if err := reg.Register(c); err != nil {
			_ = ml.Shutdown()
			return nil, fmt.Errorf("register gossip metrics: %w", err)
		}
	}
	g.wg.Add(2)
	go g.joinLoop()
	go g.logFlushLoop()
	return g, nil
}

// logFlushLoop writes the rate-limited memberlist log's due "suppressed N"
// lines, also after a flood has stopped.
func (g *Gossip) logFlushLoop() {
	defer g.wg.Done()
	t := time.NewTicker(memberlistLogSummaryEvery / 2)
	defer t.Stop()
	for {
		select {
		case <-g.stopCh:
			g.mlog.flush()
			return
		case <-t.C:
			g.mlog.flush()
		}
	}
}

// joinLoop (re)joins observers that are not alive in our member list: at
// start the others may not be up yet, and after a long partition memberlist
// stops gossiping to the dead on its own.
func (g *Gossip) joinLoop() {
	defer g.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if missing := g.missingPeers(); len(missing) > 0 {
			if n, err := g.ml.Join(missing); err != nil && n == 0 {
				g.log.Debug("gossip join: no peer answered yet", "peers", missing, "err", err)
			}
		}
		select {
		case <-g.stopCh:
			return
		case <-t.C:
		}
	}
}

func (g *Gossip) missingPeers() []string {
	alive := map[string]bool{}
	for _, m := range g.memberCopies() {
		if m.state == "alive" {
			alive[net.JoinHostPort(m.addr.String(), strconv.Itoa(int(m.port)))] = true
		}
	}
	var missing []string
	for _, p := range g.peers {
		if !alive[p] {
			missing = append(missing, p)
		}
	}
	return missing
}

// SetHandler installs the receiver of gossip user messages.
func (g *Gossip) SetHandler(h MessageHandler) {
	g.mu.Lock()
	g.handler = h
	g.mu.Unlock()
}

// SetLeaveHandler installs what to do when an observer leaves or is
// declared dead by gossip.
func (g *Gossip) SetLeaveHandler(f func(name string)) {
	g.mu.Lock()
	g.onLeave = f
	g.mu.Unlock()
}

// SendToPeers sends msg once, best effort (UDP), to every other live
// observer. Votes are state, not events: a lost packet is superseded by
// the next refresh, so no retransmission is needed.
func (g *Gossip) SendToPeers(msg []byte) {
	self := g.ml.LocalNode().Name
	for name, m := range g.memberCopies() {
		if name == self || m.state != "alive" {
			continue
		}
		if err := g.ml.SendBestEffort(&memberlist.Node{Name: name, Addr: m.addr, Port: m.port}, msg); err != nil {
			g.sendErrors.Inc()
			g.log.Debug("gossip send", "to", name, "err", err)
		}
	}
}

// Broadcast queues msg for gossip to every observer. It must fit one UDP
// packet (about 1400 bytes with memberlist's overhead).
func (g *Gossip) Broadcast(msg []byte) {
	g.queue.QueueBroadcast(simpleBroadcast(append([]byte(nil), msg...)))
}

// AliveMembers counts observers gossip sees alive, this one included.
func (g *Gossip) AliveMembers() int {
	n := 0
	for _, m := range g.memberCopies() {
		if m.state == "alive" {
			n++
		}
	}
	return n
}

// MemberStates maps observer id to its gossip state (alive, suspect, dead, left).
func (g *Gossip) MemberStates() map[string]string {
	out := map[string]string{}
	for name, m := range g.memberCopies() {
		out[name] = m.state
	}
	return out
}

func memberStateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	default:
		return "unknown"
	}
}

// shutdown leaves the gossip cluster politely, then stops.
func (g *Gossip) shutdown(timeout time.Duration) error {
	close(g.stopCh)
	g.wg.Wait()
	if err := g.ml.Leave(timeout); err != nil {
		g.log.Warn("gossip leave", "err", err)
	}
	return g.ml.Shutdown()
}

// gossipEvents forwards membership changes.
type gossipEvents struct{ g *Gossip }

func (e gossipEvents) NotifyJoin(n *memberlist.Node) {
	e.g.setMember(n, "alive")
	e.g.log.Info("gossip: observer joined", "peer", n.Name)
}
func (e gossipEvents) NotifyUpdate(n *memberlist.Node) { e.g.setMember(n, memberStateName(n.State)) }
func (e gossipEvents) NotifyLeave(n *memberlist.Node) {
	e.g.setMember(n, memberStateName(n.State))
	e.g.log.Info("gossip: observer left or failed", "peer", n.Name)
	e.g.mu.RLock()
	f := e.g.onLeave
	e.g.mu.RUnlock()
	if f != nil {
		f(n.Name)
	}
}

type simpleBroadcast []byte

func (b simpleBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b simpleBroadcast) Message() []byte                       { return b }
func (b simpleBroadcast) Finished()                             {}
