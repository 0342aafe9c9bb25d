package cluster

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigilha/vigil/cluster/tlsconf"
	"github.com/vigilha/vigil/health"
)

// How the certificates of the other observers are learned (voteKeys).
const (
	// voteCertTimeout bounds one fetch (dial + TLS handshake).
	voteCertTimeout = 5 * time.Second
	// voteCertRefetchEvery: at most one fetch per observer this often once
	// one succeeded, so that forged signatures cannot make us dial in a loop.
	voteCertRefetchEvery = 2 * time.Second
	// voteCertRetryMin/Max: back-off between failed fetches.
	voteCertRetryMin = 250 * time.Millisecond
	voteCertRetryMax = 5 * time.Second
	// voteCertWarnAfter: failures are logged as warnings only once the
	// fetch has failed for this long (at start the others may not be up).
	voteCertWarnAfter = 30 * time.Second
)

// voteKeys signs this observer's vote batches with the private key of its
// TLS certificate, and verifies the other observers' batches with their
// certificates. It learns those from the certificate each observer
// presents on its gRPC port (a mutual-TLS handshake as an observer: the
// chain is verified against the CA and must name that observer), once,
// in the background, and again when a signature fails (a reloaded key),
// when the certificate expires or when the CA pool is reloaded. Until an
// observer's certificate is known its batches are unverified (dropped).
type voteKeys struct {
	store *tlsconf.Store
	addrs map[string]string // the other observers' gRPC addresses, by id
	log   *slog.Logger
	now   func() time.Time
	// fetch returns the certificate chain an observer's gRPC port
	// presents (a TLS dial; tests may replace it).
	fetch func(ctx context.Context, addr string) ([]*x509.Certificate, error)

	mu    sync.Mutex
	certs map[string]*voteCert
	want  map[string]chan struct{}

	fetches *prometheus.CounterVec
}

// voteCert is one observer's verified certificate chain.
type voteCert struct {
	chain []*x509.Certificate
	// pool is the CA pool the chain was verified against: after a reload
	// it is verified again.
	pool *x509.CertPool
}

var (
	_ health.BatchSigner   = (*voteKeys)(nil)
	_ health.BatchVerifier = (*voteKeys)(nil)
)

// voteAuth returns what signs and verifies this observer's gossip votes
// and the loop that learns the other observers' certificates (run it in
// the background); all nil without TLS, where votes are unauthenticated.
func (o *Observer) voteAuth() (health.BatchSigner, health.BatchVerifier, func(context.Context)) {
	if o.tls == nil {
		return nil, nil, nil
	}
	addrs := map[string]string{}
	for _, ob := range o.cfg.Observers {
		if ob.ID != o.cfg.NodeID {
			addrs[ob.ID] = ob.GRPC
		}
	}
	k := newVoteKeys(o.tls, addrs, o.log.With("component", "votekeys"), o.reg)
	return k, k, k.run
}

func newVoteKeys(store *tlsconf.Store, addrs map[string]string, log *slog.Logger, reg prometheus.Registerer) *voteKeys {
	k := &voteKeys{
		store: store, addrs: addrs, log: log, now: time.Now,
		certs: map[string]*voteCert{}, want: map[string]chan struct{}{},
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_gossip_vote_cert_fetches_total",
			Help: "Fetches of another observer's certificate (to verify its signed votes) from its gRPC port, by result (ok, error).",
		}, []string{"result"}),
	}
	k.fetch = k.dialCert
	for id := range addrs {
		k.want[id] = make(chan struct{}, 1)
	}
	known := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vigil_gossip_vote_certs_known",
		Help: "Other observers whose certificate is known here, so that their signed votes can be verified.",
	}, func() float64 {
		k.mu.Lock()
		defer k.mu.Unlock()
		return float64(len(k.certs))
	})
	if reg != nil {
		reg.MustRegister(k.fetches, known)
	}
	return k
}

// SignBatch signs with the current certificate's key (reloads included).
func (k *voteKeys) SignBatch(batch []byte) ([]byte, error) {
	key, ok := k.store.Certificate().PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("sign vote batch: the TLS private key cannot sign")
	}
	return health.SignBatchWith(key, batch)
}

// MaxSignatureLen is that of the current certificate's key.
func (k *voteKeys) MaxSignatureLen() int {
	return health.MaxSignatureLen(k.store.Certificate().Leaf.PublicKey)
}

// VerifyBatch checks sig with the certificate of the named observer. It
// never blocks: an unknown certificate is fetched in the background.
func (k *voteKeys) VerifyBatch(observer string, batch, sig []byte) error {
	leaf := k.cert(observer)
	if leaf == nil {
		k.request(observer)
		return fmt.Errorf("%w: certificate of %s not known yet", health.ErrSignerUnknown, observer)
	}
	if err := health.VerifyBatchWith(leaf.PublicKey, batch, sig); err != nil {
		// A forgery, or the observer's key changed (reload): fetch its
		// certificate again (rate-limited).
		k.request(observer)
		return fmt.Errorf("vote batch of %s: %w", observer, err)
	}
	return nil
}

// cert returns the observer's verified leaf certificate, nil when none is
// known or the one known expired or no longer verifies against the
// current CA pool.
func (k *voteKeys) cert(observer string) *x509.Certificate {
	k.mu.Lock()
	defer k.mu.Unlock()
	vc := k.certs[observer]
	if vc == nil {
		return nil
	}
	now := k.now()
	if now.After(vc.chain[0].NotAfter) {
		delete(k.certs, observer)
		return nil
	}
	if pool := k.store.Pool(); pool != vc.pool {
		if err := checkVoteCert(vc.chain, observer, pool, now); err != nil {
			k.log.Warn("observer certificate no longer valid after a TLS reload; fetching it again", "peer", observer, "err", err)
			delete(k.certs, observer)
			return nil
		}
		vc.pool = pool
	}
	return vc.chain[0]
}

// request asks for the observer's certificate to be fetched (again).
func (k *voteKeys) request(observer string) {
	if ch, ok := k.want[observer]; ok {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// run fetches every other observer's certificate, then again on request,
// until ctx is done.
func (k *voteKeys) run(ctx context.Context) {
	var wg sync.WaitGroup
	for id, addr := range k.addrs {
		k.request(id)
		wg.Add(1)
		go func() { defer wg.Done(); k.fetchLoop(ctx, id, addr) }()
	}
	wg.Wait()
}

func (k *voteKeys) fetchLoop(ctx context.Context, id, addr string) {
	var lastOK time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.want[id]:
		}
		if !waitOrDone(ctx, voteCertRefetchEvery-k.now().Sub(lastOK)) {
			return
		}
		failingSince := time.Time{}
		lastWarn := time.Time{}
		backoff := voteCertRetryMin
		for {
			err := k.fetchOnce(ctx, id, addr)
			if err == nil {
				lastOK = k.now()
				break
			}
			now := k.now()
			if failingSince.IsZero() {
				failingSince = now
			}
			if now.Sub(failingSince) >= voteCertWarnAfter && now.Sub(lastWarn) >= time.Minute {
				lastWarn = now
				k.log.Warn("cannot learn an observer's certificate: its votes are dropped as unverified", "peer", id, "grpc", addr,
					"failing_for", now.Sub(failingSince).Round(time.Second).String(), "err", err)
			} else {
				k.log.Debug("fetch observer certificate", "peer", id, "grpc", addr, "err", err)
			}
			if !waitOrDone(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, voteCertRetryMax)
		}
		// What was requested meanwhile is answered by this fetch.
		select {
		case <-k.want[id]:
		default:
		}
	}
}

// waitOrDone waits d (nothing when d <= 0) unless ctx ends first; it reports
// whether ctx is still live.
func waitOrDone(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// fetchOnce fetches, checks and stores one observer's certificate.
func (k *voteKeys) fetchOnce(ctx context.Context, id, addr string) error {
	pool := k.store.Pool()
	chain, err := k.fetch(ctx, addr)
	if err == nil {
		err = checkVoteCert(chain, id, pool, k.now())
	}
	if err != nil {
		k.fetches.WithLabelValues("error").Inc()
		return err
	}
	k.fetches.WithLabelValues("ok").Inc()
	k.mu.Lock()
	old := k.certs[id]
	k.certs[id] = &voteCert{chain: chain, pool: pool}
	k.mu.Unlock()
	if old == nil || !old.chain[0].Equal(chain[0]) {
		k.log.Info("learned an observer's certificate: its signed votes count", "peer", id,
			"serial", chain[0].SerialNumber.Text(16), "not_after", chain[0].NotAfter)
	}
	return nil
}

// checkVoteCert verifies that chain chains to pool at now and that its
// leaf names observer id, with a key votes can be verified with.
func checkVoteCert(chain []*x509.Certificate, id string, pool *x509.CertPool, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("no certificate presented")
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("certificate of %s does not verify against the CA: %w", id, err)
	}
	kind, name, err := tlsconf.PeerIdentity(leaf)
	if err != nil {
		return err
	}
	if kind != tlsconf.KindObserver || name != id {
		return fmt.Errorf("the gRPC address of observer %s presents the certificate of %s/%s", id, kind, name)
	}
	if health.MaxSignatureLen(leaf.PublicKey) == 0 {
		return fmt.Errorf("certificate of %s: unsupported key type %T", id, leaf.PublicKey)
	}
	return nil
}

// dialCert returns the certificate chain presented at addr in a mutual
// TLS handshake as an observer (the observer's admin gRPC port).
func (k *voteKeys) dialCert(ctx context.Context, addr string) ([]*x509.Certificate, error) {
	cfg := k.store.ClientConfig("", tlsconf.KindObserver)
	cfg.NextProtos = []string{"h2"} // what the gRPC server expects
	ctx, cancel := context.WithTimeout(ctx, voteCertTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	defer c.Close()
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, fmt.Errorf("TLS dial to %s returned a %T", addr, c)
	}
	return tc.ConnectionState().PeerCertificates, nil
}
