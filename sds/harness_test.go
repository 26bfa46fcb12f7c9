package sds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

type anypbAny = anypb.Any

// ---- a changeable in-memory Source ----

// fakeStore holds every caller's secrets; callers are told apart by
// their Envoy node ID (the agent uses the peer's credentials instead).
type fakeStore struct {
	mu       sync.Mutex
	callers  map[string]map[string]fakeEntry
	resolves map[string]int // caller → Resolve calls
	resolved chan string    // "caller/name" of each Resolve, when not nil
	srv      *Server
}

type fakeEntry struct {
	status Status
	res    *Resource
	reason string
	topic  string // defaults to "<caller>/<name>"
}

func newFakeStore() *fakeStore {
	return &fakeStore{callers: map[string]map[string]fakeEntry{}, resolves: map[string]int{}}
}

func namesTopic(caller string) string { return "names/" + caller }

// set changes one caller's name and notifies its topic (and the names
// topic: the caller's list of names may have changed).
func (f *fakeStore) set(caller, name string, e fakeEntry) {
	f.mu.Lock()
	m := f.callers[caller]
	if m == nil {
		m = map[string]fakeEntry{}
		f.callers[caller] = m
	}
	if e.topic == "" {
		e.topic = caller + "/" + name
	}
	m[name] = e
	srv := f.srv
	f.mu.Unlock()
	if srv != nil {
		srv.Notify(e.topic, namesTopic(caller))
	}
}

func (f *fakeStore) grant(caller, name string, r *Resource) {
	f.set(caller, name, fakeEntry{status: Granted, res: r})
}

func (f *fakeStore) resolveCount(caller string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resolves[caller]
}

func (f *fakeStore) source(caller string) Source { return &fakeSource{f: f, caller: caller} }

type fakeSource struct {
	f      *fakeStore
	caller string
}

func (s *fakeSource) Resolve(_ context.Context, name string) (Result, error) {
	s.f.mu.Lock()
	s.f.resolves[s.caller]++
	e, ok := s.f.callers[s.caller][name]
	ch := s.f.resolved
	s.f.mu.Unlock()
	if ch != nil {
		ch <- s.caller + "/" + name
	}
	if !ok {
		return Refuse("no such name for "+s.caller, namesTopic(s.caller)), nil
	}
	switch e.status {
	case Granted:
		return Grant(e.res, e.topic, namesTopic(s.caller)), nil
	case Refused:
		return Refuse(e.reason, e.topic, namesTopic(s.caller)), nil
	default:
		return Wait(e.topic, namesTopic(s.caller)), nil
	}
}

func (s *fakeSource) Names(context.Context) ([]string, []string, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	var names []string
	for n, e := range s.f.callers[s.caller] {
		if e.status != Refused {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, []string{namesTopic(s.caller)}, nil
}

// ---- PKI for tests ----

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func (c testCA) der() []byte { return c.cert.Raw }

func newRoot(t fatalT, name string) testCA {
	t.Helper()
	return newCA(t, name, nil)
}

func newCA(t fatalT, name string, parent *testCA) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: key}
}

// leaf issues an X509-SVID for id; it returns the chain (leaf first, then
// the issuer if it is not self-signed, i.e. an intermediate) and the
// PKCS#8 key.
func (c testCA) leaf(t fatalT, id string, serial int64) (chain [][]byte, key []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &k.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	chain = [][]byte{der}
	if string(c.cert.RawIssuer) != string(c.cert.RawSubject) {
		chain = append(chain, c.cert.Raw)
	}
	return chain, pk
}

func (c testCA) crl(t fatalT, number int64, revoked ...*big.Int) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(number), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: entries,
	}, c.cert, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// testPKI is a 3-level hierarchy: root → intermediate → leaves.
type testPKI struct {
	root, inter testCA
}

func newPKI(t fatalT) testPKI {
	t.Helper()
	root := newRoot(t, "test root")
	return testPKI{root: root, inter: newCA(t, "test intermediate", &root)}
}

// svid is a tls_certificate resource for id, version v.
func (p testPKI) svid(t fatalT, name, id, version string) *Resource {
	t.Helper()
	chain, key := p.inter.leaf(t, id, time.Now().UnixNano())
	sec, err := TLSCertificateSecret(name, chain, key)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewResource(sec, version)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// bundle is a validation context resource with the root and both CRLs.
func (p testPKI) bundle(t fatalT, version string, crlNumber int64) *Resource {
	t.Helper()
	sec, err := ValidationContextSecret("ROOTCA", ValidationContextParams{
		Roots: [][]byte{p.root.der()}, Intermediates: [][]byte{p.inter.der()},
		CRLs: [][]byte{p.root.crl(t, crlNumber), p.inter.crl(t, crlNumber)},
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewResource(sec, version)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// ---- the server on a temp Unix socket ----

type harness struct {
	t      *testing.T
	store  *fakeStore
	srv    *Server
	conn   *grpc.ClientConn
	client secretv3.SecretDiscoveryServiceClient
	socket string

	mu     sync.Mutex
	audits []AuditEvent
	events chan RequestEvent
	early  []RequestEvent // received by waitRequest while waiting for another
}

func newHarness(t *testing.T, mod func(*Config), opts ...grpc.ServerOption) *harness {
	t.Helper()
	h := &harness{t: t, store: newFakeStore(), events: make(chan RequestEvent, 4096)}
	cfg := Config{
		Secrets: func(_ context.Context, node *corev3.Node) (Source, error) {
			return h.store.source(node.GetId()), nil
		},
		Audit: func(_ context.Context, e AuditEvent) {
			h.mu.Lock()
			h.audits = append(h.audits, e)
			h.mu.Unlock()
		},
		OnRequest: func(_ context.Context, e RequestEvent) {
			select {
			case h.events <- e:
			default:
				t.Errorf("request events overflow")
			}
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	h.store.srv = srv
	dir, err := os.MkdirTemp("", "sds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h.socket = filepath.Join(dir, "sds.sock")
	lis, err := net.Listen("unix", h.socket)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	srv.Register(gs)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	h.conn = h.dial()
	h.client = secretv3.NewSecretDiscoveryServiceClient(h.conn)
	t.Cleanup(func() {
		h.conn.Close()
		gs.Stop()
		if err := <-served; err != nil {
			t.Errorf("grpc Serve: %v", err)
		}
		srv.Close()
	})
	return h
}

func (h *harness) dial() *grpc.ClientConn {
	h.t.Helper()
	conn, err := grpc.NewClient("unix://"+h.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	return conn
}

// waitRequest waits for the server to have handled a request of that
// kind from that node.
func (h *harness) waitRequest(node string, kind RequestKind) RequestEvent {
	h.t.Helper()
	for i, e := range h.early {
		if e.NodeID == node && e.Kind == kind {
			h.early = slices.Delete(h.early, i, i+1)
			return e
		}
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case e := <-h.events:
			if e.NodeID == node && e.Kind == kind {
				return e
			}
			h.early = append(h.early, e)
		case <-timeout.C:
			h.t.Fatalf("no %s request from %s handled", kind, node)
		}
	}
}

// idle waits until no push is queued or running.
func (h *harness) idle() { h.srv.hub.waitIdle() }

func (h *harness) auditsFor(node string) []AuditEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []AuditEvent
	for _, e := range h.audits {
		if e.NodeID == node {
			out = append(out, e)
		}
	}
	return out
}

// ---- an Envoy-like SotW client ----

// envoy behaves like Envoy's SDS subscription: first request with node
// and names, ACK of every response it accepts with its version and
// nonce, NACK with error_detail and the previous version, full names on
// every request.
type envoy struct {
	t        *testing.T
	node     *corev3.Node
	stream   secretv3.SecretDiscoveryService_StreamSecretsClient
	names    []string
	accepted string // version_info of the last accepted response
	nonce    string // of the last response received
	sent     bool
}

func (h *harness) envoy(node string, names ...string) *envoy {
	h.t.Helper()
	return h.envoyOn(h.client, node, names...)
}

func (h *harness) envoyOn(c secretv3.SecretDiscoveryServiceClient, node string, names ...string) *envoy {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 30*time.Second)
	h.t.Cleanup(cancel)
	s, err := c.StreamSecrets(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	e := &envoy{t: h.t, node: &corev3.Node{Id: node, Cluster: "test"}, stream: s}
	e.request(names...)
	return e
}

// request sends the current subscription (names), acknowledging nothing
// new: version_info is the last accepted one and the nonce the last seen.
func (e *envoy) request(names ...string) {
	e.t.Helper()
	e.names = names
	req := &discoveryv3.DiscoveryRequest{
		VersionInfo: e.accepted, ResourceNames: names, TypeUrl: SecretTypeURL, ResponseNonce: e.nonce,
	}
	if !e.sent {
		req.Node = e.node // Envoy sends the node on the first request only
		e.sent = true
	}
	if err := e.stream.Send(req); err != nil {
		e.t.Fatalf("send: %v", err)
	}
}

// recv receives the next response and checks what Envoy relies on.
func (e *envoy) recv() *discoveryv3.DiscoveryResponse {
	e.t.Helper()
	resp, err := e.stream.Recv()
	if err != nil {
		e.t.Fatalf("recv: %v", err)
	}
	checkSotWResponse(e.t, resp, e.names)
	e.nonce = resp.GetNonce()
	return resp
}

func (e *envoy) ack(resp *discoveryv3.DiscoveryResponse) {
	e.t.Helper()
	e.accepted = resp.GetVersionInfo()
	e.request(e.names...)
}

func (e *envoy) nack(msg string) {
	e.t.Helper()
	req := &discoveryv3.DiscoveryRequest{
		VersionInfo: e.accepted, ResourceNames: e.names, TypeUrl: SecretTypeURL, ResponseNonce: e.nonce,
		ErrorDetail: &status.Status{Code: 3, Message: msg},
	}
	if err := e.stream.Send(req); err != nil {
		e.t.Fatalf("send: %v", err)
	}
}

// checkSotWResponse asserts version_info and nonce are set, the type URL,
// and that every resource is a Secret named as one of the requested names
// (any name for a wildcard), at most once.
func checkSotWResponse(t *testing.T, resp *discoveryv3.DiscoveryResponse, names []string) {
	t.Helper()
	if resp.GetVersionInfo() == "" || resp.GetNonce() == "" {
		t.Fatalf("response without version_info or nonce: %v", resp)
	}
	if resp.GetTypeUrl() != SecretTypeURL {
		t.Fatalf("type_url %q", resp.GetTypeUrl())
	}
	seen := map[string]bool{}
	for _, sec := range secretsOf(t, resp.GetResources()) {
		if len(names) > 0 && !slices.Contains(names, sec.GetName()) {
			t.Fatalf("secret %q not requested (asked %q)", sec.GetName(), names)
		}
		if seen[sec.GetName()] {
			t.Fatalf("secret %q twice", sec.GetName())
		}
		seen[sec.GetName()] = true
	}
}

func secretsOf(t testing.TB, anys []*anypbAny) []*tlsv3.Secret {
	t.Helper()
	var out []*tlsv3.Secret
	for _, a := range anys {
		if a.GetTypeUrl() != SecretTypeURL {
			t.Fatalf("resource type %q", a.GetTypeUrl())
		}
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			t.Fatalf("unmarshal secret: %v", err)
		}
		out = append(out, sec)
	}
	return out
}

// names returns the secret names of a response, in order.
func names(t testing.TB, resp *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, s := range secretsOf(t, resp.GetResources()) {
		out = append(out, s.GetName())
	}
	return out
}

// leafID returns the SPIFFE ID of the leaf of a tls_certificate secret.
func leafID(t testing.TB, s *tlsv3.Secret) string {
	t.Helper()
	b, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if b == nil {
		t.Fatalf("secret %q: no PEM certificate chain", s.GetName())
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.URIs) != 1 {
		t.Fatalf("leaf has %d URI SANs", len(c.URIs))
	}
	return c.URIs[0].String()
}

// secretNamed returns the secret of that name in resp.
func secretNamed(t testing.TB, resp interface{ GetResources() []*anypbAny }, name string) *tlsv3.Secret {
	t.Helper()
	for _, s := range secretsOf(t, resp.GetResources()) {
		if s.GetName() == name {
			return s
		}
	}
	t.Fatalf("no secret %q in response", name)
	return nil
}

func mustEqual[T comparable](t testing.TB, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

// fatalT is what the PKI helpers need of a testing.TB; the out-of-process
// benchmark server has no testing.TB and panics instead.
type fatalT interface {
	Helper()
	Fatal(args ...any)
}

type panicT struct{}

func (panicT) Helper()           {}
func (panicT) Fatal(args ...any) { panic(fmt.Sprint(args...)) }
