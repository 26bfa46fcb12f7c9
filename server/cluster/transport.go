package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// DialFunc opens a TCP connection to addr. Tests pass one that injects
// network faults; the default is a net.Dialer.
type DialFunc func(ctx context.Context, addr string) (net.Conn, error)

func defaultDial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// tlsStreamLayer carries Raft over mutually authenticated TLS 1.3: a peer
// without a server certificate of the trust domain fails the handshake and
// never reaches Raft.
type tlsStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	serverCfg *tls.Config
	clientCfg *tls.Config
	dial      DialFunc
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func (t *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := t.ln.Accept()
	if err != nil {
		return nil, err
	}
	return tls.Server(c, t.serverCfg), nil
}

func (t *tlsStreamLayer) Close() error { return t.ln.Close() }

func (t *tlsStreamLayer) Addr() net.Addr { return t.advertise }

func (t *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	raw, err := t.dial(ctx, string(addr))
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, t.clientCfg)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("cluster: TLS handshake with %s: %w", addr, err)
	}
	return c, nil
}
