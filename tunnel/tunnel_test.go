package tunnel

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/sds"
	"google.golang.org/grpc"
)

// These tests feed a tunnel from a real sds.Server on a Unix socket whose
// secrets the test controls (the agent's SDS is that server with the
// agent's Source), so that they can revoke, corrupt and expire what the
// real agent cannot yet (revocation lands with the rotation issue): a
// test CA signs the SVIDs and CRLs, policy.Build signs the OPA bundle.

// fakeAgent is an SDS server with settable secrets.
type fakeAgent struct {
	t      testing.TB
	socket string
	srv    *sds.Server
	mu     sync.Mutex
	res    map[string]*sds.Resource
	gs     *grpc.Server
	done   chan struct{}
}

func (f *fakeAgent) Resolve(_ context.Context, name string) (sds.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := f.res[name]; ok {
		return sds.Grant(r, name), nil
	}
	return sds.Wait(name), nil
}

func (f *fakeAgent) Names(context.Context) ([]string, []string, error) { return nil, nil, nil }

func newFakeAgent(t testing.TB) *fakeAgent {
	dir, err := os.MkdirTemp("", "tun")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeAgent{t: t, socket: filepath.Join(dir, "agent.sock"), res: map[string]*sds.Resource{}}
	if f.srv, err = sds.New(sds.Config{Secrets: func(context.Context, *corev3.Node) (sds.Source, error) { return f, nil }}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.srv.Close)
	lis, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	f.gs, f.done = grpc.NewServer(), make(chan struct{})
	f.srv.Register(f.gs)
	go func() { defer close(f.done); _ = f.gs.Serve(lis) }()
	t.Cleanup(f.stop)
	return f
}

// stop takes the agent away.
func (f *fakeAgent) stop() {
	f.gs.Stop()
	<-f.done
}

var versions = map[string]int{}

func (f *fakeAgent) set(sec *tlsv3.Secret) {
	f.t.Helper()
	f.mu.Lock()
	versions[sec.Name]++
	r, err := sds.NewResource(sec, sec.Name+"-"+string(rune('0'+versions[sec.Name])))
	if err != nil {
		f.mu.Unlock()
		f.t.Fatal(err)
	}
	f.res[sec.Name] = r
	f.mu.Unlock()
	f.srv.Notify(sec.Name)
}

func (f *fakeAgent) setSVID(chain []*x509.Certificate, key *ecdsa.PrivateKey) {
	f.t.Helper()
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		f.t.Fatal(err)
	}
	sec, err := sds.TLSCertificateSecret("default", rawOf(chain), keyDER)
	if err != nil {
		f.t.Fatal(err)
	}
	f.set(sec)
}

func (f *fakeAgent) setValidation(ca *testCA, crls ...[]byte) {
	f.t.Helper()
	p := sds.ValidationContextParams{Roots: [][]byte{ca.root.Raw}, CRLs: crls}
	if len(crls) > 0 {
		p.Intermediates = [][]byte{ca.inter.Raw}
	}
	sec, err := sds.ValidationContextSecret("ROOTCA", p)
	if err != nil {
		f.t.Fatal(err)
	}
	f.set(sec)
}

const allowAll = "package envoy.authz\n\ndefault allow := false\n\nallow if startswith(input.attributes.source.principal, \"spiffe://example.org/\")\n"

func (f *fakeAgent) setPolicy(key *ecdsa.PrivateKey, rev uint64, rego string) {
	f.t.Helper()
	b, err := policy.Build([]policy.File{{Path: "p.rego", Content: []byte(rego)}}, policy.BuildOptions{Revision: rev, Key: key, KeyID: "k1"})
	if err != nil {
		f.t.Fatal(err)
	}
	f.set(&tlsv3.Secret{Name: BundleSecretPrefix + "mesh", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b.Bytes}}}}})
}

func keyPEM(t testing.TB, k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return policy.PublicKeyPEM(der)
}

func echo(t testing.TB) string {
	return testtool.ServeTCP(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

func start(t testing.TB, cfg Config) (*Tunnel, *audit.Memory) {
	t.Helper()
	ev := &audit.Memory{}
	cfg.Audit, cfg.Log = ev, slog.New(slog.DiscardHandler)
	tn, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tn.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return tn, ev
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// dialAs opens an mTLS connection to addr with a client SVID and checks
// that it echoes; it returns the connection, or the error.
func dialAs(addr string, chain []*x509.Certificate, key *ecdsa.PrivateKey) (net.Conn, error) {
	c, err := tls.Dial("tcp", addr, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		Certificates: []tls.Certificate{{Certificate: rawOf(chain), PrivateKey: key}}})
	if err != nil {
		return nil, err
	}
	if err := echoOnce(c, "ping"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func echoOnce(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != msg {
		return errors.New("bad echo")
	}
	return nil
}

type fixture struct {
	agent     *fakeAgent
	ca        *testCA
	policyKey *ecdsa.PrivateKey
	server    []*x509.Certificate
	serverKey *ecdsa.PrivateKey
	target    string
}

func newFixture(t testing.TB, now time.Time) *fixture {
	f := &fixture{agent: newFakeAgent(t), ca: newTestCA(t, "example.org", now), target: echo(t)}
	f.policyKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.server, f.serverKey = f.ca.svidKey("/ns/b/sa/server")
	f.agent.setSVID(f.server, f.serverKey)
	f.agent.setValidation(f.ca, f.ca.crl(f.ca.root, f.ca.rootK, now.Add(24*time.Hour)), f.ca.crl(f.ca.inter, f.ca.interK, now.Add(24*time.Hour)))
	f.agent.setPolicy(f.policyKey, 1, allowAll)
	return f
}

func (f *fixture) config(t testing.TB) Config {
	return Config{Socket: f.agent.socket, Bundle: "mesh", BundleKeyPEM: keyPEM(t, f.policyKey), BundleKeyID: "k1",
		HandshakeTimeout: 2 * time.Second, Inbound: []Inbound{{Name: "in", Listen: "127.0.0.1:0", Target: f.target}}}
}

// TestRevocationThroughSDS: a CRL pushed over SDS that revokes A's serial
// refuses A's next connection (audited with the serial) while a fresh
// SVID of A is accepted; with DrainOnRevoke the open connection of the
// revoked certificate is closed, without it it keeps running.
func TestRevocationThroughSDS(t *testing.T) {
	now := time.Now()
	f := newFixture(t, now)
	cfg := f.config(t)
	cfg.DrainOnRevoke = true
	drain, events := start(t, cfg)
	keep, _ := start(t, f.config(t))
	waitFor(t, "ready", func() bool { a, _ := drain.Ready(); b, _ := keep.Ready(); return a && b })

	a, aKey := f.ca.svidKey("/ns/a/sa/client")
	openDrain, err := dialAs(drain.Addr("in").String(), a, aKey)
	if err != nil {
		t.Fatal(err)
	}
	defer openDrain.Close()
	openKeep, err := dialAs(keep.Addr("in").String(), a, aKey)
	if err != nil {
		t.Fatal(err)
	}
	defer openKeep.Close()

	f.agent.setValidation(f.ca, f.ca.crl(f.ca.root, f.ca.rootK, now.Add(24*time.Hour)), f.ca.crl(f.ca.inter, f.ca.interK, now.Add(24*time.Hour), a[0]))
	waitFor(t, "A's next connection is refused", func() bool {
		c, err := dialAs(drain.Addr("in").String(), a, aKey)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	ev, err := events.Wait(t.Context(), func(e audit.Event) bool { return e.Decision == audit.Deny && strings.Contains(e.Reason, "revoked") })
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ev.Reason, a[0].SerialNumber.String()) {
		t.Fatalf("the refusal does not name the serial: %+v", ev)
	}
	fresh, freshKey := f.ca.svidKey("/ns/a/sa/client")
	c, err := dialAs(drain.Addr("in").String(), fresh, freshKey)
	if err != nil {
		t.Fatalf("a fresh SVID of A: %v", err)
	}
	c.Close()

	// Drained: the open connection ends; the other tunnel's keeps running.
	_ = openDrain.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := openDrain.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("the revoked peer's connection is still open: %v", err)
	}
	if _, err := events.Wait(t.Context(), func(e audit.Event) bool { return e.Action == "tunnel.drain" }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other tunnel has the CRL", func() bool {
		c, err := dialAs(keep.Addr("in").String(), a, aKey)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if err := echoOnce(openKeep, "still here"); err != nil {
		t.Fatalf("without --drain-on-revoke the open connection ended: %v", err)
	}
}

// TestLastGoodSecrets: a secret that does not parse (garbage, an SM2
// chain) is NACKed and the last good one keeps serving; when the agent
// goes away the tunnel keeps serving until its certificate expires (on
// the injected clock), then refuses and says why.
func TestLastGoodSecrets(t *testing.T) {
	clock := clockwork.NewFakeClock()
	f := newFixture(t, clock.Now())
	cfg := f.config(t)
	cfg.Clock = clock
	tn, events := start(t, cfg)
	waitFor(t, "ready", func() bool { ok, _ := tn.Ready(); return ok })
	a, aKey := f.ca.svidKey("/ns/a/sa/client")
	check := func(what string) {
		t.Helper()
		c, err := dialAs(tn.Addr("in").String(), a, aKey)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		c.Close()
	}
	check("initial")

	// Garbage in place of the certificate: NACKed, old one kept.
	f.agent.set(&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("garbage")}},
		PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("garbage")}}}}})
	waitFor(t, "the garbage is NACKed", func() bool { return f.agent.srv.Stats().NACKs >= 1 })
	check("after a NACKed certificate")
	// A policy bundle signed by another key: NACKed, old policy kept.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.agent.setPolicy(other, 2, "package envoy.authz\n\ndefault allow := false\n")
	waitFor(t, "the forged bundle is NACKed", func() bool { return f.agent.srv.Stats().NACKs >= 2 })
	check("after a NACKed bundle")
	if ok, reasons := tn.Ready(); !ok {
		t.Fatalf("not ready after NACKs: %v", reasons)
	}

	// The agent goes away: the last good secrets keep serving.
	f.agent.stop()
	check("with the agent away")
	// Until the certificate expires.
	clock.Advance(2 * time.Hour)
	ok, reasons := tn.Ready()
	if ok || len(reasons) != 1 || !strings.Contains(reasons[0], "expired") {
		t.Fatalf("Ready after expiry: %v %v", ok, reasons)
	}
	if c, err := dialAs(tn.Addr("in").String(), a, aKey); err == nil {
		c.Close()
		t.Fatal("a connection accepted with an expired certificate")
	}
	if _, err := events.Wait(t.Context(), func(e audit.Event) bool {
		return e.Decision == audit.Deny && strings.Contains(e.Reason, "expired")
	}); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyInputShape: the policy sees OPA-Envoy's attributes (source and
// destination principal and address) and the tunnel's context
// extensions; a policy that checks all of them allows.
func TestPolicyInputShape(t *testing.T) {
	f := newFixture(t, time.Now())
	f.agent.setPolicy(f.policyKey, 2, `package envoy.authz

default allow := false

allow if {
	input.attributes.source.principal == "spiffe://example.org/ns/a/sa/client"
	input.attributes.destination.principal == "spiffe://example.org/ns/b/sa/server"
	input.attributes.source.address.socketAddress.address == "127.0.0.1"
	input.attributes.source.address.socketAddress.portValue > 0
	input.attributes.destination.address.socketAddress.portValue > 0
	input.attributes.contextExtensions == {"meshca_tunnel_listener": "in", "meshca_tunnel_direction": "inbound", "meshca_tunnel_mode": "STRICT", "meshca_tunnel_authenticated": "true"}
	input.version.ext_authz == "v3"
}
`)
	tn, _ := start(t, f.config(t))
	waitFor(t, "ready with revision 2", func() bool { z := tn.authz.Load(); return z != nil && z.revision == 2 })
	a, aKey := f.ca.svidKey("/ns/a/sa/client")
	c, err := dialAs(tn.Addr("in").String(), a, aKey)
	if err != nil {
		t.Fatalf("the policy checking the input's shape denied: %v", err)
	}
	c.Close()
	other, otherKey := f.ca.svidKey("/ns/c/sa/other")
	if c, err := dialAs(tn.Addr("in").String(), other, otherKey); err == nil {
		c.Close()
		t.Fatal("another principal allowed")
	}
}

// An SM2 certificate from SDS is refused with a clear message.
func TestSM2Refused(t *testing.T) {
	f := newFixture(t, time.Now())
	f.agent.mu.Lock()
	delete(f.agent.res, "default")
	f.agent.mu.Unlock()
	tn, _ := start(t, f.config(t))
	sec := sm2Secret(t)
	f.agent.set(sec)
	waitFor(t, "the SM2 certificate is refused", func() bool {
		_, reasons := tn.Ready()
		return len(reasons) == 1 && strings.Contains(reasons[0], "SM2")
	})
}

// outsideService is a TLS echo service outside the mesh, with a
// certificate for name from a CA of its own; it returns its address and
// the CA's pool.
func outsideService(t testing.TB, name string) (string, *x509.CertPool) {
	t.Helper()
	ca := newTestCA(t, "outside.test", time.Now())
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := ca.sign(&x509.Certificate{DNSNames: []string{name}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, &k.PublicKey, ca.inter, ca.interK)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, ca.inter.Raw}, PrivateKey: k}}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	pool := x509.NewCertPool()
	pool.AddCert(ca.root)
	return ln.Addr().String(), pool
}

func freeAddr(t testing.TB) string { return testtool.FreePort(t) }

// TestEgressGateway: a gateway's inbound listener takes mTLS from mesh
// workloads (its policy decides who may leave) and forwards to its own
// external outbound listener, which originates TLS to an outside service
// verified by its CA and name. A wrong name is refused.
func TestEgressGateway(t *testing.T) {
	f := newFixture(t, time.Now())
	outside, pool := outsideService(t, "api.outside.test")
	egress, wrong := freeAddr(t), freeAddr(t)
	cfg := f.config(t)
	cfg.Inbound = []Inbound{{Name: "mesh", Listen: "127.0.0.1:0", Target: egress}}
	cfg.Outbound = []Outbound{
		{Name: "api", Listen: egress, Remote: outside, External: &External{ServerName: "api.outside.test", Roots: pool}},
		{Name: "wrong", Listen: wrong, Remote: outside, External: &External{ServerName: "evil.outside.test", Roots: pool}},
	}
	gw, events := start(t, cfg)
	waitFor(t, "ready", func() bool { ok, _ := gw.Ready(); return ok })
	a, aKey := f.ca.svidKey("/ns/a/sa/client")
	c, err := dialAs(gw.Addr("mesh").String(), a, aKey)
	if err != nil {
		t.Fatalf("a mesh workload through the egress gateway: %v", err)
	}
	c.Close()
	if _, err := events.Wait(t.Context(), func(e audit.Event) bool {
		return e.Decision == audit.Allow && e.Details["listener"] == "api" && e.Subject == "api.outside.test"
	}); err != nil {
		t.Fatal(err)
	}
	p, err := net.Dial("tcp", wrong)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := echoOnce(p, "x"); err == nil {
		t.Fatal("TLS to a server without the expected name")
	}
	if _, err := New(Config{Socket: "s", Outbound: []Outbound{{Listen: "127.0.0.1:0", Remote: outside, Policy: true, External: &External{ServerName: "x"}}}}); err == nil {
		t.Fatal("an external remote with policy accepted")
	}
}

// TestOutboundPolicy: an outbound listener without expected IDs lets the
// policy decide on the remote's ID (source: this workload, destination:
// the remote, direction outbound).
func TestOutboundPolicy(t *testing.T) {
	f := newFixture(t, time.Now())
	f.agent.setPolicy(f.policyKey, 2, `package envoy.authz

default allow := false

allow if input.attributes.contextExtensions.meshca_tunnel_direction == "inbound"

allow if {
	input.attributes.contextExtensions.meshca_tunnel_direction == "outbound"
	input.attributes.contextExtensions.meshca_tunnel_listener == "ok"
	input.attributes.source.principal == "spiffe://example.org/ns/b/sa/server"
	input.attributes.destination.principal == "spiffe://example.org/ns/b/sa/server"
}
`)
	in, _ := start(t, f.config(t))
	cfg := f.config(t)
	cfg.Inbound = nil
	cfg.Outbound = []Outbound{
		{Name: "ok", Listen: "127.0.0.1:0", Remote: in.Addr("in").String(), Policy: true},
		{Name: "no", Listen: "127.0.0.1:0", Remote: in.Addr("in").String(), Policy: true},
	}
	out, events := start(t, cfg)
	waitFor(t, "revision 2 in both", func() bool {
		a, b := in.authz.Load(), out.authz.Load()
		return a != nil && b != nil && a.revision == 2 && b.revision == 2
	})
	try := func(name string) error {
		c, err := net.Dial("tcp", out.Addr(name).String())
		if err != nil {
			return err
		}
		defer c.Close()
		return echoOnce(c, "x")
	}
	if err := try("ok"); err != nil {
		t.Fatalf("outbound ok: %v", err)
	}
	if err := try("no"); err == nil {
		t.Fatal("outbound no: the policy's denial did not hold")
	}
	if _, err := events.Wait(t.Context(), func(e audit.Event) bool {
		return e.Decision == audit.Deny && e.Details["listener"] == "no" && e.Subject == "spiffe://example.org/ns/b/sa/server" && e.Reason == "denied by the policy"
	}); err != nil {
		t.Fatal(err)
	}
}
