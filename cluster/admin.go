package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vigilha/vigil/failover"
	"github.com/vigilha/vigil/fsm"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

const (
	// forwardedKey marks a request one observer forwarded to the leader, so
	// that it is never forwarded twice (no loops during an election).
	forwardedKey = "vigil-forwarded-by"
	// peerTimeout bounds every call from one observer to another.
	peerTimeout = 2 * time.Second
	// maxRequestBytes bounds admin requests; they are all tiny.
	maxRequestBytes = 1 << 20
	maxReasonLen    = 512
)

var groupNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// adminServer implements the Admin gRPC service on one observer.
type adminServer struct {
	vigilv1.UnimplementedAdminServer
	o *Observer
}

func (o *Observer) startGRPC() error {
	ln, err := net.Listen("tcp", o.cfg.GRPC.Listen)
	if err != nil {
		return fmt.Errorf("listen for grpc on %s: %w", o.cfg.GRPC.Listen, err)
	}
	o.grpcLn = ln
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(maxRequestBytes), grpc.ConnectionTimeout(10 * time.Second),
		grpc.UnaryInterceptor(o.unaryAuth), grpc.StreamInterceptor(o.streamAuth)}
	if o.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(o.tls.ServerConfig(kindOperator, kindViewer, kindObserver))))
	}
	o.grpcServer = grpc.NewServer(opts...)
	vigilv1.RegisterAdminServer(o.grpcServer, &adminServer{o: o})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(vigilv1.Admin_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(o.grpcServer, hs)
	reflection.Register(o.grpcServer)
	go func() {
		if err := o.grpcServer.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			o.log.Error("grpc server stopped", "err", err)
		}
	}()
	return nil
}

func (s *adminServer) Status(ctx context.Context, req *vigilv1.StatusRequest) (*vigilv1.StatusResponse, error) {
	o := s.o
	self := o.localStatus()
	leaderID, leaderAddr := o.Leader()
	resp := &vigilv1.StatusResponse{
		AnsweredBy: o.cfg.NodeID, LeaderId: leaderID, LeaderRaftAddress: leaderAddr,
		Term: self.Term, LastLogIndex: self.LastLogIndex, CommitIndex: self.CommitIndex, AppliedIndex: self.AppliedIndex,
		Quorum: int32(o.cfg.QuorumSize()),
	}
	gossip := o.gossip.MemberStates()
	resp.Observers = make([]*vigilv1.ObserverStatus, len(o.cfg.Observers))
	var wg sync.WaitGroup
	for i, ob := range o.cfg.Observers {
		if ob.ID == o.cfg.NodeID {
			resp.Observers[i] = self
			continue
		}
		st := &vigilv1.ObserverStatus{Id: ob.ID, RaftAddress: ob.Raft, GossipAddress: ob.Gossip, GrpcAddress: ob.GRPC, RaftRole: "unknown"}
		resp.Observers[i] = st
		if req.GetLocalOnly() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp.Observers[i] = o.askPeer(ctx, st)
		}()
	}
	wg.Wait()
	for _, st := range resp.Observers {
		st.GossipState = gossip[st.Id]
		if st.GossipState == "" {
			st.GossipState = "unknown"
		}
	}
	return resp, nil
}

// askPeer returns the peer's own view of itself, or st with the reason it
// could not be asked.
func (o *Observer) askPeer(ctx context.Context, st *vigilv1.ObserverStatus) *vigilv1.ObserverStatus {
	c, err := o.peers.client(st.GrpcAddress)
	if err != nil {
		st.Error = err.Error()
		return st
	}
	cctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	r, err := c.Status(cctx, &vigilv1.StatusRequest{LocalOnly: true})
	if err != nil {
		st.Error = status.Convert(err).Message()
		return st
	}
	for _, p := range r.GetObservers() {
		if p.GetId() == st.Id {
			return p
		}
	}
	st.Error = fmt.Sprintf("observer at %s answered as %q", st.GrpcAddress, r.GetAnsweredBy())
	return st
}

func (o *Observer) localStatus() *vigilv1.ObserverStatus {
	stats := o.raft.Stats()
	u := func(k string) uint64 { n, _ := strconv.ParseUint(stats[k], 10, 64); return n }
	self, _ := o.cfg.ObserverByID(o.cfg.NodeID)
	leaderID, _ := o.Leader()
	return &vigilv1.ObserverStatus{
		Id: self.ID, RaftAddress: self.Raft, GossipAddress: self.Gossip, GrpcAddress: self.GRPC,
		RaftRole: stateName(o.raft.State()), Term: u("term"), LastLogIndex: u("last_log_index"),
		CommitIndex: u("commit_index"), AppliedIndex: o.fsm.AppliedIndex(), LeaderId: leaderID, Reachable: true,
	}
}

func (s *adminServer) ListGroups(ctx context.Context, _ *vigilv1.ListGroupsRequest) (*vigilv1.ListGroupsResponse, error) {
	return &vigilv1.ListGroupsResponse{Groups: s.o.fsm.Groups(), AppliedIndex: s.o.fsm.AppliedIndex()}, nil
}

func (s *adminServer) GetGroup(ctx context.Context, req *vigilv1.GetGroupRequest) (*vigilv1.GetGroupResponse, error) {
	if err := checkGroupName("name", req.GetName()); err != nil {
		return nil, err
	}
	g, ok := s.o.fsm.Group(req.GetName())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetName())
	}
	resp := &vigilv1.GetGroupResponse{Group: g, AppliedIndex: s.o.fsm.AppliedIndex(), Health: s.o.monitor.Health(req.GetName()),
		AnsweredBy: s.o.cfg.NodeID, ControllerStatus: s.o.control.Status(req.GetName()), Agents: s.o.agentViews(req.GetName())}
	if cands, err := s.o.control.Candidates(req.GetName()); err == nil {
		for _, c := range cands {
			resp.Candidates = append(resp.Candidates, &vigilv1.CandidateStatus{Member: c.Name, Eligible: c.Eligible, Reason: c.Reason,
				Priority: c.Priority, WalLsn: c.LSN, LagBytes: c.LagBytes})
		}
	}
	return resp, nil
}

func (s *adminServer) Switchover(ctx context.Context, req *vigilv1.SwitchoverRequest) (*vigilv1.FailoverResponse, error) {
	if err := checkGroupName("group", req.GetGroup()); err != nil {
		return nil, err
	}
	if req.GetTo() != "" {
		if err := checkGroupName("to", req.GetTo()); err != nil {
			return nil, err
		}
	}
	if !s.o.IsLeader() {
		return forward(ctx, s.o, func(ctx context.Context, c vigilv1.AdminClient) (*vigilv1.FailoverResponse, error) {
			return c.Switchover(ctx, req)
		})
	}
	return s.o.request(ctx, req.GetGroup(), fsm.KindSwitchover, req.GetTo())
}

func (s *adminServer) Failover(ctx context.Context, req *vigilv1.FailoverRequest) (*vigilv1.FailoverResponse, error) {
	if err := checkGroupName("group", req.GetGroup()); err != nil {
		return nil, err
	}
	if req.GetTo() == "" {
		return nil, status.Error(codes.InvalidArgument, "to: required: name the member to promote")
	}
	if err := checkGroupName("to", req.GetTo()); err != nil {
		return nil, err
	}
	if !req.GetForce() {
		return nil, status.Error(codes.InvalidArgument, "force: must be true: a forced failover skips the ODOWN, cooldown and lag checks")
	}
	if !s.o.IsLeader() {
		return forward(ctx, s.o, func(ctx context.Context, c vigilv1.AdminClient) (*vigilv1.FailoverResponse, error) {
			return c.Failover(ctx, req)
		})
	}
	return s.o.request(ctx, req.GetGroup(), fsm.KindForced, req.GetTo())
}

// request runs an operator's failover on the leader and maps its errors.
func (o *Observer) request(ctx context.Context, group, kind, to string) (*vigilv1.FailoverResponse, error) {
	f, err := o.control.Request(ctx, group, kind, to)
	switch {
	case errors.Is(err, failover.ErrNotRunning):
		return nil, status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, failover.ErrRefused):
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	case err != nil:
		return nil, toStatus(err)
	}
	g, _ := o.fsm.Group(group)
	return &vigilv1.FailoverResponse{Failover: f, Group: g}, nil
}

func (s *adminServer) History(ctx context.Context, req *vigilv1.HistoryRequest) (*vigilv1.HistoryResponse, error) {
	if err := checkGroupName("group", req.GetGroup()); err != nil {
		return nil, err
	}
	g, ok := s.o.fsm.Group(req.GetGroup())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "group %q not found", req.GetGroup())
	}
	return &vigilv1.HistoryResponse{Group: req.GetGroup(), Failovers: g.GetFailovers(), Active: g.GetActiveFailover(), Epoch: g.GetEpoch(), Primary: g.GetPrimary()}, nil
}

// Watch streams this observer's health changes: first the current state of
// every member (of the group), then every change, until the client goes.
func (s *adminServer) Watch(req *vigilv1.WatchRequest, stream vigilv1.Admin_WatchServer) error {
	if req.GetGroup() != "" {
		if err := checkGroupName("group", req.GetGroup()); err != nil {
			return err
		}
		if _, ok := s.o.fsm.Group(req.GetGroup()); !ok {
			return status.Errorf(codes.NotFound, "group %q not found", req.GetGroup())
		}
	}
	ch, cancel := s.o.monitor.Subscribe(256)
	defer cancel()
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.o.stopCh:
			return status.Error(codes.Unavailable, "observer shutting down")
		case c := <-ch:
			if req.GetGroup() != "" && c.Health.GetGroup() != req.GetGroup() {
				continue
			}
			ev := &vigilv1.WatchEvent{At: timestamppb.New(c.At), Observer: s.o.cfg.NodeID, PreviousState: c.Previous, Health: c.Health}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

func (s *adminServer) PauseGroup(ctx context.Context, req *vigilv1.PauseGroupRequest) (*vigilv1.PauseGroupResponse, error) {
	if err := checkGroupName("group", req.GetGroup()); err != nil {
		return nil, err
	}
	if len(req.GetReason()) > maxReasonLen {
		return nil, status.Errorf(codes.InvalidArgument, "reason: %d characters, at most %d allowed", len(req.GetReason()), maxReasonLen)
	}
	if !s.o.IsLeader() {
		return forward(ctx, s.o, func(ctx context.Context, c vigilv1.AdminClient) (*vigilv1.PauseGroupResponse, error) {
			return c.PauseGroup(ctx, req)
		})
	}
	g, idx, err := s.o.setPaused(ctx, req.GetGroup(), true, req.GetReason())
	if err != nil {
		return nil, err
	}
	return &vigilv1.PauseGroupResponse{Group: g, Index: idx}, nil
}

func (s *adminServer) ResumeGroup(ctx context.Context, req *vigilv1.ResumeGroupRequest) (*vigilv1.ResumeGroupResponse, error) {
	if err := checkGroupName("group", req.GetGroup()); err != nil {
		return nil, err
	}
	if !s.o.IsLeader() {
		return forward(ctx, s.o, func(ctx context.Context, c vigilv1.AdminClient) (*vigilv1.ResumeGroupResponse, error) {
			return c.ResumeGroup(ctx, req)
		})
	}
	g, idx, err := s.o.setPaused(ctx, req.GetGroup(), false, "")
	if err != nil {
		return nil, err
	}
	return &vigilv1.ResumeGroupResponse{Group: g, Index: idx}, nil
}

// setPaused commits a pause/resume on the leader and returns the group as
// committed, with gRPC status errors.
func (o *Observer) setPaused(ctx context.Context, group string, paused bool, reason string) (*vigilv1.Group, uint64, error) {
	if _, ok := o.fsm.Group(group); !ok {
		return nil, 0, status.Errorf(codes.NotFound, "group %q not found", group)
	}
	res, err := o.Propose(ctx, &vigilv1.Command{Actor: actorFrom(ctx),
		Cmd: &vigilv1.Command_SetPaused{SetPaused: &vigilv1.SetPaused{Group: group, Paused: paused, Reason: reason}}})
	if err != nil {
		return nil, 0, toStatus(err)
	}
	g, _ := o.fsm.Group(group)
	return g, res.Index, nil
}

// forward sends a write to the leader's admin API. A request that was
// already forwarded once is answered with the leader's name instead.
func forward[T any](ctx context.Context, o *Observer, call func(context.Context, vigilv1.AdminClient) (T, error)) (T, error) {
	var zero T
	leaderID, leaderAddr := o.Leader()
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(forwardedKey)) > 0 {
		return zero, toStatus(&NotLeaderError{LeaderID: leaderID, LeaderAddr: leaderAddr})
	}
	if leaderID == "" || raft.ServerID(leaderID) == raft.ServerID(o.cfg.NodeID) {
		o.metrics.forwarded.WithLabelValues("no_leader").Inc()
		return zero, toStatus(&NotLeaderError{})
	}
	ob, ok := o.cfg.ObserverByID(leaderID)
	if !ok {
		o.metrics.forwarded.WithLabelValues("error").Inc()
		return zero, status.Errorf(codes.Unavailable, "leader %s is not in this observer's configured observer list", leaderID)
	}
	c, err := o.peers.clientFor(ob.ID, ob.GRPC)
	if err != nil {
		o.metrics.forwarded.WithLabelValues("error").Inc()
		return zero, status.Errorf(codes.Unavailable, "forward to leader %s at %s: %v", leaderID, ob.GRPC, err)
	}
	// The client's deadline bounds the forwarded call (a switchover waits
	// for the whole failover); without one, a write gets the commit bound.
	cctx, cancel := context.WithCancel(ctx)
	if _, ok := ctx.Deadline(); !ok {
		cctx, cancel = context.WithTimeout(ctx, o.cfg.Raft.ApplyTimeout.D()+peerTimeout)
	}
	defer cancel()
	// The leader honours the actor only from a configured observer's
	// certificate (identity.go).
	cctx = metadata.AppendToOutgoingContext(cctx, forwardedKey, o.cfg.NodeID, actorKey, actorFrom(ctx))
	resp, err := call(cctx, c)
	if err != nil {
		o.metrics.forwarded.WithLabelValues("error").Inc()
		st := status.Convert(err)
		return zero, status.Errorf(st.Code(), "forwarded to leader %s at %s: %s", leaderID, ob.GRPC, st.Message())
	}
	o.metrics.forwarded.WithLabelValues("ok").Inc()
	// Read-your-writes on this observer: answer once the write is applied
	// here too, so the next read through this observer sees it.
	if ix, ok := any(resp).(interface{ GetIndex() uint64 }); ok {
		if err := o.raftFSM.waitApplied(cctx, ix.GetIndex()); err != nil {
			o.log.Warn("forwarded write committed but not yet applied here", "err", err)
		}
	}
	return resp, nil
}

func checkGroupName(field, name string) error {
	if name == "" {
		return status.Errorf(codes.InvalidArgument, "%s: required", field)
	}
	if !groupNameRE.MatchString(name) {
		return status.Errorf(codes.InvalidArgument, "%s: %q is not a group name (lower-case letters, digits, '-', '_'; at most 63)", field, name)
	}
	return nil
}

// toStatus maps internal errors to gRPC status codes.
func toStatus(err error) error {
	var nl *NotLeaderError
	switch {
	case errors.As(err, &nl):
		return status.Error(codes.Unavailable, nl.Error())
	case errors.Is(err, fsm.ErrGroupNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, fsm.ErrFailoverConflict):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, fsm.ErrInvalidCommand):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, raft.ErrEnqueueTimeout):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}
