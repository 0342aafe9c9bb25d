package nodeagent

import "github.com/prometheus/client_golang/prometheus"

// Request results, the `result` label of vigil_agent_requests_total.
const (
	resultOK         = "ok"
	resultStaleEpoch = "stale_epoch"
	resultStaleActed = "stale_epoch_acted" // RemoveVIP, Fence below the agent's epoch: acted on (removing, fencing), epoch unchanged
	resultInvalid    = "invalid"
	resultNotFound   = "not_found"
	resultDenied     = "denied" // TLS on: not an observer, or not in its own name
	resultError      = "error"
)

// Reasons of vigil_agent_connections_refused_total.
const (
	connLimit     = "limit"
	connHandshake = "handshake"
)

type metrics struct {
	holding        *prometheus.GaugeVec
	highestEpoch   *prometheus.GaugeVec
	leaseObservers *prometheus.GaugeVec
	selfFences     *prometheus.CounterVec
	requests       *prometheus.CounterVec
	garp           *prometheus.CounterVec

	dbFenced        *prometheus.GaugeVec
	dbFences        *prometheus.CounterVec
	dbFenceFailures *prometheus.CounterVec

	tentativeEpoch *prometheus.GaugeVec
	epochJumps     *prometheus.CounterVec
	connRefused    *prometheus.CounterVec
	connections    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		holding: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_holding", Help: "1 while this host holds the group's VIP.",
		}, []string{"group"}),
		highestEpoch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_highest_epoch", Help: "The group's confirmed epoch (fencing token): the highest epoch a quorum of observers' leases carried, persisted in data_dir.",
		}, []string{"group"}),
		leaseObservers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_lease_observers", Help: "Observers whose lease naming this host the primary of the highest epoch is current.",
		}, []string{"group"}),
		selfFences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_self_fences_total", Help: "Self-fence episodes: times the agent fenced itself (removed the VIP if held, put the database fence in force if configured, ran the fence command) after losing the observers' lease quorum as the primary or seeing a newer epoch.",
		}, []string{"group"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_requests_total", Help: "Node agent gRPC requests by rpc and result (ok, stale_epoch, stale_epoch_acted, invalid, not_found, denied, error).",
		}, []string{"rpc", "result"}),
		garp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_garp_packets_total", Help: "Gratuitous ARP packets for the group's VIP by result (sent, failed).",
		}, []string{"group", "result"}),
		dbFenced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_database_fenced", Help: "1 while the agent's database fence of the group is in force (the database port cut off except for allow_from and loopback).",
		}, []string{"group"}),
		dbFences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_database_fences_total", Help: "Database fences installed and verified, by trigger (fence: the observers' Fence; self_fence: lease quorum lost; startup: the agent started without the VIP next to a database not known to be a standby).",
		}, []string{"group", "trigger"}),
		dbFenceFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_database_fence_failures_total", Help: "Failed database fence steps, by step (install, sessions, read_only, unfence, reset_read_only).",
		}, []string{"group", "step"}),
		tentativeEpoch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_tentative_epoch", Help: "A newer epoch one observer's request raised, enforced for lease_timeout unless a quorum of leases confirms it; 0 when none.",
		}, []string{"group"}),
		epochJumps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_epoch_jumps_refused_total", Help: "Requests refused because their epoch was absurdly far (more than 1,000,000) above the confirmed epoch.",
		}, []string{"group"}),
		connRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_connections_refused_total", Help: "Connections to the gRPC port closed by the agent, by reason (limit: beyond max_connections; handshake: TLS handshake failed or timed out).",
		}, []string{"reason"}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_agent_connections", Help: "Connections open on the gRPC port.",
		}),
	}
	m.connRefused.WithLabelValues(connLimit)
	m.connRefused.WithLabelValues(connHandshake)
	if reg != nil {
		reg.MustRegister(m.holding, m.highestEpoch, m.leaseObservers, m.selfFences, m.requests, m.garp,
			m.dbFenced, m.dbFences, m.dbFenceFailures, m.tentativeEpoch, m.epochJumps, m.connRefused, m.connections)
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
