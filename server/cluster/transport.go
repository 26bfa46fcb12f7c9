package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/internal/wallclock"
)

// DialFunc opens a TCP connection to addr. Tests pass one that injects
// network faults; the default is a net.Dialer.
type DialFunc func(ctx context.Context, addr string) (net.Conn, error)

func defaultDial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// advertiseAddr is an advertised Raft address as configured, possibly a
// host name.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }

// tlsStreamLayer carries Raft over mutually authenticated TLS 1.3: a peer
// without a server certificate of the trust domain fails the handshake and
// never reaches Raft.
type tlsStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	serverCfg *tls.Config
	clientCfg *tls.Config
	dial      DialFunc
	log       *slog.Logger
}

// handshakeTimeout bounds the TLS handshake of an accepted Raft connection.
const handshakeTimeout = 10 * time.Second

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func (t *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := t.ln.Accept()
	if err != nil {
		return nil, err
	}
	return &handshakeConn{Conn: tls.Server(c, t.serverCfg), log: t.log}, nil
}

// handshakeConn is an accepted Raft connection whose TLS handshake runs
// at its first read or write, on the goroutine Raft gives the connection
// (so a slow peer cannot hold up Accept), within handshakeTimeout. A
// refused handshake is logged once, saying what it is, and then reads as
// io.EOF, which Raft's transport closes quietly instead of logging it as
// "failed to decode incoming command".
type handshakeConn struct {
	*tls.Conn
	log  *slog.Logger
	once sync.Once
	err  error
}

func (c *handshakeConn) handshake() error {
	c.once.Do(func() {
		c.Conn.SetDeadline(wallclock.Deadline(handshakeTimeout))
		if err := c.Conn.Handshake(); err != nil {
			if c.log != nil {
				c.log.Warn("refused a Raft connection: TLS handshake failed (only servers of this cluster, with a server certificate of the trust domain, may connect)",
					"from", c.Conn.RemoteAddr().String(), "error", err)
			}
			c.err = io.EOF
			return
		}
		c.Conn.SetDeadline(time.Time{})
	})
	return c.err
}

func (c *handshakeConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *handshakeConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
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
