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
	o.httpServer = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 15 * time.Second}
	go func() {
		if err := o.httpServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
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
