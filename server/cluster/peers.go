package cluster

import (
	"context"
	"net"
	"sync"

	"github.com/meshca/meshca/proto/clusterpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

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
	)
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return clusterpb.NewClusterClient(c), nil
}

func (p *peerClients) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
}
