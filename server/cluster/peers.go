package cluster

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/meshca/meshca/proto/clusterpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
)

// peerConnectParams bound reconnection: gRPC's default backoff grows to
// 120 s, so a leader back after a long absence would be reached only
// minutes later. Reconnects are also retried at once on a leader change
// (resetBackoff); an attempt (TCP and TLS handshake) gets MinConnectTimeout.
var peerConnectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
	MinConnectTimeout: 2 * time.Second,
}

// peerClients keeps one gRPC connection per peer API address, over mTLS
// with this server's identity.
type peerClients struct {
	identity *Identity
	dial     DialFunc

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newPeerClients(id *Identity, dial DialFunc) *peerClients {
	return &peerClients{identity: id, dial: dial, conns: map[string]*grpc.ClientConn{}}
}

func (p *peerClients) get(addr string) (clusterpb.ClusterClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return clusterpb.NewClusterClient(c), nil
	}
	_, clientTLS := p.identity.PeerTLS()
	c, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return p.dial(ctx, a) }),
		grpc.WithConnectParams(peerConnectParams),
	)
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return clusterpb.NewClusterClient(c), nil
}

// resetBackoff has the connection to addr, if any, reconnect at once when
// it is waiting to retry.
func (p *peerClients) resetBackoff(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		c.ResetConnectBackoff()
	}
}

func (p *peerClients) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
}
