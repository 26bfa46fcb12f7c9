package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/testtool"
	meshpolicy "github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/tunnel"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// meshPolicy allows the principals of data.json, and plaintext only on
// the listener named "legacy".
const meshPolicy = `package envoy.authz

default allow := false

allow if input.attributes.source.principal in data.envoy.authz.allowed

allow if {
	input.attributes.contextExtensions.meshca_tunnel_authenticated == "false"
	input.attributes.contextExtensions.meshca_tunnel_listener == "legacy"
}
`

func meshFiles(allowed ...string) []*operatorpb.PolicyFile {
	if allowed == nil {
		allowed = []string{}
	}
	data, _ := json.Marshal(map[string]any{"allowed": allowed})
	return []*operatorpb.PolicyFile{{Path: "mesh.rego", Content: []byte(meshPolicy)}, {Path: "envoy/authz/data.json", Content: data}}
}

// echoService is a plain TCP service: it sends back what it reads, then
// closes its side.
func echoService(t *testing.T) string {
	t.Helper()
	return testtool.ServeTCP(t, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		_ = c.(*net.TCPConn).CloseWrite()
	})
}

// runTunnel starts a tunnel endpoint in-process, its events in a Memory.
func runTunnel(t *testing.T, cfg tunnel.Config) (*tunnel.Tunnel, *audit.Memory, *syncBuffer) {
	t.Helper()
	events, logs := &audit.Memory{}, &syncBuffer{}
	cfg.Audit, cfg.Log = events, slog.New(slog.NewTextHandler(logs, nil))
	tn, err := tunnel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tn.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("tunnel Run: %v", err)
		}
	})
	return tn, events, logs
}

func waitReady(t *testing.T, tn *tunnel.Tunnel) {
	t.Helper()
	waitUntil(t, 30*time.Second, "the tunnel is ready", func() bool { ok, _ := tn.Ready(); return ok })
}

// roundTrip sends data through addr and returns what comes back; an error
// when the connection is closed before the echo.
func roundTrip(addr string, data []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; err == nil && werr != nil && len(got) != len(data) {
		err = werr
	}
	if err == nil && len(got) == 0 && len(data) > 0 {
		err = io.EOF
	}
	return got, err
}

// meshFixture is a server, agents for workloads A and B, B's plain
// service behind B's inbound tunnel, and A's outbound tunnel to it.
type meshFixture struct {
	e                  *env
	key                *operatorpb.GetOPAKeyResponse
	idA, idB           string
	agentA, agentB     *agent.Agent
	tunA, tunB         *tunnel.Tunnel
	eventsA, eventsB   *audit.Memory
	logsB              *syncBuffer
	service            string
	strict, permissive string // B's inbound listeners
	legacy             string // B's PERMISSIVE listener named "legacy"
	outA               string // A's outbound listener
}

// newMeshFixture builds the fixture; handshake bounds both tunnels'
// handshakes (0: the default, 10 s).
func newMeshFixture(t *testing.T, ttl time.Duration, renewFraction float64, handshake time.Duration, allowed ...string) *meshFixture {
	e := startServer(t)
	ctx := tctx(t, time.Minute)
	f := &meshFixture{e: e, idA: "spiffe://example.org/ns/a/sa/client", idB: "spiffe://example.org/ns/b/sa/server"}
	if allowed == nil {
		allowed = []string{f.idA}
	}
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "mesh", Files: meshFiles(allowed...)}); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.key, err = e.op.GetOPAKey(ctx, &operatorpb.GetOPAKeyRequest{}); err != nil {
		t.Fatal(err)
	}
	tokA, tokB := e.token(), e.token()
	e.entry(agentIDFor(tokA), f.idA, ttl, "unix:uid:"+uid)
	e.entry(agentIDFor(tokB), f.idB, ttl, "unix:uid:"+uid)
	f.agentA = e.startAgent(tokA, renewFraction)
	f.agentB = e.startAgent(tokB, renewFraction)
	f.service = echoService(t)
	f.tunB, f.eventsB, f.logsB = runTunnel(t, tunnel.Config{Socket: f.agentB.SocketPath(), Bundle: "mesh",
		BundleKeyPEM: []byte(f.key.PublicKeyPem), BundleKeyID: f.key.Kid, HandshakeTimeout: handshake,
		Inbound: []tunnel.Inbound{
			{Name: "strict", Listen: "127.0.0.1:0", Target: f.service, Mode: tunnel.Strict},
			{Name: "permissive", Listen: "127.0.0.1:0", Target: f.service, Mode: tunnel.Permissive},
			{Name: "legacy", Listen: "127.0.0.1:0", Target: f.service, Mode: tunnel.Permissive},
		}})
	f.strict, f.permissive, f.legacy = f.tunB.Addr("strict").String(), f.tunB.Addr("permissive").String(), f.tunB.Addr("legacy").String()
	f.tunA, f.eventsA, _ = runTunnel(t, tunnel.Config{Socket: f.agentA.SocketPath(), HandshakeTimeout: handshake,
		Outbound: []tunnel.Outbound{{Name: "to-b", Listen: "127.0.0.1:0", Remote: f.strict, ExpectIDs: []spiffeid.ID{spiffeid.RequireFromString(f.idB)}}}})
	f.outA = f.tunA.Addr("to-b").String()
	waitReady(t, f.tunB)
	waitReady(t, f.tunA)
	return f
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// TestTunnelAToB: service A calls service B through A's outbound and B's
// inbound tunnel: bytes arrive intact both ways and B's tunnel audits A's
// SPIFFE ID; a policy push denying A refuses A's next connection within
// 2 s, and a rollback lets it through again.
func TestTunnelAToB(t *testing.T) {
	f := newMeshFixture(t, time.Hour, 0.5, 0)
	ctx := tctx(t, 2*time.Minute)

	data := randomBytes(4 << 20)
	got, err := roundTrip(f.outA, data)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("A→B: %d of %d bytes back, %v", len(got), len(data), err)
	}
	ev, err := f.eventsB.Wait(ctx, func(e audit.Event) bool { return e.Action == "tunnel.connect" && e.Decision == audit.Allow })
	if err != nil {
		t.Fatal(err)
	}
	if ev.Actor != f.idA || ev.Subject != f.idB || ev.Details["listener"] != "strict" || ev.Details["authenticated"] != "true" {
		t.Fatalf("B's audit event %+v", ev)
	}
	waitUntil(t, 10*time.Second, "B's tunnel logs the connection's end", func() bool {
		return strings.Contains(f.logsB.String(), "peer_id="+f.idA) && strings.Contains(f.logsB.String(), "bytes_up=4194304")
	})
	if _, err := f.eventsA.Wait(ctx, func(e audit.Event) bool {
		return e.Action == "tunnel.connect" && e.Decision == audit.Allow && e.Actor == f.idA && e.Subject == f.idB
	}); err != nil {
		t.Fatal(err)
	}

	// Deny A: the next connection is refused within 2 s of the push.
	if _, err := f.e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "mesh", Files: meshFiles()}); err != nil {
		t.Fatal(err)
	}
	pushed := time.Now()
	for {
		if _, err := roundTrip(f.outA, []byte("hello")); err != nil {
			break
		}
		if time.Since(pushed) > 2*time.Second {
			t.Fatal("A still reaches B 2 s after the policy push that denies it")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("denied %s after the push", time.Since(pushed))
	ev, err = f.eventsB.Wait(ctx, func(e audit.Event) bool { return e.Action == "tunnel.connect" && e.Decision == audit.Deny })
	if err != nil {
		t.Fatal(err)
	}
	if ev.Actor != f.idA || ev.Reason != "denied by the policy" || ev.Details["policy_revision"] != "2" {
		t.Fatalf("denial %+v", ev)
	}

	// Roll back: A gets through again.
	if _, err := f.e.op.RollbackBundle(ctx, &operatorpb.RollbackBundleRequest{Name: "mesh", Revision: 1}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "A reaches B after the rollback", func() bool {
		got, err := roundTrip(f.outA, []byte("again"))
		return err == nil && string(got) == "again"
	})
}

// TestTunnelStrictPermissive: STRICT refuses plaintext; PERMISSIVE takes
// it and asks the policy with the connection labelled unauthenticated (the
// policy allows that only on "legacy"), and still takes mTLS.
func TestTunnelStrictPermissive(t *testing.T) {
	f := newMeshFixture(t, time.Hour, 0.5, 0)
	ctx := tctx(t, time.Minute)
	if _, err := roundTrip(f.strict, []byte("plain")); err == nil {
		t.Fatal("STRICT forwarded plaintext")
	}
	if _, err := f.eventsB.Wait(ctx, func(e audit.Event) bool {
		return e.Decision == audit.Deny && e.Details["listener"] == "strict" && strings.Contains(e.Reason, "not a TLS handshake")
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(f.permissive, []byte("plain")); err == nil {
		t.Fatal("the policy let an unauthenticated connection through on listener permissive")
	}
	if _, err := f.eventsB.Wait(ctx, func(e audit.Event) bool {
		return e.Decision == audit.Deny && e.Details["listener"] == "permissive" && e.Details["authenticated"] == "false" && e.Reason == "denied by the policy"
	}); err != nil {
		t.Fatal(err)
	}
	got, err := roundTrip(f.legacy, []byte("plain"))
	if err != nil || string(got) != "plain" {
		t.Fatalf("PERMISSIVE legacy plaintext: %q, %v", got, err)
	}
	ev, err := f.eventsB.Wait(ctx, func(e audit.Event) bool { return e.Decision == audit.Allow && e.Details["listener"] == "legacy" })
	if err != nil {
		t.Fatal(err)
	}
	if ev.Details["authenticated"] != "false" || strings.HasPrefix(ev.Actor, "spiffe://") {
		t.Fatalf("plaintext allowed as %+v", ev)
	}

	// mTLS on a PERMISSIVE listener: A's outbound tunnel to it.
	tunA2, _, _ := runTunnel(t, tunnel.Config{Socket: f.agentA.SocketPath(),
		Outbound: []tunnel.Outbound{{Name: "to-b", Listen: "127.0.0.1:0", Remote: f.permissive, ExpectIDs: []spiffeid.ID{spiffeid.RequireFromString(f.idB)}}}})
	waitReady(t, tunA2)
	got, err = roundTrip(tunA2.Addr("to-b").String(), []byte("mtls"))
	if err != nil || string(got) != "mtls" {
		t.Fatalf("PERMISSIVE mTLS: %q, %v", got, err)
	}
}

// TestTunnelRefusesBadClients: garbage instead of a ClientHello, a client
// certificate of another trust domain and a slowloris handshake are
// refused within the handshake timeout, while a connection already open
// and new ones of A keep working; the readiness endpoint reports ready.
func TestTunnelRefusesBadClients(t *testing.T) {
	f := newMeshFixture(t, time.Hour, 0.5, time.Second) // short, for the slowloris
	ctx := tctx(t, time.Minute)

	// A long-lived connection through both tunnels.
	long, err := net.Dial("tcp", f.outA)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	echo := func(c net.Conn, msg string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: %q, %v", msg, buf, err)
		}
	}
	echo(long, "before")

	// Closed by the tunnel (at most a TLS alert first, never the
	// service's echo), within bound (the handshake timeout is 1 s).
	refused := func(c net.Conn, what string) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: still open after 10 s", what)
		}
		if len(b) > 7 {
			t.Fatalf("%s: got %d bytes (%q): not refused", what, len(b), b)
		}
	}

	// Garbage, once like an HTTP request, once like a broken TLS record.
	for _, garbage := range [][]byte{[]byte("GET / HTTP/1.1\r\nHost: b\r\n\r\n"), {0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5}} {
		c, err := net.Dial("tcp", f.strict)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(garbage)
		refused(c, "garbage")
		c.Close()
	}

	// Slowloris: one byte of a handshake, then nothing.
	slow, err := net.Dial("tcp", f.strict)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = slow.Write([]byte{0x16})
	refused(slow, "slowloris")
	slow.Close()
	if _, err := f.eventsB.Wait(ctx, func(e audit.Event) bool {
		return e.Decision == audit.Deny && strings.Contains(e.Reason, "timeout")
	}); err != nil {
		t.Fatal(err)
	}

	// A client certificate of another trust domain.
	other := foreignSVID(t, "other.org", "/ns/a/sa/client")
	fc, err := tls.Dial("tcp", f.strict, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: []tls.Certificate{other}})
	if err == nil {
		refused(fc, "foreign trust domain")
		fc.Close()
	}
	if _, err := f.eventsB.Wait(ctx, func(e audit.Event) bool {
		return e.Decision == audit.Deny && e.Details["listener"] == "strict" && strings.Contains(e.Reason, "peer certificate")
	}); err != nil {
		t.Fatal(err)
	}

	// Nothing else disturbed.
	echo(long, "after")
	if got, err := roundTrip(f.outA, []byte("new")); err != nil || string(got) != "new" {
		t.Fatalf("a new connection after the bad ones: %q, %v", got, err)
	}
	srv := httptest.NewServer(f.tunB.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/readyz %d", resp.StatusCode)
	}
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// The long-lived connection is open (a new one may still be closing).
	active := regexp.MustCompile(`(?m)^meshca_tunnel_active_connections\{direction="inbound",listener="strict"\} ([0-9]+)$`).FindStringSubmatch(string(m))
	if !strings.Contains(string(m), `meshca_tunnel_connections_total{direction="inbound",listener="strict",result="handshake_failed"}`) ||
		active == nil || active[1] == "0" {
		t.Fatalf("metrics:\n%s", m)
	}
}

// foreignSVID makes a self-signed CA of another trust domain and an SVID
// it issued, as a TLS client certificate.
func foreignSVID(t *testing.T, td, path string) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://" + td + path)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}, caCert, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: k}
}

// TestTunnelRotation: with a one-minute TTL renewed at a tenth of it,
// connections keep working across three rotations of both SVIDs: a
// connection opened before stays up, and every new one (one every 50 ms)
// succeeds; each side's audit shows at least four serials of the other.
func TestTunnelRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("rotation takes about 30 s")
	}
	f := newMeshFixture(t, time.Minute, 0.1, 0)
	ctx := tctx(t, 3*time.Minute)
	long, err := net.Dial("tcp", f.outA)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	// The serials each side saw of the other.
	serialsOf := func(events *audit.Memory, peer string) map[string]bool {
		s := map[string]bool{}
		for _, e := range events.Events() {
			if e.Action == "tunnel.connect" && (e.Actor == peer || e.Subject == peer) && e.Details["peer_serial"] != "" {
				s[e.Details["peer_serial"]] = true
			}
		}
		return s
	}
	serials := func() map[string]bool { return serialsOf(f.eventsB, f.idA) }
	n := 0
	for len(serials()) < 4 || len(serialsOf(f.eventsA, f.idB)) < 4 {
		if ctx.Err() != nil {
			t.Fatalf("only %d serials of A seen after %d connections", len(serials()), n)
		}
		msg := []byte("rotation")
		got, err := roundTrip(f.outA, msg)
		if err != nil || !bytes.Equal(got, msg) {
			for _, e := range append(f.eventsA.Events(), f.eventsB.Events()...) {
				if e.Decision == audit.Deny {
					t.Logf("refusal: %+v", e)
				}
			}
			t.Fatalf("connection %d failed during rotation: %q, %v", n, got, err)
		}
		n++
		_ = long.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := long.Write([]byte{byte(n)}); err != nil {
			t.Fatalf("the long-lived connection: %v", err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(long, b); err != nil || b[0] != byte(n) {
			t.Fatalf("the long-lived connection: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // pacing the load, not synchronising
	}
	for _, e := range append(f.eventsB.Events(), f.eventsA.Events()...) {
		if e.Decision == audit.Deny {
			t.Fatalf("a connection was refused during rotation: %+v", e)
		}
	}
	t.Logf("%d connections over %d serials of A", n, len(serials()))
}

// The tunnel fails closed: before its secrets arrive (here: a bundle name
// the agent never gets) a listener accepts nothing and /readyz says why.
func TestTunnelFailsClosed(t *testing.T) {
	f := newMeshFixture(t, time.Hour, 0.5, 0)
	tn, events, _ := runTunnel(t, tunnel.Config{Socket: f.agentB.SocketPath(), Bundle: "absent",
		BundleKeyPEM: []byte(f.key.PublicKeyPem), BundleKeyID: f.key.Kid,
		Inbound: []tunnel.Inbound{{Name: "in", Listen: "127.0.0.1:0", Target: f.service}}})
	waitUntil(t, 20*time.Second, "the certificate arrives", func() bool {
		_, reasons := tn.Ready()
		return len(reasons) == 1 && !strings.Contains(reasons[0], "no certificate") && strings.Contains(reasons[0], "opa-bundle:absent")
	})
	if _, err := roundTrip(tn.Addr("in").String(), []byte("x")); err == nil {
		t.Fatal("a listener without policy forwarded a connection")
	}
	if _, err := events.Wait(tctx(t, 10*time.Second), func(e audit.Event) bool {
		return e.Decision == audit.Deny && strings.Contains(e.Reason, "not ready") && strings.Contains(e.Reason, "no policy bundle")
	}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tn.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "opa-bundle:absent") {
		t.Fatalf("/readyz %d %s", resp.StatusCode, body)
	}
}

// TestTunnelTenantIsolation pushes deploy/examples/tunnel/tenant-isolation
// as it is: a shop service reaches another shop service and is refused by
// a bank one, whatever the network allows; the refusal is audited with
// both SPIFFE IDs.
func TestTunnelTenantIsolation(t *testing.T) {
	e := startServer(t)
	ctx := tctx(t, 2*time.Minute)
	files, err := meshpolicy.ReadFiles("../../deploy/examples/tunnel/tenant-isolation", meshpolicy.DefaultMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	pb := make([]*operatorpb.PolicyFile, len(files))
	for i, f := range files {
		pb[i] = &operatorpb.PolicyFile{Path: f.Path, Content: f.Content}
	}
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "mesh", Files: pb}); err != nil {
		t.Fatal(err)
	}
	key, err := e.op.GetOPAKey(ctx, &operatorpb.GetOPAKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	const web, db, ledger = "spiffe://example.org/ns/shop-web/sa/web", "spiffe://example.org/ns/shop-db/sa/db", "spiffe://example.org/ns/bank-ledger/sa/ledger"
	agentFor := func(id string) *agent.Agent {
		tok := e.token()
		e.entry(agentIDFor(tok), id, time.Hour, "unix:uid:"+uid)
		return e.startAgent(tok, 0.5)
	}
	service := echoService(t)
	inbound := func(id string) (*tunnel.Tunnel, *audit.Memory) {
		tn, ev, _ := runTunnel(t, tunnel.Config{Socket: agentFor(id).SocketPath(), Bundle: "mesh", BundleKeyPEM: []byte(key.PublicKeyPem), BundleKeyID: key.Kid,
			Inbound: []tunnel.Inbound{{Name: "in", Listen: "127.0.0.1:0", Target: service}}})
		waitReady(t, tn)
		return tn, ev
	}
	dbTun, _ := inbound(db)
	ledgerTun, ledgerEvents := inbound(ledger)
	webTun, _, _ := runTunnel(t, tunnel.Config{Socket: agentFor(web).SocketPath(), Outbound: []tunnel.Outbound{
		{Name: "db", Listen: "127.0.0.1:0", Remote: dbTun.Addr("in").String(), ExpectIDs: []spiffeid.ID{spiffeid.RequireFromString(db)}},
		{Name: "ledger", Listen: "127.0.0.1:0", Remote: ledgerTun.Addr("in").String(), ExpectIDs: []spiffeid.ID{spiffeid.RequireFromString(ledger)}},
	}})
	waitReady(t, webTun)
	if got, err := roundTrip(webTun.Addr("db").String(), []byte("order")); err != nil || string(got) != "order" {
		t.Fatalf("shop-web → shop-db: %q, %v", got, err)
	}
	if _, err := roundTrip(webTun.Addr("ledger").String(), []byte("steal")); err == nil {
		t.Fatal("shop-web reached bank-ledger")
	}
	ev, err := ledgerEvents.Wait(ctx, func(e audit.Event) bool { return e.Action == "tunnel.connect" && e.Decision == audit.Deny })
	if err != nil {
		t.Fatal(err)
	}
	if ev.Actor != web || ev.Subject != ledger || ev.Reason != "denied by the policy" {
		t.Fatalf("the refusal's audit event %+v", ev)
	}
}

// The tunnel asks for the agent's bundle secrets by the agent's name.
func TestTunnelBundleSecretPrefix(t *testing.T) {
	if tunnel.BundleSecretPrefix != agent.OPABundleSecretPrefix {
		t.Fatalf("tunnel.BundleSecretPrefix %q, agent.OPABundleSecretPrefix %q", tunnel.BundleSecretPrefix, agent.OPABundleSecretPrefix)
	}
}
