package failover

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Metrics are the controller's Prometheus metrics.
type Metrics struct {
	failovers     *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	stepDuration  *prometheus.HistogramVec
	fences        *prometheus.CounterVec
	fenceFailures *prometheus.CounterVec
	noCandidate   *prometheus.CounterVec
	eligible      *prometheus.GaugeVec
	stepFailures  *prometheus.CounterVec
	refences      *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_failovers_total", Help: "Failovers run by this observer as leader, by group, kind (failover, switchover, forced) and result (completed, aborted, vetoed).",
		}, []string{"group", "kind", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vigil_failover_duration_seconds", Help: "Time from committing a failover's intent to its completion, by kind.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 5, 10, 30, 60},
		}, []string{"kind"}),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vigil_failover_step_duration_seconds", Help: "Time taken by each failover step (fenced, promoted, rerouted, standbys_repointed) before its commit.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"step"}),
		fences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_fence_total", Help: "Fencing of old primaries, by group and result (confirmed, unconfirmed).",
		}, []string{"group", "result"}),
		fenceFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_fence_failures_total", Help: "Failovers stopped because no fence method confirmed (fence: strict). Page someone.",
		}, []string{"group"}),
		noCandidate: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_failover_no_candidate_total", Help: "Leader ticks on which the primary was ODOWN but no standby was eligible.",
		}, []string{"group"}),
		eligible: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_candidate_eligible", Help: "1 if the member may be promoted automatically now, as the leader judged it last.",
		}, []string{"group", "member"}),
		stepFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_failover_step_failures_total", Help: "Failover steps recorded as failed after their retry budget (e.g. no router could move the traffic), by group and step.",
		}, []string{"group", "step"}),
		refences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_refences_total", Help: "Members fenced again because a fresh vote saw them take writes while another member is primary, by group, member and result.",
		}, []string{"group", "member", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m.failovers, m.duration, m.stepDuration, m.fences, m.fenceFailures, m.noCandidate, m.eligible, m.stepFailures, m.refences)
	}
	return m
}

func (m *Metrics) setEligible(group, member string, ok bool) {
	v := 0.0
	if ok {
		v = 1
	}
	m.eligible.WithLabelValues(group, member).Set(v)
}

func timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
