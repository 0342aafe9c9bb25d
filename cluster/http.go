package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigilha/vigil/fsm"
)

func (o *Observer) startHTTP() error {
	ln, err := net.Listen("tcp", o.cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("listen for http on %s: %w", o.cfg.HTTP.Listen, err)
	}
	o.httpLn = ln
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{Registry: o.reg, Timeout: 10 * time.Second}))
	mux.HandleFunc("GET /health", o.handleHealth)
	mux.HandleFunc("GET /primary/{group}/{member}", o.handlePrimary)
	mux.HandleFunc("GET /replica/{group}/{member}", o.handleReplica)
	o.httpServer = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 15 * time.Second}
	if o.cfg.HTTP.TLS {
		// Any certificate of the cluster's CA may read metrics and roles.
		o.httpServer.TLSConfig = o.tls.ServerConfig()
		o.httpServer.TLSConfig.NextProtos = []string{"http/1.1"}
	}
	go func() {
		var err error
		if o.cfg.HTTP.TLS {
			err = o.httpServer.ServeTLS(ln, "", "")
		} else {
			err = o.httpServer.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("http server stopped", "err", err)
		}
	}()
	return nil
}

// handleHealth answers 200 when this observer is part of a working Raft
// cluster (it knows a leader), 503 otherwise; load balancers and probes
// use it.
func (o *Observer) handleHealth(w http.ResponseWriter, _ *http.Request) {
	leaderID, _ := o.Leader()
	state := o.raft.State()
	healthy := leaderID != "" && (state == raft.Leader || state == raft.Follower)
	w.Header().Set("Content-Type", "application/json")
	if !healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"observer": o.cfg.NodeID, "raft_state": stateName(state), "leader": leaderID,
		"healthy": healthy, "applied_index": o.fsm.AppliedIndex(),
	})
}

// handlePrimary answers 200 only for the current primary of the current
// epoch that a quorum of fresh votes sees up as a writable primary, for
// load balancers that route by health check. It answers 503 while a
// failover is between its intent and the promotion (the old primary is
// being fenced), for a primary that is down or fenced, and on an observer
// that knows no leader (its state may be stale: it may be on the minority
// side of a partition).
func (o *Observer) handlePrimary(w http.ResponseWriter, r *http.Request) {
	group, member := r.PathValue("group"), r.PathValue("member")
	g, ok := o.fsm.Group(group)
	if !ok {
		roleAnswer(w, http.StatusNotFound, "unknown group "+group)
		return
	}
	leader, _ := o.Leader()
	switch {
	case leader == "":
		roleAnswer(w, http.StatusServiceUnavailable, "this observer knows no leader; its view may be stale")
	case g.GetPrimary() != member:
		roleAnswer(w, http.StatusServiceUnavailable, fmt.Sprintf("%s is not the primary of %s (epoch %d: %s)", member, group, g.GetEpoch(), g.GetPrimary()))
	case g.GetActiveFailover() != nil && !fsm.HasStep(g.GetActiveFailover(), fsm.StepPromoted):
		roleAnswer(w, http.StatusServiceUnavailable, fmt.Sprintf("failover of epoch %d in progress", g.GetActiveFailover().GetEpoch()))
	case !o.monitor.RoutablePrimary(group, member):
		// The state alone is not enough: a primary that is down, fenced
		// or not yet seen writable by a quorum is not routed to.
		roleAnswer(w, http.StatusServiceUnavailable, fmt.Sprintf("%s is the primary of %s (epoch %d) but a quorum of fresh votes does not see it up as a writable primary", member, group, g.GetEpoch()))
	default:
		roleAnswer(w, http.StatusOK, fmt.Sprintf("%s is the primary of %s (epoch %d)", member, group, g.GetEpoch()))
	}
}

// handleReplica answers 200 for a member that is not the primary and that
// this observer sees up as a standby.
func (o *Observer) handleReplica(w http.ResponseWriter, r *http.Request) {
	group, member := r.PathValue("group"), r.PathValue("member")
	g, ok := o.fsm.Group(group)
	if !ok {
		roleAnswer(w, http.StatusNotFound, "unknown group "+group)
		return
	}
	if g.GetPrimary() == member {
		roleAnswer(w, http.StatusServiceUnavailable, member+" is the primary")
		return
	}
	for _, h := range o.monitor.Health(group) {
		if h.GetMember() == member {
			if h.GetState() == "up" && h.GetRoleSeen() == "standby" {
				roleAnswer(w, http.StatusOK, member+" is an up standby")
			} else {
				roleAnswer(w, http.StatusServiceUnavailable, fmt.Sprintf("%s: %s, seen as %s", member, h.GetSummary(), h.GetRoleSeen()))
			}
			return
		}
	}
	roleAnswer(w, http.StatusNotFound, "unknown member "+member)
}

func roleAnswer(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}
