package cluster

import (
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// tcpStreamLayer is raft's stream layer over plain TCP. We build it
// ourselves (rather than raft.NewTCPTransport) so that it can be wrapped:
// by TLS later, and by tests that cut an observer off the network.
type tcpStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
}

var _ raft.StreamLayer = (*tcpStreamLayer)(nil)

func newTCPStreamLayer(bind, advertise string) (*tcpStreamLayer, error) {
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return nil, fmt.Errorf("raft advertise address %q: %w", advertise, err)
	}
	if adv.IP == nil || adv.IP.IsUnspecified() {
		return nil, fmt.Errorf("raft advertise address %q: not an address other observers can reach", advertise)
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("listen for raft on %s: %w", bind, err)
	}
	return &tcpStreamLayer{ln: ln, advertise: adv}, nil
}

func (t *tcpStreamLayer) Accept() (net.Conn, error) { return t.ln.Accept() }
func (t *tcpStreamLayer) Close() error              { return t.ln.Close() }
func (t *tcpStreamLayer) Addr() net.Addr            { return t.advertise }

func (t *tcpStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("tcp", string(address))
}
