package nodeagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/failover/nodeagent/nodeagenttest"
	vigilv1 "github.com/vigilha/vigil/proto/vigil/v1"
)

// Fuzz input format. The first byte selects the mode: odd, the agent has
// the tls section and every call carries a TLS peer identity (as gRPC
// would after the handshake); even, plaintext. Then come records, each an
// op byte, a length byte and that many payload bytes (fewer at the end of
// the input), the payload being decoded with proto.Unmarshal into the
// op's request type:
//
//	op & 0x07 (mod 5): 0 AddVIP, 1 RemoveVIP (VIPRequest), 2 Fence
//	                   (AgentFenceRequest), 3 Lease (LeaseRequest), 4 Status
//	op & 0x08: set the request's group to the configured group
//	op & 0x10: set the request's observer to the caller's name
//	op >> 5 (mod 4): the caller in TLS mode: obs1, obs2, obs3 (observer
//	                 certificates), or alice (an operator certificate)
//
// Payloads proto.Unmarshal rejects are skipped.
const (
	fuzzOpMask      = 0x07
	fuzzForceGroup  = 0x08
	fuzzForceCaller = 0x10
)

var fuzzCallers = []struct{ kind, name string }{
	{tlsconf.KindObserver, "obs1"},
	{tlsconf.KindObserver, "obs2"},
	{tlsconf.KindObserver, "obs3"},
	{tlsconf.KindOperator, "alice"},
}

// fuzzRecord encodes one record (for the seed corpus).
func fuzzRecord(op byte, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil || len(b) > 255 {
		panic("fuzzRecord: bad seed message")
	}
	return append([]byte{op, byte(len(b))}, b...)
}

func fuzzInput(tlsMode bool, records ...[]byte) []byte {
	in := []byte{0}
	if tlsMode {
		in[0] = 1
	}
	for _, r := range records {
		in = append(in, r...)
	}
	return in
}

// FuzzAgentRequests feeds decoded requests to the handlers of an agent on
// the fake Addrs (no network, loops not started, the clock stopped: no
// lease or tentative epoch expires) and checks every answer against a
// model of the rules: with TLS, a caller that is not an observer, or not
// the request's observer, is refused (PermissionDenied); an empty group is
// InvalidArgument, an unknown one NotFound; a lease from an unconfigured
// observer or without a primary is InvalidArgument; an epoch more than
// MaxEpochJump above the confirmed one is InvalidArgument. Then a lease
// is its observer's claim, and the confirmed epoch is the quorum-th
// highest claim (never lower than it was); the enforced epoch is the
// higher of the confirmed one and the tentative one. AddVIP and Lease
// below the enforced epoch are refused with FailedPrecondition; RemoveVIP
// and Fence below it succeed without changing any epoch; any other
// request succeeds and makes its epoch the tentative one when it is above
// the confirmed one. Only the confirmed epoch is persisted. A refused
// request changes nothing but the confirmed epoch (status, VIP); the
// confirmed epoch never goes down; and nothing panics.
func FuzzAgentRequests(f *testing.F) {
	pki := nodeagenttest.NewPKI(f)
	agentFiles := pki.Issue(f, tlsconf.KindAgent, "db1host")
	leaves := make([]*x509.Certificate, len(fuzzCallers))
	for i, c := range fuzzCallers {
		st, err := tlsconf.Load(pki.Issue(f, c.kind, c.name))
		if err != nil {
			f.Fatal(err)
		}
		leaves[i] = st.Leaf()
	}
	// callerCtx is what a handler sees for a call over a completed TLS
	// handshake with caller i's certificate.
	callerCtx := func(i int) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
			HandshakeComplete: true, Version: tls.VersionTLS13, PeerCertificates: []*x509.Certificate{leaves[i]},
		}}})
	}

	// Seeds: a valid lease, an AddVIP, garbage, and sequences that raise
	// the epoch and then send stale requests, in both modes.
	lease := func(epoch uint64, obs, primary string) *vigilv1.LeaseRequest {
		return &vigilv1.LeaseRequest{Group: tGroup, Epoch: epoch, Observer: obs, Primary: primary}
	}
	vip := func(epoch uint64, obs string) *vigilv1.VIPRequest {
		return &vigilv1.VIPRequest{Group: tGroup, Epoch: epoch, Observer: obs}
	}
	f.Add(fuzzInput(false, fuzzRecord(3, lease(1, "obs1", "db1"))))
	f.Add(fuzzInput(false, fuzzRecord(0, vip(2, "obs1"))))
	f.Add([]byte("\x00\x03\x07\xff\xff\xff\xff\xff\xffgarbage\x00\x01"))
	f.Add(fuzzInput(false,
		fuzzRecord(0, vip(5, "obs1")),
		fuzzRecord(3, lease(5, "obs2", "db1")),
		fuzzRecord(3, lease(3, "obs1", "db1")),
		fuzzRecord(1, vip(4, "obs1")),
		fuzzRecord(2, &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 4, Observer: "obs1"}),
		fuzzRecord(3, lease(6, "obs3", "db2")),
		fuzzRecord(2, &vigilv1.AgentFenceRequest{Group: tGroup, Epoch: 6}),
		fuzzRecord(4, &vigilv1.AgentStatusRequest{}),
	))
	f.Add(fuzzInput(true,
		fuzzRecord(0|0<<5, vip(3, "obs1")),                      // obs1 as obs1
		fuzzRecord(3|1<<5, lease(3, "obs1", "db1")),             // obs2 as obs1: denied
		fuzzRecord(3|1<<5|fuzzForceCaller, lease(2, "", "db1")), // obs2, stale
		fuzzRecord(1|3<<5|fuzzForceCaller, vip(9, "")),          // operator
		fuzzRecord(4|2<<5, &vigilv1.AgentStatusRequest{}),       // obs3 status
	))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		tlsMode := in[0]&1 == 1
		in = in[1:]

		fake := nodeagenttest.New()
		cfg := testConfig(t.TempDir(), nil)
		cfg.GARP.Count = 1 // no background bursts
		if tlsMode {
			cfg.TLS = TLS{CA: agentFiles.CA, Cert: agentFiles.Cert, Key: agentFiles.Key}
		}
		a, err := New(cfg, nil, nil, WithAddrs(fake), withClock(newFakeClock().now))
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		g := a.groups[tGroup]
		highest := func() uint64 {
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.highest
		}
		// The model.
		var mConfirmed, mTentative uint64
		mClaims := map[string]uint64{}
		mEffective := func() uint64 { return max(mConfirmed, mTentative) }
		mQuorum := func() uint64 {
			var es []uint64
			for _, e := range mClaims {
				es = append(es, e)
			}
			if len(es) < a.quorum {
				return 0
			}
			slices.Sort(es)
			return es[len(es)-a.quorum]
		}
		statusCtx := context.Background()
		if tlsMode {
			statusCtx = callerCtx(0)
		}
		type snapshot struct {
			st        *vigilv1.AgentStatusResponse
			holds     bool
			persisted uint64
		}
		snap := func() snapshot {
			st, err := a.Status(statusCtx, &vigilv1.AgentStatusRequest{})
			if err != nil {
				t.Fatalf("Status: %v", err)
			}
			return snapshot{st: st, holds: fake.Holds(tIface, tVIP), persisted: a.store.get(tGroup)}
		}

		for len(in) >= 2 {
			op, n := in[0], int(in[1])
			in = in[2:]
			payload := in[:min(n, len(in))]
			in = in[len(payload):]

			ci := int(op>>5) % len(fuzzCallers)
			ctx, caller := context.Background(), ""
			if tlsMode {
				ctx, caller = callerCtx(ci), fuzzCallers[ci].name
			}
			var (
				group, observer, primary string
				epoch                    uint64
				isLease                  bool
				call                     func() (uint64, error) // returns the answer's highest epoch
			)
			fix := func(grp, obs *string) {
				if op&fuzzForceGroup != 0 {
					*grp = tGroup
				}
				if op&fuzzForceCaller != 0 {
					*obs = caller
					if !tlsMode {
						*obs = fuzzCallers[ci].name
					}
				}
				group, observer = *grp, *obs
			}
			kind := int(op&fuzzOpMask) % 5
			switch kind {
			case 0, 1:
				req := &vigilv1.VIPRequest{}
				if proto.Unmarshal(payload, req) != nil {
					continue
				}
				fix(&req.Group, &req.Observer)
				epoch = req.Epoch
				h := a.AddVIP
				if kind == 1 {
					h = a.RemoveVIP
				}
				call = func() (uint64, error) { r, err := h(ctx, req); return r.GetHighestEpoch(), err }
			case 2:
				req := &vigilv1.AgentFenceRequest{}
				if proto.Unmarshal(payload, req) != nil {
					continue
				}
				fix(&req.Group, &req.Observer)
				epoch = req.Epoch
				call = func() (uint64, error) { r, err := a.Fence(ctx, req); return r.GetHighestEpoch(), err }
			case 3:
				req := &vigilv1.LeaseRequest{}
				if proto.Unmarshal(payload, req) != nil {
					continue
				}
				fix(&req.Group, &req.Observer)
				epoch, primary, isLease = req.Epoch, req.Primary, true
				call = func() (uint64, error) { r, err := a.Lease(ctx, req); return r.GetHighestEpoch(), err }
			case 4:
				req := &vigilv1.AgentStatusRequest{}
				if proto.Unmarshal(payload, req) != nil {
					continue
				}
				_, err := a.Status(ctx, req)
				want := codes.OK
				if tlsMode && fuzzCallers[ci].kind != tlsconf.KindObserver {
					want = codes.PermissionDenied
				}
				if status.Code(err) != want {
					t.Fatalf("Status as %q: %v, want %v", caller, err, want)
				}
				continue
			}

			h0, before := highest(), snap()
			want := codes.OK
			epochChecked := false
			switch {
			case tlsMode && fuzzCallers[ci].kind != tlsconf.KindObserver:
				want = codes.PermissionDenied
			case tlsMode && observer != caller:
				want = codes.PermissionDenied
			case group == "":
				want = codes.InvalidArgument
			case group != tGroup:
				want = codes.NotFound
			case isLease && (!a.observers[observer] || primary == ""):
				want = codes.InvalidArgument
			case epoch > mConfirmed && epoch-mConfirmed > MaxEpochJump:
				want = codes.InvalidArgument
			default:
				epochChecked = true
			}
			if epochChecked {
				if isLease {
					mClaims[observer] = epoch
					if q := mQuorum(); q > mConfirmed {
						mConfirmed = q
						if mTentative <= q {
							mTentative = 0
						}
					}
				}
				stale := epoch < mEffective()
				switch {
				case stale && (kind == 0 || isLease):
					want = codes.FailedPrecondition
				case !stale && epoch > mConfirmed:
					mTentative = epoch
				}
			}
			answered, err := call()
			if got := status.Code(err); got != want {
				t.Fatalf("op %d (group %q epoch %d observer %q primary %q, caller %q, confirmed %d, enforced %d): %v (%v), want %v",
					kind, group, epoch, observer, primary, caller, h0, mEffective(), got, err, want)
			}
			h1 := highest()
			if h1 < h0 {
				t.Fatalf("confirmed epoch went down: %d -> %d", h0, h1)
			}
			if h1 != mConfirmed || a.store.get(tGroup) != mConfirmed {
				t.Fatalf("op %d epoch %d: confirmed %d, persisted %d; the model says %d (claims %v)", kind, epoch, h1, a.store.get(tGroup), mConfirmed, mClaims)
			}
			after := snap()
			if got := after.st.Groups[0].HighestEpoch; got != mEffective() {
				t.Fatalf("op %d epoch %d: status says epoch %d, the model %d", kind, epoch, got, mEffective())
			}
			if err != nil {
				if !proto.Equal(before.st, after.st) || before.holds != after.holds {
					t.Fatalf("refused request (%v) changed the state: %+v -> %+v", err, before, after)
				}
				continue
			}
			if answered != mEffective() {
				t.Fatalf("accepted request of epoch %d (confirmed was %d): answered %d, want %d", epoch, h0, answered, mEffective())
			}
		}
	})
}
