package health

import (
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// monitorMetrics are the health pipeline's Prometheus metrics. Labels stay
// within group, member, observer and small fixed sets.
type monitorMetrics struct {
	probeDuration   *prometheus.HistogramVec
	probeErrors     *prometheus.CounterVec
	lagBytes        *prometheus.GaugeVec
	lagSeconds      *prometheus.GaugeVec
	verdict         *prometheus.GaugeVec
	voteAge         *prometheus.GaugeVec
	odown           *prometheus.GaugeVec
	downVotes       *prometheus.GaugeVec
	roguePrimary    *prometheus.GaugeVec
	heartbeatFails  *prometheus.CounterVec
	writeStalled    *prometheus.GaugeVec
	packetsSent     prometheus.Counter
	votesSent       prometheus.Counter
	packetsReceived prometheus.Counter
	votesReceived   prometheus.Counter
	dropped         *prometheus.CounterVec
	encodeErrors    prometheus.Counter
	authenticated   prometheus.Gauge
	watchDropped    prometheus.Counter
}

// dropReasons are the values of vigil_gossip_votes_dropped_total's reason.
var dropReasons = []string{"malformed", "oversized", "self", "unknown_observer", "stale_sequence",
	"unsigned", "bad_signature", "unverified", "sequence_ahead", "replayed"}

func newMonitorMetrics(reg prometheus.Registerer) (*monitorMetrics, error) {
	gm := []string{"group", "member"}
	m := &monitorMetrics{
		probeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vigil_probe_duration_seconds", Help: "Duration of this observer's probes, by group.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"group"}),
		probeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_probe_errors_total", Help: "Failed probes by this observer, by kind (timeout, refused, dns, tls, auth, status, protocol, other, write_stalled).",
		}, []string{"group", "member", "kind"}),
		lagBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_replication_lag_bytes", Help: "A standby's received-but-not-replayed WAL, as this observer last saw it.",
		}, gm),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_replication_lag_seconds", Help: "Age of a standby's last replayed transaction, as this observer last saw it.",
		}, gm),
		verdict: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_member_verdict", Help: "Each observer's latest fresh verdict about a member as known here: 1 up, 0 down, -1 none/stale/unknown.",
		}, []string{"group", "member", "observer"}),
		voteAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_vote_age_seconds", Help: "Age of each observer's latest vote about a member, as known here.",
		}, []string{"group", "member", "observer"}),
		odown: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_member_odown", Help: "1 while a quorum of observers has held the member down for down_after (ODOWN).",
		}, gm),
		downVotes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_member_down_votes", Help: "Fresh down votes about a member.",
		}, gm),
		roguePrimary: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_rogue_primary", Help: "1 while a fresh vote sees a member the replicated state expects to be a standby answer as a writable primary (it is fenced again and never routed), 0 otherwise.",
		}, gm),
		heartbeatFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_heartbeat_write_failures_total", Help: "Heartbeat writes (write_stall_after) by this observer to a primary that failed, by kind: timeout (and protocol) count toward a write stall, auth or other are answered errors such as missing privileges.",
		}, []string{"group", "member", "kind"}),
		writeStalled: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vigil_write_stalled_seconds", Help: "How long this observer's heartbeat writes to a primary have been failing (0 while they commit); at the group's write_stall_after the primary is voted down.",
		}, gm),
		packetsSent:     prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_gossip_vote_packets_sent_total", Help: "Vote packets this observer sent to its peers (each packet counted once, not per peer)."}),
		votesSent:       prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_gossip_votes_sent_total", Help: "Own votes sent by gossip."}),
		packetsReceived: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_gossip_vote_packets_received_total", Help: "Well-formed vote packets received from other observers."}),
		votesReceived:   prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_gossip_votes_received_total", Help: "Votes from other observers stored (newer than what was known)."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_gossip_votes_dropped_total", Help: "Vote packets or votes dropped, by reason: packets malformed, oversized, self (echo), unknown_observer, " +
				"unsigned, bad_signature (not the named observer's), unverified (its certificate not known yet), sequence_ahead (implausibly far ahead of the clock), " +
				"replayed (a signed batch already accepted); single votes stale_sequence (not newer than the stored one).",
		}, []string{"reason"}),
		encodeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_gossip_vote_encode_errors_total", Help: "Flushes of own votes that could not be encoded or signed (the votes were not sent)."}),
		authenticated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vigil_gossip_votes_authenticated", Help: "1 when vote batches are signed and only batches signed by the observer they name are accepted (TLS), 0 when votes are not authenticated per observer.",
		}),
		watchDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "vigil_watch_events_dropped_total", Help: "Health changes not delivered to a slow watch subscriber."}),
	}
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.probeDuration, m.probeErrors, m.lagBytes, m.lagSeconds, m.verdict, m.voteAge,
		m.odown, m.downVotes, m.roguePrimary, m.heartbeatFails, m.writeStalled, m.packetsSent, m.votesSent, m.packetsReceived, m.votesReceived, m.dropped,
		m.encodeErrors, m.authenticated, m.watchDropped} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register health metrics: %w", err)
		}
	}
	return m, nil
}

func (m *monitorMetrics) observeProbe(group, member string, r Result) {
	m.probeDuration.WithLabelValues(group).Observe(r.Latency.Seconds())
	if r.Verdict == VerdictDown {
		kind := string(r.ErrKind)
		if kind == "" {
			kind = string(KindOther)
		}
		m.probeErrors.WithLabelValues(group, member, kind).Inc()
	}
	if r.Role == RoleStandby && r.Verdict == VerdictUp {
		m.lagBytes.WithLabelValues(group, member).Set(float64(r.LagBytes))
		m.lagSeconds.WithLabelValues(group, member).Set(r.LagSeconds)
	}
	switch hb := r.Heartbeat; {
	case hb.Attempted:
		if hb.Err != "" {
			kind := string(hb.ErrKind)
			if kind == "" {
				kind = string(KindOther)
			}
			m.heartbeatFails.WithLabelValues(group, member, kind).Inc()
		}
		m.writeStalled.WithLabelValues(group, member).Set(hb.StalledFor.Seconds())
	case r.Verdict == VerdictUp:
		// Seen as a standby or read-only primary (or the check is off):
		// nothing is stalling, and a demoted primary must not keep
		// showing its last stall.
		m.writeStalled.DeleteLabelValues(group, member)
	}
}

func (m *monitorMetrics) observeEval(h *vigilv1.MemberHealth, votes []Vote, p Params, now time.Time) {
	g, mem := h.GetGroup(), h.GetMember()
	odown := 0.0
	if h.GetOdown() {
		odown = 1
	}
	m.odown.WithLabelValues(g, mem).Set(odown)
	m.downVotes.WithLabelValues(g, mem).Set(float64(h.GetDownVotes()))
	rogue := 0.0
	if h.GetRoguePrimary() {
		rogue = 1
	}
	m.roguePrimary.WithLabelValues(g, mem).Set(rogue)
	for _, v := range votes {
		if !slices.Contains(p.Observers, v.Observer) {
			continue
		}
		val := -1.0
		if fresh(v.ObservedAt, now, p.StaleAfter) {
			switch v.Verdict {
			case VerdictUp:
				val = 1
			case VerdictDown:
				val = 0
			}
		}
		m.verdict.WithLabelValues(g, mem, v.Observer).Set(val)
		m.voteAge.WithLabelValues(g, mem, v.Observer).Set(now.Sub(v.ObservedAt).Seconds())
	}
}

func (m *monitorMetrics) forgetMember(group, member string, observers []string) {
	for _, vec := range []*prometheus.GaugeVec{m.lagBytes, m.lagSeconds, m.odown, m.downVotes, m.roguePrimary, m.writeStalled} {
		vec.DeleteLabelValues(group, member)
	}
	for _, o := range observers {
		m.verdict.DeleteLabelValues(group, member, o)
		m.voteAge.DeleteLabelValues(group, member, o)
	}
}
