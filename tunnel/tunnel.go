package tunnel

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/alarm"
	meshmetrics "github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/run"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/sdsclient"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BundleSecretPrefix prefixes the SDS names of OPA bundles on the agent
// (generic_secret "opa-bundle:<NAME>").
const BundleSecretPrefix = "opa-bundle:"

// Mode is an inbound listener's peer authentication mode (Istio's
// PeerAuthentication).
type Mode string

// The modes.
const (
	// Strict accepts mTLS only.
	Strict Mode = "STRICT"
	// Permissive accepts mTLS and plaintext, told apart by the first
	// bytes (a TLS handshake record); plaintext connections reach the
	// policy unauthenticated (no source principal,
	// meshca_tunnel_authenticated "false").
	Permissive Mode = "PERMISSIVE"
)

// Inbound is a TLS-terminating listener: mTLS from peers on Listen,
// plaintext to Target.
type Inbound struct {
	Name   string
	Listen string // host:port
	Target string // host:port of the local plaintext service
	Mode   Mode   // default Strict
}

// Outbound is a TLS-originating listener: plaintext from local clients
// on Listen, mTLS to Remote (a peer's inbound listener).
type Outbound struct {
	Name   string
	Listen string
	Remote string
	// ExpectIDs are the SPIFFE IDs the remote may present. Empty: any ID
	// of the own trust domain, and Policy must be set.
	ExpectIDs []spiffeid.ID
	// Policy asks the bundle's policy too (source: this workload,
	// destination: the remote's ID, direction "outbound").
	Policy bool
	// External, when set, makes this an egress listener: the remote is a
	// service outside the mesh, verified with External's roots and server
	// name (web PKI), to which no client certificate is sent. ExpectIDs
	// and Policy must then be empty: put an inbound listener (whose policy
	// decides which workloads may leave) in front of it.
	External *External
}

// External is an outside TLS service an egress listener originates TLS
// to.
type External struct {
	// ServerName is the name its certificate must hold (and the SNI).
	ServerName string
	// Roots verify its chain; nil means the system's roots.
	Roots *x509.CertPool
}

// Config configures a tunnel endpoint.
type Config struct {
	// Socket is the agent's Unix socket (SDS). Required.
	Socket string
	// SVIDName and BundleName are the SDS names of the certificate and of
	// the validation context. Defaults: "default" and "ROOTCA".
	SVIDName, BundleName string
	// Bundle is the OPA bundle's name (SDS opa-bundle:<Bundle>); required
	// when an inbound listener exists or an outbound one uses Policy.
	Bundle string
	// BundleKeyPEM and BundleKeyID verify the bundle's signature: the
	// trust domain's OPA key (meshca bundle show --opa-key).
	BundleKeyPEM []byte
	BundleKeyID  string
	// Decision is the policy's decision path. Default
	// policy.DefaultAuthzDecision (envoy/authz/allow).
	Decision string

	Inbound  []Inbound
	Outbound []Outbound

	// HandshakeTimeout bounds the first bytes, the TLS handshake and the
	// decision of a connection. Default 10 s.
	HandshakeTimeout time.Duration
	// DialTimeout bounds dialling a target or remote. Default 5 s.
	DialTimeout time.Duration
	// DrainOnRevoke closes open connections whose peer's chain is revoked
	// by a new validation context.
	DrainOnRevoke bool

	// Clock is the time certificates and CRLs are checked at. Default real.
	Clock clockwork.Clock
	// Log receives one line per connection and the SDS state. Default
	// slog.Default().
	Log *slog.Logger
	// Audit receives every decision. Default audit.Discard.
	Audit audit.Recorder
	// Registerer gets the tunnel's metrics. Default: a registry of its own
	// (served by Handler).
	Registerer prometheus.Registerer
}

// Tunnel is a running tunnel endpoint. Make it with New, run it with Run.
type Tunnel struct {
	cfg     Config
	log     *slog.Logger
	events  audit.Recorder
	clock   clockwork.Clock
	metrics *metrics
	gather  prometheus.Gatherer

	id    atomic.Pointer[identity]
	vc    atomic.Pointer[validation]
	authz atomic.Pointer[authorizer]

	mu      sync.Mutex        // guards sdsErr, sdsUp
	sdsErr  map[string]string // last problem of each secret, "" when fine
	sdsUp   map[string]bool
	inbound []*inboundListener
	out     []*outboundListener
	conns   connSet
}

// New checks the configuration and binds every listener (so that a port
// in use fails here); Run serves them.
func New(cfg Config) (*Tunnel, error) {
	if cfg.Socket == "" {
		return nil, errors.New("tunnel: the agent's socket is required")
	}
	if cfg.SVIDName == "" {
		cfg.SVIDName = sds.DefaultSVIDName
	}
	if cfg.BundleName == "" {
		cfg.BundleName = sds.DefaultBundleName
	}
	if cfg.Decision == "" {
		cfg.Decision = policy.DefaultAuthzDecision
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.Discard
	}
	if len(cfg.Inbound)+len(cfg.Outbound) == 0 {
		return nil, errors.New("tunnel: no listener: give at least one inbound or outbound listener")
	}
	needPolicy := len(cfg.Inbound) > 0
	names := map[string]bool{}
	for i, in := range cfg.Inbound {
		if in.Name == "" {
			cfg.Inbound[i].Name = fmt.Sprintf("inbound-%d", i)
		}
		if in.Mode == "" {
			cfg.Inbound[i].Mode = Strict
		}
		if m := cfg.Inbound[i].Mode; m != Strict && m != Permissive {
			return nil, fmt.Errorf("tunnel: inbound %s: mode %q is neither STRICT nor PERMISSIVE", cfg.Inbound[i].Name, m)
		}
		if in.Listen == "" || in.Target == "" {
			return nil, fmt.Errorf("tunnel: inbound %s: listen and target addresses are required", cfg.Inbound[i].Name)
		}
		if names[cfg.Inbound[i].Name] {
			return nil, fmt.Errorf("tunnel: two listeners are named %s", cfg.Inbound[i].Name)
		}
		names[cfg.Inbound[i].Name] = true
	}
	for i, o := range cfg.Outbound {
		if o.Name == "" {
			cfg.Outbound[i].Name = fmt.Sprintf("outbound-%d", i)
		}
		if o.Listen == "" || o.Remote == "" {
			return nil, fmt.Errorf("tunnel: outbound %s: listen and remote addresses are required", cfg.Outbound[i].Name)
		}
		if o.External != nil {
			if len(o.ExpectIDs) > 0 || o.Policy {
				return nil, fmt.Errorf("tunnel: outbound %s: an external remote has no SPIFFE ID: no expected IDs or policy (authorize at the inbound listener in front)", cfg.Outbound[i].Name)
			}
			if o.External.ServerName == "" {
				return nil, fmt.Errorf("tunnel: outbound %s: an external remote needs its server name", cfg.Outbound[i].Name)
			}
		} else if len(o.ExpectIDs) == 0 && !o.Policy {
			return nil, fmt.Errorf("tunnel: outbound %s: give the remote's expected SPIFFE IDs, or let the policy decide", cfg.Outbound[i].Name)
		}
		needPolicy = needPolicy || o.Policy
		if names[cfg.Outbound[i].Name] {
			return nil, fmt.Errorf("tunnel: two listeners are named %s", cfg.Outbound[i].Name)
		}
		names[cfg.Outbound[i].Name] = true
	}
	if needPolicy {
		if err := policy.CheckName(cfg.Bundle); err != nil {
			return nil, fmt.Errorf("tunnel: the OPA bundle (inbound listeners and outbound ones with policy need one): %w", err)
		}
		if len(cfg.BundleKeyPEM) == 0 || cfg.BundleKeyID == "" {
			return nil, errors.New("tunnel: the OPA bundle's verification key and its key ID are required (meshca bundle show --opa-key)")
		}
	}
	t := &Tunnel{cfg: cfg, log: cfg.Log.With("component", "tunnel"), events: cfg.Audit, clock: cfg.Clock,
		sdsErr: map[string]string{}, sdsUp: map[string]bool{}}
	t.conns.m = map[*activeConn]struct{}{}
	reg := cfg.Registerer
	if reg == nil {
		r := meshmetrics.NewRegistry()
		reg, t.gather = r, r
	}
	var err error
	if t.metrics, err = newMetrics(reg); err != nil {
		return nil, err
	}
	for _, name := range t.secretNames() {
		t.sdsErr[name] = "no response from the agent yet"
	}
	ok := false
	defer func() {
		if !ok {
			t.closeListeners()
		}
	}()
	for _, in := range cfg.Inbound {
		ln, err := net.Listen("tcp", in.Listen)
		if err != nil {
			return nil, fmt.Errorf("tunnel: inbound %s: %w", in.Name, err)
		}
		t.inbound = append(t.inbound, &inboundListener{t: t, cfg: in, ln: ln})
	}
	for _, o := range cfg.Outbound {
		ln, err := net.Listen("tcp", o.Listen)
		if err != nil {
			return nil, fmt.Errorf("tunnel: outbound %s: %w", o.Name, err)
		}
		t.out = append(t.out, &outboundListener{t: t, cfg: o, ln: ln})
	}
	ok = true
	return t, nil
}

func (t *Tunnel) closeListeners() {
	for _, l := range t.inbound {
		l.ln.Close()
	}
	for _, l := range t.out {
		l.ln.Close()
	}
}

func (t *Tunnel) needsPolicy() bool {
	if len(t.cfg.Inbound) > 0 {
		return true
	}
	for _, o := range t.cfg.Outbound {
		if o.Policy {
			return true
		}
	}
	return false
}

func (t *Tunnel) bundleSecretName() string { return BundleSecretPrefix + t.cfg.Bundle }

func (t *Tunnel) secretNames() []string {
	n := []string{t.cfg.SVIDName, t.cfg.BundleName}
	if t.needsPolicy() {
		n = append(n, t.bundleSecretName())
	}
	return n
}

// Addr returns the bound address of the named listener, or nil.
func (t *Tunnel) Addr(name string) net.Addr {
	for _, l := range t.inbound {
		if l.cfg.Name == name {
			return l.ln.Addr()
		}
	}
	for _, l := range t.out {
		if l.cfg.Name == name {
			return l.ln.Addr()
		}
	}
	return nil
}

// Run watches the agent's secrets and serves every listener until ctx is
// done; then it closes the listeners and every open connection and
// returns nil (or the first task's error).
func (t *Tunnel) Run(ctx context.Context) error {
	defer t.closeListeners()
	c, err := sdsclient.Dial(t.cfg.Socket)
	if err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	defer c.Close()
	c.Node.Id = "meshca-tunnel"
	g := run.New(ctx)
	for _, name := range t.secretNames() {
		name := name
		w, err := c.Watch(sdsclient.WatchConfig{Name: name, Clock: t.clock, Log: t.log,
			Apply: func(ctx context.Context, version string, sec *tlsv3.Secret) error {
				return t.apply(ctx, name, version, sec)
			},
			OnState: func(up bool, reason string) { t.sdsState(name, up, reason) }})
		if err != nil {
			return err
		}
		g.Go("sds "+name, w.Run)
	}
	var conns sync.WaitGroup
	for _, l := range t.inbound {
		g.Go("inbound "+l.cfg.Name, func(ctx context.Context) error { return serve(ctx, t.clock, l.ln, &conns, l.handle) })
	}
	for _, l := range t.out {
		g.Go("outbound "+l.cfg.Name, func(ctx context.Context) error { return serve(ctx, t.clock, l.ln, &conns, l.handle) })
	}
	g.Go("stop", func(ctx context.Context) error {
		<-ctx.Done()
		t.closeListeners()
		t.conns.closeAll()
		return nil
	})
	err = g.Wait()
	conns.Wait()
	return err
}

// serve accepts connections until the listener is closed; each runs in a
// goroutine counted by conns.
func serve(ctx context.Context, clock clockwork.Clock, ln net.Listener, conns *sync.WaitGroup, handle func(context.Context, net.Conn)) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() { // EMFILE and the like: back off
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				if alarm.Sleep(ctx, clock, delay) != nil {
					return nil
				}
				continue
			}
			return err
		}
		delay = 0
		conns.Add(1)
		go func() {
			defer conns.Done()
			handle(ctx, c)
		}()
	}
}

// apply parses a secret from SDS and swaps it in; an error NACKs it and
// keeps the last good one.
func (t *Tunnel) apply(ctx context.Context, name, version string, sec *tlsv3.Secret) error {
	var err error
	switch name {
	case t.cfg.SVIDName:
		var id *identity
		if id, err = parseIdentity(sec, version); err == nil {
			old := t.id.Swap(id)
			if old == nil || old.cert.Leaf.SerialNumber.Cmp(id.cert.Leaf.SerialNumber) != 0 {
				t.log.Info("certificate in use", "spiffe_id", id.id.String(), "serial", id.cert.Leaf.SerialNumber.Text(16), "not_after", id.notAfter.UTC().Format(time.RFC3339))
				t.metrics.rotations.Inc()
			}
		}
	case t.cfg.BundleName:
		var vc *validation
		if vc, err = parseValidation(sec, version); err == nil {
			t.vc.Store(vc)
			t.log.Info("validation context in use", "version", version, "roots", len(vc.roots), "crls", len(vc.crls))
			if t.cfg.DrainOnRevoke {
				t.drainRevoked(vc)
			}
		}
	case t.bundleSecretName():
		var z *authorizer
		if z, err = parseAuthorizer(ctx, sec, version, t.cfg.BundleKeyPEM, t.cfg.BundleKeyID, t.cfg.Decision); err == nil {
			t.authz.Store(z)
			t.log.Info("policy in use", "bundle", t.cfg.Bundle, "revision", z.revision)
		}
	default:
		err = fmt.Errorf("tunnel: unexpected secret %q", name)
	}
	t.mu.Lock()
	if err != nil {
		t.sdsErr[name] = "last update refused: " + err.Error()
		if !t.hasSecret(name) {
			t.sdsErr[name] = err.Error()
		}
	} else {
		t.sdsErr[name] = ""
	}
	t.mu.Unlock()
	result := "ack"
	if err != nil {
		result = "nack"
		t.log.Warn("secret refused (NACK); keeping the last good one", "name", name, "version", version, "error", err)
	}
	t.metrics.sdsUpdates.WithLabelValues(name, result).Inc()
	return err
}

func (t *Tunnel) hasSecret(name string) bool {
	switch name {
	case t.cfg.SVIDName:
		return t.id.Load() != nil
	case t.cfg.BundleName:
		return t.vc.Load() != nil
	default:
		return t.authz.Load() != nil
	}
}

func (t *Tunnel) sdsState(name string, up bool, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sdsUp[name] = up
	if !up && !t.hasSecret(name) {
		t.sdsErr[name] = "agent unreachable: " + reason
	}
}

// secrets is what a handshake uses, loaded once per connection.
type secrets struct {
	id    *identity
	vc    *validation
	authz *authorizer
}

// current returns the secrets in use, or why a listener that needs
// policy (or not) cannot accept.
func (t *Tunnel) current(needPolicy bool) (secrets, error) {
	s := secrets{id: t.id.Load(), vc: t.vc.Load(), authz: t.authz.Load()}
	var why []string
	if s.id == nil {
		why = append(why, "no certificate ("+t.problem(t.cfg.SVIDName)+")")
	} else if now := t.clock.Now(); !now.Before(s.id.notAfter) {
		why = append(why, "the certificate expired at "+s.id.notAfter.UTC().Format(time.RFC3339)+" and the agent has not sent a new one")
	}
	if s.vc == nil {
		why = append(why, "no validation context ("+t.problem(t.cfg.BundleName)+")")
	}
	if needPolicy && s.authz == nil {
		why = append(why, "no policy bundle ("+t.problem(t.bundleSecretName())+")")
	}
	if len(why) > 0 {
		return s, errors.New(strings.Join(why, "; "))
	}
	return s, nil
}

func (t *Tunnel) problem(name string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.sdsErr[name]; p != "" {
		return "SDS " + name + ": " + p
	}
	return "SDS " + name
}

// Ready reports whether every listener can accept, and if not, why, one
// reason per listener that cannot.
func (t *Tunnel) Ready() (bool, []string) {
	var reasons []string
	for _, l := range t.inbound {
		if _, err := t.current(true); err != nil {
			reasons = append(reasons, "inbound "+l.cfg.Name+": "+err.Error())
		}
	}
	for _, l := range t.out {
		if l.cfg.External != nil {
			continue // needs no secret
		}
		if _, err := t.current(l.cfg.Policy); err != nil {
			reasons = append(reasons, "outbound "+l.cfg.Name+": "+err.Error())
		}
	}
	sort.Strings(reasons)
	return len(reasons) == 0, reasons
}

// Handler serves /metrics (when the tunnel has its own registry: the
// tunnel's metrics, the Go runtime's and the process's), /healthz and
// /readyz (503 with the reasons while a listener cannot accept), as the
// server's and the agent's do.
func (t *Tunnel) Handler() http.Handler {
	g := t.gather
	if g == nil {
		g = prometheus.NewRegistry() // the caller serves the metrics of its Registerer
	}
	return meshmetrics.Handler(g, func(context.Context) (bool, string) {
		ok, reasons := t.Ready()
		return ok, strings.Join(reasons, "; ")
	})
}

// drainRevoked closes open connections whose peer's chain the new
// validation context revokes.
func (t *Tunnel) drainRevoked(vc *validation) {
	now := t.clock.Now()
	for _, c := range t.conns.list() {
		if c.peerChain == nil {
			continue
		}
		var re *RevokedError
		if err := vc.checkRevocation(c.peerChain, now); errors.As(err, &re) {
			t.log.Warn("closing a connection of a revoked peer", "listener", c.listener, "peer", c.peerID, "serial", re.Serial)
			t.events.Record(audit.Event{Actor: c.peerID, Action: "tunnel.drain", Subject: c.listener, Decision: audit.Deny, Reason: re.Error()})
			c.close()
		}
	}
}
