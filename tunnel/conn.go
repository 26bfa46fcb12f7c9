package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// activeConn is an open, forwarded connection.
type activeConn struct {
	listener  string
	peerID    string
	peerChain []*x509.Certificate
	a, b      net.Conn
	once      sync.Once
}

func (c *activeConn) close() {
	c.once.Do(func() {
		c.a.Close()
		c.b.Close()
	})
}

// connSet holds the open connections (for drain-on-revoke and shutdown).
type connSet struct {
	mu sync.Mutex
	m  map[*activeConn]struct{}
}

func (s *connSet) add(c *activeConn) {
	s.mu.Lock()
	s.m[c] = struct{}{}
	s.mu.Unlock()
}

func (s *connSet) remove(c *activeConn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) list() []*activeConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*activeConn, 0, len(s.m))
	for c := range s.m {
		out = append(out, c)
	}
	return out
}

func (s *connSet) closeAll() {
	for _, c := range s.list() {
		c.close()
	}
}

// outcome is what happened to one connection, logged once at its end.
type outcome struct {
	listener, direction string
	remote              string // the peer's address (inbound: the client's)
	client              string // outbound: the local plaintext client's address
	peerID              string // the peer's SPIFFE ID ("" if none)
	peerSerial          string // the serial of the peer's leaf (hex)
	localID             string
	decision            audit.Decision
	reason              string
	authenticated       bool
	revision            uint64
	start               time.Time
	up, down            atomic.Int64 // bytes client→target, target→client
}

// decided audits the decision, once per connection.
func (t *Tunnel) decided(o *outcome) {
	actor := o.peerID
	if actor == "" {
		// The address without its port, so that the audit log folds a
		// flood of refusals from one host into one event (the port is in
		// the details).
		actor = o.remote
		if host, _, err := net.SplitHostPort(o.remote); err == nil {
			actor = host
		}
	}
	details := map[string]string{"listener": o.listener, "direction": o.direction, "remote": o.remote,
		"authenticated": strconv.FormatBool(o.authenticated)}
	if o.localID != "" {
		details["local_id"] = o.localID
	}
	if o.peerSerial != "" {
		details["peer_serial"] = o.peerSerial
	}
	if o.revision != 0 {
		details["policy_revision"] = strconv.FormatUint(o.revision, 10)
	}
	subject := o.localID
	if o.direction == "outbound" {
		actor, subject = o.localID, o.peerID
		if actor == "" {
			actor = o.client
		}
		if subject == "" {
			subject = o.remote
		}
		details["client"] = o.client
	}
	t.events.Record(audit.Event{Actor: actor, Action: "tunnel.connect", Subject: subject, Decision: o.decision, Reason: o.reason, Details: details})
}

// finish logs a connection's end and counts it.
func (t *Tunnel) finish(o *outcome, result string) {
	d := time.Since(o.start)
	lvl := t.log.Info
	if o.decision == audit.Deny {
		lvl = t.log.Warn
	}
	lvl("connection", "listener", o.listener, "direction", o.direction, "remote", o.remote, "peer_id", o.peerID,
		"decision", string(o.decision), "reason", o.reason, "bytes_up", o.up.Load(), "bytes_down", o.down.Load(),
		"duration", d.String())
	t.metrics.conns.WithLabelValues(o.listener, o.direction, result).Inc()
	t.metrics.bytes.WithLabelValues(o.listener, "up").Add(float64(o.up.Load()))
	t.metrics.bytes.WithLabelValues(o.listener, "down").Add(float64(o.down.Load()))
	if o.decision == audit.Allow {
		t.metrics.duration.WithLabelValues(o.listener, o.direction).Observe(d.Seconds())
	}
}

// pipe copies both ways until both directions end (each end half-closes
// the other side), counting bytes.
func (t *Tunnel) pipe(ac *activeConn, client, target net.Conn, o *outcome) {
	t.conns.add(ac)
	active := t.metrics.active.WithLabelValues(o.listener, o.direction)
	active.Inc()
	defer func() {
		active.Dec()
		t.conns.remove(ac)
		ac.close()
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn, n *atomic.Int64) {
		defer wg.Done()
		buf := make([]byte, 16<<10) // a TLS record's worth
		for {
			k, err := src.Read(buf)
			if k > 0 {
				if _, werr := dst.Write(buf[:k]); werr != nil {
					ac.close()
					return
				}
				n.Add(int64(k))
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					closeWrite(dst)
				} else {
					ac.close()
				}
				return
			}
		}
	}
	go cp(target, client, &o.up)
	go cp(client, target, &o.down)
	wg.Wait()
}

func closeWrite(c net.Conn) {
	type cw interface{ CloseWrite() error }
	if w, ok := c.(cw); ok {
		if w.CloseWrite() == nil {
			return
		}
	}
	c.Close()
}

// peekConn is a net.Conn whose first bytes were read ahead.
type peekConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// CloseWrite half-closes the underlying TCP connection.
func (p *peekConn) CloseWrite() error {
	if w, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return w.CloseWrite()
	}
	return p.Conn.Close()
}

// looksLikeTLS reports whether the first bytes are a TLS handshake record
// (content type 22, version 3.x).
func looksLikeTLS(b []byte) bool { return len(b) >= 2 && b[0] == 0x16 && b[1] == 0x03 }

type inboundListener struct {
	t   *Tunnel
	cfg Inbound
	ln  net.Listener
}

func (l *inboundListener) handle(ctx context.Context, c net.Conn) {
	t := l.t
	o := &outcome{listener: l.cfg.Name, direction: "inbound", remote: c.RemoteAddr().String(), start: time.Now()}
	deny := func(result, reason string) {
		o.decision, o.reason = audit.Deny, reason
		t.decided(o)
		t.finish(o, result)
		c.Close()
	}
	s, err := t.current(true)
	if err != nil {
		deny("not_ready", "not ready: "+err.Error())
		return
	}
	o.localID = s.id.id.String()
	// I/O deadlines are wall-clock timeouts, not lifetimes: time.Now.
	_ = c.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	br := bufio.NewReaderSize(c, 4096)
	first, err := br.Peek(2)
	if err != nil {
		deny("handshake_failed", "no first bytes within the handshake timeout: "+err.Error())
		return
	}
	conn := net.Conn(&peekConn{Conn: c, r: br})
	facts := connFacts{listener: l.cfg.Name, direction: "inbound", mode: string(l.cfg.Mode),
		source: c.RemoteAddr(), destination: c.LocalAddr(), destinationID: o.localID}
	var chain []*x509.Certificate
	if looksLikeTLS(first) {
		tc := tls.Server(conn, t.serverConfig(s, &chain))
		hctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			deny("handshake_failed", "TLS handshake: "+err.Error())
			return
		}
		id, _ := spiffeid.FromURI(chain[0].URIs[0])
		o.peerID, o.peerSerial, o.authenticated = id.String(), chain[0].SerialNumber.Text(16), true
		facts.sourceID, facts.authenticated = o.peerID, true
		conn = tc
	} else if l.cfg.Mode == Strict {
		deny("handshake_failed", fmt.Sprintf("STRICT: the first bytes (%#x) are not a TLS handshake", first))
		return
	}
	o.revision = s.authz.revision
	dctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	allowed, err := s.authz.decide(dctx, facts)
	cancel()
	switch {
	case err != nil:
		deny("denied", "policy error (denied): "+err.Error())
		return
	case !allowed:
		deny("denied", "denied by the policy")
		return
	}
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	target, err := d.DialContext(ctx, "tcp", l.cfg.Target)
	if err != nil {
		deny("dial_failed", "target "+l.cfg.Target+": "+err.Error())
		return
	}
	_ = c.SetDeadline(time.Time{})
	o.decision = audit.Allow
	t.decided(o)
	t.pipe(&activeConn{listener: l.cfg.Name, peerID: o.peerID, peerChain: chain, a: conn, b: target}, conn, target, o)
	t.finish(o, "allowed")
}

// serverConfig is the TLS 1.3 server side of one handshake with the
// secrets s: the workload's certificate, a client certificate required
// and verified against s's roots and CRLs; the verified chain goes to
// *chain.
func (t *Tunnel) serverConfig(s secrets, chain *[]*x509.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*s.id.cert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, c, err := s.vc.verifyPeer(raw, s.id.id.TrustDomain(), t.clock.Now())
			*chain = c
			return err
		},
	}
}

type outboundListener struct {
	t   *Tunnel
	cfg Outbound
	ln  net.Listener
}

func (l *outboundListener) handle(ctx context.Context, c net.Conn) {
	t := l.t
	o := &outcome{listener: l.cfg.Name, direction: "outbound", remote: l.cfg.Remote, client: c.RemoteAddr().String(), start: time.Now()}
	deny := func(result, reason string) {
		o.decision, o.reason = audit.Deny, reason
		t.decided(o)
		t.finish(o, result)
		c.Close()
	}
	if l.cfg.External != nil {
		l.handleExternal(ctx, c, o, deny)
		return
	}
	s, err := t.current(l.cfg.Policy)
	if err != nil {
		deny("not_ready", "not ready: "+err.Error())
		return
	}
	o.localID = s.id.id.String()
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	raw, err := d.DialContext(ctx, "tcp", l.cfg.Remote)
	if err != nil {
		deny("dial_failed", "remote "+l.cfg.Remote+": "+err.Error())
		return
	}
	_ = raw.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	var chain []*x509.Certificate
	var peer spiffeid.ID
	tc := tls.Client(raw, &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return s.id.cert, nil },
		// The server's chain is verified below, as an X509-SVID against
		// the roots and CRLs of the validation context, not as a host name.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			id, ch, err := s.vc.verifyPeer(rawCerts, s.id.id.TrustDomain(), t.clock.Now())
			if err != nil {
				return err
			}
			if len(l.cfg.ExpectIDs) > 0 && !slices.Contains(l.cfg.ExpectIDs, id) {
				return &PeerError{Err: fmt.Errorf("the remote is %s, not an expected ID", id)}
			}
			peer, chain = id, ch
			return nil
		},
	})
	hctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		raw.Close()
		deny("handshake_failed", "TLS handshake with "+l.cfg.Remote+": "+err.Error())
		return
	}
	o.peerID, o.peerSerial, o.authenticated = peer.String(), chain[0].SerialNumber.Text(16), true
	if l.cfg.Policy {
		o.revision = s.authz.revision
		facts := connFacts{listener: l.cfg.Name, direction: "outbound", authenticated: true,
			source: c.RemoteAddr(), destination: raw.RemoteAddr(), sourceID: o.localID, destinationID: o.peerID}
		dctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
		allowed, err := s.authz.decide(dctx, facts)
		cancel()
		if err != nil || !allowed {
			tc.Close()
			reason := "denied by the policy"
			if err != nil {
				reason = "policy error (denied): " + err.Error()
			}
			deny("denied", reason)
			return
		}
	}
	_ = raw.SetDeadline(time.Time{})
	o.decision = audit.Allow
	t.decided(o)
	t.pipe(&activeConn{listener: l.cfg.Name, peerID: o.peerID, peerChain: chain, a: c, b: tc}, c, tc, o)
	t.finish(o, "allowed")
}

// handleExternal originates TLS 1.3 to an outside service, verified by
// the web PKI (roots and server name), for a plaintext client.
func (l *outboundListener) handleExternal(ctx context.Context, c net.Conn, o *outcome, deny func(result, reason string)) {
	t := l.t
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	raw, err := d.DialContext(ctx, "tcp", l.cfg.Remote)
	if err != nil {
		deny("dial_failed", "remote "+l.cfg.Remote+": "+err.Error())
		return
	}
	_ = raw.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	tc := tls.Client(raw, &tls.Config{MinVersion: tls.VersionTLS13, ServerName: l.cfg.External.ServerName,
		RootCAs: l.cfg.External.Roots, Time: t.clock.Now})
	hctx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		raw.Close()
		deny("handshake_failed", "TLS handshake with "+l.cfg.Remote+" ("+l.cfg.External.ServerName+"): "+err.Error())
		return
	}
	_ = raw.SetDeadline(time.Time{})
	o.peerID = l.cfg.External.ServerName
	o.decision = audit.Allow
	t.decided(o)
	t.pipe(&activeConn{listener: l.cfg.Name, peerID: o.peerID, a: c, b: tc}, c, tc, o)
	t.finish(o, "allowed")
}
