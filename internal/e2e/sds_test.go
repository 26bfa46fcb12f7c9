package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/sdsclient"
	"github.com/meshca/meshca/server"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// sdsConn is a gRPC connection to an agent's socket, as Envoy's SDS
// cluster makes it.
func sdsConn(t *testing.T, a *agent.Agent) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+a.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// envoy is a state-of-the-world SDS client built from Envoy's generated
// API types that behaves as Envoy does: the node on the first request
// only, an ACK (the response's version and nonce) or a NACK (the last
// accepted version, the new nonce and error_detail) after each response,
// and new resource_names on the same stream.
type envoy struct {
	t        *testing.T
	stream   secretv3.SecretDiscoveryService_StreamSecretsClient
	node     *corev3.Node
	names    []string
	accepted string // version_info of the last ACKed response
	nonce    string // nonce of the last response
	sent     bool
}

func newEnvoy(t *testing.T, conn *grpc.ClientConn, node string, names ...string) *envoy {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	s, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := &envoy{t: t, stream: s, node: &corev3.Node{Id: node, Cluster: "e2e"}}
	e.request(names...)
	return e
}

// request sends the subscription names with the last accepted version.
func (e *envoy) request(names ...string) {
	e.t.Helper()
	e.names = names
	req := &discoveryv3.DiscoveryRequest{VersionInfo: e.accepted, ResourceNames: names, TypeUrl: sds.SecretTypeURL, ResponseNonce: e.nonce}
	if !e.sent {
		req.Node, e.sent = e.node, true
	}
	if err := e.stream.Send(req); err != nil {
		e.t.Fatalf("send: %v", err)
	}
}

// recv receives the next response and checks what Envoy relies on: a
// version and a nonce, the Secret type, and every secret named as one of
// the requested names, at most once.
func (e *envoy) recv() *discoveryv3.DiscoveryResponse {
	e.t.Helper()
	resp, err := e.stream.Recv()
	if err != nil {
		e.t.Fatalf("recv: %v", err)
	}
	if resp.GetVersionInfo() == "" || resp.GetNonce() == "" || resp.GetTypeUrl() != sds.SecretTypeURL {
		e.t.Fatalf("response version %q, nonce %q, type %q: Envoy needs all three", resp.GetVersionInfo(), resp.GetNonce(), resp.GetTypeUrl())
	}
	seen := map[string]bool{}
	for _, s := range secretsOf(e.t, resp) {
		if seen[s.Name] || (len(e.names) > 0 && !slices.Contains(e.names, s.Name)) {
			e.t.Fatalf("secret %q: not requested (%v) or sent twice", s.Name, e.names)
		}
		seen[s.Name] = true
	}
	e.nonce = resp.GetNonce()
	return resp
}

// recvHaving receives and ACKs responses until one carries every name in
// want (a workload whose entry has not reached the agent yet gets none).
func (e *envoy) recvHaving(want ...string) *discoveryv3.DiscoveryResponse {
	e.t.Helper()
	for {
		resp := e.recv()
		e.ack(resp)
		secs := secretsOf(e.t, resp)
		ok := true
		for _, n := range want {
			ok = ok && secs[n] != nil
		}
		if ok {
			return resp
		}
	}
}

func (e *envoy) ack(resp *discoveryv3.DiscoveryResponse) {
	e.t.Helper()
	e.accepted = resp.GetVersionInfo()
	e.request(e.names...)
}

func (e *envoy) nack(msg string) {
	e.t.Helper()
	req := &discoveryv3.DiscoveryRequest{VersionInfo: e.accepted, ResourceNames: e.names, TypeUrl: sds.SecretTypeURL, ResponseNonce: e.nonce,
		ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: msg}}
	if err := e.stream.Send(req); err != nil {
		e.t.Fatalf("send NACK: %v", err)
	}
}

// secretsOf decodes a response's secrets.
func secretsOf(t testing.TB, resp interface {
	GetResources() []*anypb.Any
}) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, a := range resp.GetResources() {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatalf("resource of type %s: %v", a.GetTypeUrl(), err)
		}
		out[s.Name] = s
	}
	return out
}

// pemCerts decodes the certificates of a PEM chain, in order.
func pemDERs(t testing.TB, b []byte, typ string) [][]byte {
	t.Helper()
	var out [][]byte
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != typ {
			t.Fatalf("PEM block %q, want %q", block.Type, typ)
		}
		out = append(out, block.Bytes)
	}
	if len(bytes.TrimSpace(b)) > 0 {
		t.Fatalf("trailing bytes after the PEM blocks: %q", b)
	}
	return out
}

// servedChain checks a tls_certificate secret: a chain, leaf first, of the
// SPIFFE ID, and the PKCS#8 key of its leaf. It returns the chain.
func servedChain(t testing.TB, s *tlsv3.Secret, id string) []*x509.Certificate {
	t.Helper()
	tc := s.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %q is not a tls_certificate: %T", s.Name, s.GetType())
	}
	var chain []*x509.Certificate
	for _, der := range pemDERs(t, tc.GetCertificateChain().GetInlineBytes(), "CERTIFICATE") {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	if len(chain) < 2 || chain[0].IsCA || !chain[1].IsCA {
		t.Fatalf("secret %q: chain of %d, want the leaf first, then its intermediate", s.Name, len(chain))
	}
	if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id {
		t.Fatalf("secret %q: leaf URIs %v, want %s", s.Name, chain[0].URIs, id)
	}
	keys := pemDERs(t, tc.GetPrivateKey().GetInlineBytes(), "PRIVATE KEY")
	if len(keys) != 1 {
		t.Fatalf("secret %q: %d keys", s.Name, len(keys))
	}
	key, err := x509.ParsePKCS8PrivateKey(keys[0])
	if err != nil {
		t.Fatalf("secret %q: key: %v", s.Name, err)
	}
	if pub, ok := key.(interface{ Public() crypto.PublicKey }); !ok || !publicEqual(pub.Public(), chain[0].PublicKey) {
		t.Fatalf("secret %q: the key is not the leaf's", s.Name)
	}
	return chain
}

func publicEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(x crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// opensslVerifyServed writes a served chain and validation context as
// files and runs openssl verify on them, with -crl_check_all when the
// context has CRLs: every CA of the chain must then have a current CRL.
func opensslVerifyServed(t testing.TB, chain []*x509.Certificate, vc *tlsv3.CertificateValidationContext) {
	t.Helper()
	dir := t.TempDir()
	leaf := testtool.WriteFile(t, dir, "leaf.pem", ca.EncodePEM(chain[0].Raw))
	var inter [][]byte
	for _, c := range chain[1:] {
		inter = append(inter, c.Raw)
	}
	args := []string{"-x509_strict", "-CAfile", testtool.WriteFile(t, dir, "roots.pem", vc.GetTrustedCa().GetInlineBytes()),
		"-untrusted", testtool.WriteFile(t, dir, "inter.pem", ca.EncodePEM(inter...))}
	if crl := vc.GetCrl().GetInlineBytes(); len(crl) > 0 {
		args = append(args, "-crl_check_all", "-CRLfile", testtool.WriteFile(t, dir, "crls.pem", crl))
	}
	testtool.OpenSSLVerify(t, append(args, leaf)...)
}

// crlNumbers returns the CRL number of each CA in a validation context,
// by issuer.
func crlNumbers(t testing.TB, vc *tlsv3.CertificateValidationContext) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, der := range pemDERs(t, vc.GetCrl().GetInlineBytes(), "X509 CRL") {
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		out[rl.Issuer.String()] = rl.Number.String()
	}
	return out
}

// An Envoy-like client on the agent's socket gets "default" and "ROOTCA";
// what it gets verifies with openssl, -crl_check_all with the served CRLs;
// a NACK is not answered with a resend; then it receives a rotated
// certificate and a new CRL, each verifying the same way, and a name added
// mid-stream.
func TestEnvoyGetsCertificatesBundleAndCRLs(t *testing.T) {
	testtool.OpenSSL(t)
	// CRLs valid 10 s, signed again every 5 s; SVIDs of a minute renewed
	// after 6 s.
	e := startServerWith(t, func(c *server.Config) { c.CRLLifetime = 10 * time.Second })
	token := e.token()
	a := e.startAgent(token, 0.1)
	const id = "spiffe://example.org/sds/web"
	e.entry(agentIDFor(token), id, time.Minute, "unix:uid:"+uid)
	e.entry(agentIDFor(token), "spiffe://example.org/sds/web-admin", time.Hour, "unix:uid:"+uid)

	check := func(resp *discoveryv3.DiscoveryResponse) ([]*x509.Certificate, *tlsv3.CertificateValidationContext) {
		t.Helper()
		secs := secretsOf(t, resp)
		if len(secs) != 2 || secs["default"] == nil || secs["ROOTCA"] == nil {
			t.Fatalf("response with %d secrets %v, want default and ROOTCA", len(secs), keys(secs))
		}
		chain := servedChain(t, secs["default"], id) // the first entry in the default order
		vc := secs["ROOTCA"].GetValidationContext()
		roots := pemDERs(t, vc.GetTrustedCa().GetInlineBytes(), "CERTIFICATE")
		if len(roots) != 1 || !bytes.Equal(roots[0], e.bundle[0].Raw) {
			t.Fatalf("ROOTCA trusted_ca holds %d certificates, want the ECDSA root", len(roots))
		}
		if n := crlNumbers(t, vc); len(n) < 2 {
			t.Fatalf("ROOTCA carries the CRLs of %v, want the root's and the intermediate's", n)
		}
		opensslVerifyServed(t, chain, vc)
		return chain, vc
	}
	// A first proxy waits until the agent has the workload's entries and
	// certificate; then the one under test starts.
	newEnvoy(t, sdsConn(t, a), "warm-up", "default", "ROOTCA").recvHaving("default", "ROOTCA")
	env := newEnvoy(t, sdsConn(t, a), "sidecar~10.0.0.1~web", "default", "ROOTCA")
	first := env.recv()
	chain0, vc0 := check(first)

	// A NACK is counted and not answered with the same content again: the
	// next response carries a new version (a rotation or a new CRL).
	nacks := a.SDSStats().NACKs
	env.nack("envoy could not load the secrets")
	waitUntil(t, 10*time.Second, "the NACK counted", func() bool { return a.SDSStats().NACKs > nacks })
	next := env.recv()
	if next.GetVersionInfo() == first.GetVersionInfo() {
		t.Fatal("the NACKed response was sent again")
	}
	env.ack(next)

	rotated, newCRL := false, false
	resp := next
	for !rotated || !newCRL {
		chain, vc := check(resp)
		if chain[0].SerialNumber.Cmp(chain0[0].SerialNumber) != 0 {
			if !time.Now().Before(chain0[0].NotAfter) {
				t.Fatal("the certificate rotated only after the first expired")
			}
			rotated = true
		}
		n0, n := crlNumbers(t, vc0), crlNumbers(t, vc)
		for issuer, num := range n {
			if n0[issuer] != "" && n0[issuer] != num {
				newCRL = true
			}
		}
		if rotated && newCRL {
			break
		}
		resp = env.recv()
		env.ack(resp)
	}

	// New names on the same stream are answered: a SPIFFE ID and the trust
	// domain's bundle, each under the requested name.
	env.request("default", "ROOTCA", "spiffe://example.org/sds/web-admin", "spiffe://example.org")
	for {
		resp = env.recv()
		env.ack(resp)
		secs := secretsOf(t, resp)
		if len(secs) == 4 {
			servedChain(t, secs["spiffe://example.org/sds/web-admin"], "spiffe://example.org/sds/web-admin")
			opensslVerifyServed(t, servedChain(t, secs["default"], id), secs["spiffe://example.org"].GetValidationContext())
			break
		}
	}
	// Grants are in the agent's audit trail, with the caller's process.
	if _, err := e.agentEvents.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
		return ev.Action == "sds.secret" && ev.Subject == "spiffe://example.org/sds/web-admin" && ev.Decision == audit.Allow && strings.HasPrefix(ev.Actor, "pid ")
	}); err != nil {
		t.Errorf("no audit event of the grant: %v", err)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// deltaEnvoy is an incremental (delta) SDS client, as Envoy's delta xDS.
type deltaEnvoy struct {
	t      *testing.T
	stream secretv3.SecretDiscoveryService_DeltaSecretsClient
}

func newDeltaEnvoy(t *testing.T, conn *grpc.ClientConn, node string, initial map[string]string, names ...string) *deltaEnvoy {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	s, err := secretv3.NewSecretDiscoveryServiceClient(conn).DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := &deltaEnvoy{t: t, stream: s}
	d.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node, Cluster: "e2e"}, TypeUrl: sds.SecretTypeURL,
		ResourceNamesSubscribe: names, InitialResourceVersions: initial})
	return d
}

func (d *deltaEnvoy) send(req *discoveryv3.DeltaDiscoveryRequest) {
	d.t.Helper()
	if err := d.stream.Send(req); err != nil {
		d.t.Fatalf("send: %v", err)
	}
}

// recv receives a response and ACKs it.
func (d *deltaEnvoy) recv() (map[string]*tlsv3.Secret, map[string]string, []string) {
	d.t.Helper()
	resp, err := d.stream.Recv()
	if err != nil {
		d.t.Fatalf("recv: %v", err)
	}
	if resp.GetNonce() == "" || resp.GetTypeUrl() != sds.SecretTypeURL {
		d.t.Fatalf("delta response nonce %q, type %q", resp.GetNonce(), resp.GetTypeUrl())
	}
	secs, versions := map[string]*tlsv3.Secret{}, map[string]string{}
	for _, r := range resp.GetResources() {
		s := &tlsv3.Secret{}
		if err := r.GetResource().UnmarshalTo(s); err != nil {
			d.t.Fatal(err)
		}
		if s.Name != r.GetName() || r.GetVersion() == "" {
			d.t.Fatalf("resource %q (version %q) holds secret %q", r.GetName(), r.GetVersion(), s.Name)
		}
		secs[s.Name], versions[s.Name] = s, r.GetVersion()
	}
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: sds.SecretTypeURL, ResponseNonce: resp.GetNonce()})
	return secs, versions, resp.GetRemovedResources()
}

// Delta: the first response has every subscribed name with its version;
// after a rotation only the rotated certificate is sent; unsubscribing
// removes it; a new stream with the initial versions of unchanged
// resources gets nothing for them. FetchSecrets returns what a stream
// sends.
func TestDeltaAndFetchSecrets(t *testing.T) {
	e := startServer(t) // CRLs of 48 hours: only the rotation changes
	token := e.token()
	a := e.startAgent(token, 0.1)
	const id = "spiffe://example.org/sds/delta"
	entry := e.entry(agentIDFor(token), id, time.Minute, "unix:uid:"+uid)
	conn := sdsConn(t, a)

	d := newDeltaEnvoy(t, conn, "delta", nil, "default", "ROOTCA")
	secs, v1, _ := d.recv()
	for len(secs) < 2 { // the two may come in separate responses
		more, mv, _ := d.recv()
		for k := range more {
			secs[k], v1[k] = more[k], mv[k]
		}
	}
	chain := servedChain(t, secs["default"], id)

	// FetchSecrets returns the same resources as the stream.
	fetched, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(tctx(t, 10*time.Second),
		&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "fetch"}, ResourceNames: []string{"default", "ROOTCA"}, TypeUrl: sds.SecretTypeURL})
	if err != nil {
		t.Fatal(err)
	}
	fs := secretsOf(t, fetched)
	for _, n := range []string{"default", "ROOTCA"} {
		if !proto.Equal(fs[n], secs[n]) {
			t.Errorf("FetchSecrets %s differs from the stream's", n)
		}
	}

	// The rotation: only "default", at a new version.
	rot, v2, removed := d.recv()
	if len(rot) != 1 || rot["default"] == nil || len(removed) != 0 {
		t.Fatalf("after a rotation: %v, removed %v; want only default", keys(rot), removed)
	}
	if v2["default"] == v1["default"] || servedChain(t, rot["default"], id)[0].SerialNumber.Cmp(chain[0].SerialNumber) == 0 {
		t.Fatal("the rotated certificate came at its old version or serial")
	}

	// Unsubscribing stops its updates: the same certificate, subscribed
	// under its SPIFFE ID instead, rotates alone.
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: sds.SecretTypeURL, ResourceNamesUnsubscribe: []string{"default"}, ResourceNamesSubscribe: []string{id}})
	serial := servedChain(t, rot["default"], id)[0].SerialNumber
	for {
		got, _, _ := d.recv()
		if got["default"] != nil || got["ROOTCA"] != nil || got[id] == nil {
			t.Fatalf("after unsubscribing default and subscribing %s: %v", id, keys(got))
		}
		if servedChain(t, got[id], id)[0].SerialNumber.Cmp(serial) != 0 {
			break // rotated, and default was not sent with it
		}
	}

	// A new stream (Envoy reconnecting) with the versions it holds: the
	// unchanged bundle is not sent again, only the name it lacks.
	d2 := newDeltaEnvoy(t, conn, "delta", map[string]string{"ROOTCA": v1["ROOTCA"]}, "ROOTCA", "default")
	got, _, _ := d2.recv()
	if got["ROOTCA"] != nil || got["default"] == nil {
		t.Fatalf("reconnect with ROOTCA's version: got %v, want only default", keys(got))
	}

	// The workload's only entry deleted: its certificate is in
	// removed_resources, and so is the bundle (served only to a workload
	// with an identity).
	if _, err := e.op.DeleteEntry(tctx(t, 10*time.Second), &operatorpb.DeleteEntryRequest{Id: entry.Id}); err != nil {
		t.Fatal(err)
	}
	for { // (a rotation may come first)
		got, _, removed := d.recv()
		if len(removed) == 0 {
			continue
		}
		slices.Sort(removed)
		if len(got) != 0 || !slices.Equal(removed, []string{"ROOTCA", id}) {
			t.Fatalf("after the entry's deletion: %v, removed %v; want ROOTCA and %s removed", keys(got), removed, id)
		}
		break
	}
}

// TestMain lets the test binary act as a workload of another uid: see
// sdsAsUser.
func TestMain(m *testing.M) {
	if socket := os.Getenv("MESHCA_E2E_SDS_SOCKET"); socket != "" {
		os.Exit(sdsChild(socket, strings.Split(os.Getenv("MESHCA_E2E_SDS_NAMES"), ",")))
	}
	os.Exit(m.Run())
}

// sdsChildResult is what a child workload received: the SPIFFE ID of each
// certificate secret, by name.
type sdsChildResult struct {
	IDs map[string]string
}

// sdsChild fetches names from an SDS socket until the first one is there
// (its SVID may still be issued) and prints what it got as JSON.
func sdsChild(socket string, names []string) int {
	c, err := sdsclient.Dial(socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	res := sdsChildResult{IDs: map[string]string{}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := c.Fetch(ctx, names...)
		cancel()
		if r != nil {
			for _, s := range r.Secrets {
				if der := pemFirst(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()); der != nil {
					if cert, err := x509.ParseCertificate(der); err == nil && len(cert.URIs) == 1 {
						res.IDs[s.Name] = cert.URIs[0].String()
					}
				}
			}
		}
		if res.IDs[names[0]] != "" || time.Now().After(deadline) {
			break
		}
		_ = err
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

func pemFirst(b []byte) []byte {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil
	}
	return block.Bytes
}

// sdsAsUser runs this test binary as the user nobody (uid 65534), as a
// second workload on the agent, and returns what it received.
func sdsAsUser(t *testing.T, a *agent.Agent, names ...string) sdsChildResult {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := tempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "workload")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "MESHCA_E2E_SDS_SOCKET="+a.SocketPath(), "MESHCA_E2E_SDS_NAMES="+strings.Join(names, ","))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("workload as nobody: %v\n%s", err, &stderr)
	}
	var res sdsChildResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("workload output %q: %v", out, err)
	}
	return res
}

// Two workloads of different uids on one agent each get only their own
// certificate; a name the caller may not have gets no resource and the
// refusal is audited.
func TestSDSServesEachWorkloadOnlyItsOwn(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test runs a second workload as another uid: it needs root, which CI has")
		}
		t.Skip("a second workload of another uid needs root")
	}
	e := startServer(t)
	token := e.token()
	dir := tempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil { // the socket's directory, for nobody
		t.Fatal(err)
	}
	a := e.startAgentIn(token, dir)
	const mine, theirs = "spiffe://example.org/sds/root-workload", "spiffe://example.org/sds/nobody-workload"
	e.entry(agentIDFor(token), mine, time.Hour, "unix:uid:0")
	e.entry(agentIDFor(token), theirs, time.Hour, "unix:uid:65534")

	child := sdsAsUser(t, a, "default", mine)
	if child.IDs["default"] != theirs || child.IDs[mine] != "" || len(child.IDs) != 1 {
		t.Fatalf("uid 65534 received %v, want only default = %s", child.IDs, theirs)
	}
	env := newEnvoy(t, sdsConn(t, a), "root-proxy", "default", theirs)
	secs := secretsOf(t, env.recvHaving("default"))
	if len(secs) != 1 {
		t.Fatalf("uid 0 received %v, want only default", keys(secs))
	}
	servedChain(t, secs["default"], mine)
	for _, who := range []string{"uid 65534", "uid 0"} {
		subject := map[string]string{"uid 65534": mine, "uid 0": theirs}[who]
		if _, err := e.agentEvents.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
			return ev.Action == "sds.secret" && ev.Decision == audit.Deny && ev.Subject == subject && strings.HasSuffix(ev.Actor, " "+who)
		}); err != nil {
			t.Errorf("no audited refusal of %s for %s: %v", subject, who, err)
		}
	}
}

// rawCodec sends bytes as they are: garbage frames.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

// Abusive requests on the agent's socket get a clear gRPC error, and every
// other stream keeps working: an idle proxy still gets its rotation and
// the Workload API still answers.
func TestSDSBoundsOnTheAgent(t *testing.T) {
	e := startServer(t)
	token := e.token()
	a := e.startAgent(token, 0.1)
	const id = "spiffe://example.org/sds/bystander"
	e.entry(agentIDFor(token), id, time.Minute, "unix:uid:"+uid)
	conn := sdsConn(t, a)
	bystander := newEnvoy(t, conn, "bystander", "default")
	first := bystander.recvHaving("default")
	serial0 := servedChain(t, secretsOf(t, first)["default"], id)[0].SerialNumber

	expect := func(name string, req *discoveryv3.DiscoveryRequest, code codes.Code, want string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(req); err != nil {
			t.Fatalf("%s: send: %v", name, err)
		}
		_, err = s.Recv()
		if st, _ := grpcstatus.FromError(err); st.Code() != code || !strings.Contains(st.Message(), want) {
			t.Errorf("%s: stream ended with %v, want %v containing %q", name, err, code, want)
		}
	}
	node := &corev3.Node{Id: "abuser"}
	many := make([]string, 10000)
	for i := range many {
		many[i] = fmt.Sprintf("spiffe://example.org/w/%d", i)
	}
	expect("10,000 names", &discoveryv3.DiscoveryRequest{Node: node, ResourceNames: many}, codes.InvalidArgument, "10000 names")
	expect("unknown type_url", &discoveryv3.DiscoveryRequest{Node: node, ResourceNames: []string{"default"},
		TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"}, codes.InvalidArgument, sds.SecretTypeURL)
	expect("10 MiB request", &discoveryv3.DiscoveryRequest{Node: node, ResourceNames: []string{strings.Repeat("x", 10<<20)}},
		codes.ResourceExhausted, "larger than max")
	t.Run("garbage frame", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
			"/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets", grpc.ForceCodec(rawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendMsg([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x01}); err != nil {
			t.Fatal(err)
		}
		var out []byte
		if err := s.RecvMsg(&out); grpcstatus.Code(err) != codes.Internal {
			t.Fatalf("garbage frame: %v, want Internal", err)
		}
	})
	fetchMany := func() error {
		_, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(tctx(t, 10*time.Second),
			&discoveryv3.DiscoveryRequest{Node: node, ResourceNames: many, TypeUrl: sds.SecretTypeURL})
		return err
	}
	if err := fetchMany(); grpcstatus.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchSecrets of 10,000 names: %v, want InvalidArgument", err)
	}

	// The bystander still gets its rotation, and the Workload API answers.
	for {
		resp := bystander.recv()
		bystander.ack(resp)
		if servedChain(t, secretsOf(t, resp)["default"], id)[0].SerialNumber.Cmp(serial0) != 0 {
			break
		}
	}
	if _, err := client(t, a).FetchX509SVID(tctx(t, 10*time.Second)); err != nil {
		t.Errorf("the Workload API after the abuse: %v", err)
	}
}

// An sm2 entry's "default" is its SM2-with-SM3 chain and "ROOTCA" the SM2
// roots, with CRLs: openssl verifies the chain hop by hop (with the SM2
// distinguishing ID) and each CRL with its issuer. A workload holding
// both profiles gets the ECDSA ones under the plain names and the SM2 ones
// under "~sm2".
func TestSDSServesSM2(t *testing.T) {
	testtool.OpenSSL(t)
	e := startServer(t)
	token := e.token()
	a := e.startAgent(token, 0.5)
	const id = "spiffe://example.org/sds/gm"
	e.createEntry(agentIDFor(token), id, ca.ProfileSM2)
	conn := sdsConn(t, a)

	verifySM2 := func(t *testing.T, sec, bundle *tlsv3.Secret) {
		t.Helper()
		chain := pemDERs(t, sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), "CERTIFICATE")
		vc := bundle.GetValidationContext()
		roots := pemDERs(t, vc.GetTrustedCa().GetInlineBytes(), "CERTIFICATE")
		if len(chain) != 2 || len(roots) != 1 {
			t.Fatalf("chain of %d, %d roots", len(chain), len(roots))
		}
		for i, der := range append(chain, roots...) {
			c, err := smx509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if c.SignatureAlgorithm != smx509.SM2WithSM3 {
				t.Fatalf("certificate %d signed with %s, want SM2-SM3", i, c.SignatureAlgorithm)
			}
		}
		dir := t.TempDir()
		distid := "distid:" + ca.SM2SignerID
		rootsPEM := testtool.WriteFile(t, dir, "roots.pem", vc.GetTrustedCa().GetInlineBytes())
		inter := testtool.WriteFile(t, dir, "inter.pem", ca.EncodePEM(chain[1]))
		leaf := testtool.WriteFile(t, dir, "leaf.pem", ca.EncodePEM(chain[0]))
		testtool.OpenSSLVerify(t, "-x509_strict", "-vfyopt", distid, "-CAfile", rootsPEM, inter)
		testtool.OpenSSLVerify(t, "-x509_strict", "-partial_chain", "-vfyopt", distid, "-CAfile", inter, leaf)
		// The CRLs: one per SM2 CA of the chain, each signed by it (with
		// gmsm: openssl cannot apply the SM2 ID to CRLs, openssl#32744),
		// each one openssl parses.
		crls := pemDERs(t, vc.GetCrl().GetInlineBytes(), "X509 CRL")
		cas := map[string]*smx509.Certificate{}
		for _, der := range append(chain[1:], roots...) {
			c := mustSM2(t, der)
			cas[string(c.RawSubject)] = c
		}
		covered := map[string]bool{}
		for i, der := range crls {
			rl, err := smx509.ParseRevocationList(der)
			if err != nil {
				t.Fatal(err)
			}
			if issuer := cas[string(rl.RawIssuer)]; issuer != nil {
				if err := rl.CheckSignatureFrom(issuer); err != nil {
					t.Fatalf("CRL of %s: %v", rl.Issuer, err)
				}
				covered[string(rl.RawIssuer)] = true
			}
			crl := testtool.WriteFile(t, dir, fmt.Sprintf("crl%d.der", i), der)
			if out, err := exec.Command(testtool.OpenSSL(t), "crl", "-inform", "DER", "-in", crl, "-noout", "-text").CombinedOutput(); err != nil {
				t.Fatalf("openssl crl: %v\n%s", err, out)
			}
		}
		if len(covered) != len(cas) {
			t.Fatalf("CRLs cover %d of the chain's %d CAs", len(covered), len(cas))
		}
	}

	env := newEnvoy(t, conn, "gm-proxy", "default", "ROOTCA")
	secs := secretsOf(t, env.recvHaving("default", "ROOTCA"))
	verifySM2(t, secs["default"], secs["ROOTCA"])

	// With an ECDSA identity too, the plain names are ECDSA and "~sm2"
	// the SM2 ones.
	const both = "spiffe://example.org/sds/both"
	e.createEntry(agentIDFor(token), both, ca.ProfileECDSA)
	env2 := newEnvoy(t, conn, "both-proxy", "default", "ROOTCA", "default~sm2", "ROOTCA~sm2")
	for {
		resp := env2.recv()
		env2.ack(resp)
		secs = secretsOf(t, resp)
		if len(secs) == 4 {
			break
		}
	}
	servedChain(t, secs["default"], both) // parses with crypto/x509: ECDSA
	if roots := pemDERs(t, secs["ROOTCA"].GetValidationContext().GetTrustedCa().GetInlineBytes(), "CERTIFICATE"); len(roots) != 1 || !bytes.Equal(roots[0], e.bundle[0].Raw) {
		t.Fatal("ROOTCA of a workload with both profiles is not the ECDSA root")
	}
	opensslVerifyServed(t, servedChain(t, secs["default"], both), secs["ROOTCA"].GetValidationContext())
	verifySM2(t, secs["default~sm2"], secs["ROOTCA~sm2"])
}

func mustSM2(t testing.TB, der []byte) *smx509.Certificate {
	t.Helper()
	c, err := smx509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
