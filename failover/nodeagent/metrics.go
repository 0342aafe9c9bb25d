package nodeagent

import "github.com/prometheus/client_golang/prometheus"

// Request results, the `result` label of vigil_agent_requests_total.
const (
	resultOK         = "ok"
	resultStaleEpoch = "stale_epoch"
	resultInvalid    = "invalid"
	resultNotFound   = "not_found"
	resultDenied     = "denied" // TLS on: not an observer, or not in its own name
	resultError      = "error"
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
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		holding: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_holding", Help: "1 while this host holds the group's VIP.",
		}, []string{"group"}),
		highestEpoch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_highest_epoch", Help: "Highest epoch (fencing token) this agent has seen for the group.",
		}, []string{"group"}),
		leaseObservers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_lease_observers", Help: "Observers whose lease naming this host the primary of the highest epoch is current.",
		}, []string{"group"}),
		selfFences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_self_fences_total", Help: "Self-fence episodes: times the agent fenced itself (removed the VIP if held, put the database fence in force if configured, ran the fence command) after losing the observers' lease quorum as the primary or seeing a newer epoch.",
		}, []string{"group"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_requests_total", Help: "Node agent gRPC requests by rpc and result (ok, stale_epoch, invalid, not_found, denied, error).",
		}, []string{"rpc", "result"}),
		garp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_garp_packets_total", Help: "Gratuitous ARP packets for the group's VIP by result (sent, failed).",
		}, []string{"group", "result"}),
		dbFenced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_agent_database_fenced", Help: "1 while the agent's database fence of the group is in force (the database port cut off except for allow_from and loopback).",
		}, []string{"group"}),
		dbFences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_database_fences_total", Help: "Database fences installed and verified, by trigger (fence: the observers' Fence; self_fence: lease quorum lost).",
		}, []string{"group", "trigger"}),
		dbFenceFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_agent_database_fence_failures_total", Help: "Failed database fence steps, by step (install, sessions, read_only, unfence, reset_read_only).",
		}, []string{"group", "step"}),
	}
	if reg != nil {
		reg.MustRegister(m.holding, m.highestEpoch, m.leaseObservers, m.selfFences, m.requests, m.garp,
			m.dbFenced, m.dbFences, m.dbFenceFailures)
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
