package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/nodepb"
	"google.golang.org/grpc/codes"
)

const verifyPolicy = `package envoy.authz

default allow := false

allow if input.attributes.source.principal in data.envoy.authz.principals
`

// signedBundle builds bundle revision rev admitting principal, signed by
// key as the servers sign them.
func signedBundle(t *testing.T, key *ecdsa.PrivateKey, kid string, rev uint64, principal string) *nodepb.OPABundle {
	t.Helper()
	files := []policy.File{{Path: "envoy.rego", Content: []byte(verifyPolicy)},
		{Path: "envoy/authz/data.json", Content: []byte(`{"principals": ["` + principal + `"]}`)}}
	b, err := policy.Build(files, policy.BuildOptions{Revision: rev, Key: key, KeyID: kid})
	if err != nil {
		t.Fatal(err)
	}
	return &nodepb.OPABundle{Revision: rev, Bundle: b.Bytes, Sha256: b.SHA256[:]}
}

// rewritten rewrites each file of a bundle's .tar.gz through f, with a
// consistent digest (what a tampering server or a corrupted replica would
// send).
func rewritten(t *testing.T, b *nodepb.OPABundle, f func(name string, data []byte) []byte) *nodepb.OPABundle {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b.Bundle))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if data = f(h.Name, data); data == nil {
			continue
		}
		h.Size = int64(len(data))
		tw.WriteHeader(h)
		tw.Write(data)
	}
	tw.Close()
	zw.Close()
	sum := sha256.Sum256(buf.Bytes())
	return &nodepb.OPABundle{Revision: b.Revision, Bundle: buf.Bytes(), Sha256: sum[:]}
}

func opaKeyResource(t *testing.T, key *ecdsa.PrivateKey, kid string) *nodepb.Resource {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &nodepb.Resource{Kind: "opa_key", Name: "example.org", Version: kid, Body: &nodepb.Resource_OpaKey{OpaKey: &nodepb.OPAKey{Kid: kid, PublicKey: der}}}
}

func bundleResource(b *nodepb.OPABundle) *nodepb.Resource {
	return &nodepb.Resource{Kind: "opa_bundle", Name: "authz", Version: strconv.FormatUint(b.Revision, 10), Body: &nodepb.Resource_OpaBundle{OpaBundle: b}}
}

// The agent verifies each OPA bundle of the Sync stream with the trust
// domain's key before it caches it: a bundle tampered after signing
// (policy changed, signatures kept), signed by another key, with its
// signature removed, announcing another revision than its manifest, or
// arriving before any key, is refused, logged and audited, and the
// revision verified before it is still what the local bundle service and
// ext_authz (and SDS, which reads the same cache) serve.
func TestAgentVerifiesOPABundles(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	const kid = "meshca-opa-test"
	events := &audit.Memory{}
	var logs syncLog
	a := &Agent{log: slog.New(slog.NewTextHandler(&logs, nil)), store: newStore(), events: events}
	a.cfg.BundleAddr = "127.0.0.1:0"
	ln, srv, err := a.newBundleServer()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	fetch := func() (int, []byte) {
		resp, err := http.Get("http://" + ln.Addr().String() + "/v1/bundles/authz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	x := &extAuthz{a: a, bundle: "authz", decision: "envoy/authz/allow"}
	allowed := func(principal string) bool {
		resp, err := x.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:  &authv3.AttributeContext_Peer{Principal: principal},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/"}}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Status.Code == int32(codes.OK)
	}

	// A bundle before any key: refused.
	early := signedBundle(t, key, kid, 1, "spiffe://example.org/a")
	a.applySync(&nodepb.SyncUpdate{Resources: []*nodepb.Resource{bundleResource(early)}})
	if a.store.opaBundle("authz") != nil {
		t.Fatal("a bundle was cached before the OPA key arrived")
	}
	// The key and revision 1 in one update (in any order): accepted.
	good := signedBundle(t, key, kid, 1, "spiffe://example.org/a")
	a.applySync(&nodepb.SyncUpdate{Resources: []*nodepb.Resource{bundleResource(good), opaKeyResource(t, key, kid)}})
	if b := a.store.opaBundle("authz"); b == nil || b.Revision != 1 {
		t.Fatalf("revision 1 signed by the trust domain's key was not cached: %v", b)
	}
	if code, body := fetch(); code != 200 || !bytes.Equal(body, good.Bundle) {
		t.Fatalf("the local bundle service: %d", code)
	}
	if !allowed("spiffe://example.org/a") || allowed("spiffe://example.org/b") {
		t.Fatal("ext_authz does not decide by revision 1")
	}

	bad := map[string]*nodepb.OPABundle{
		"policy changed": rewritten(t, signedBundle(t, key, kid, 2, "spiffe://example.org/a"), func(name string, data []byte) []byte {
			if strings.HasSuffix(name, ".rego") {
				return bytes.Replace(data, []byte("default allow := false"), []byte("default allow := true"), 1)
			}
			return data
		}),
		"data changed": rewritten(t, signedBundle(t, key, kid, 2, "spiffe://example.org/a"), func(name string, data []byte) []byte {
			return bytes.ReplaceAll(data, []byte("example.org/a"), []byte("example.org/b"))
		}),
		"signatures removed": rewritten(t, signedBundle(t, key, kid, 2, "spiffe://example.org/b"), func(name string, data []byte) []byte {
			if strings.HasSuffix(name, ".signatures.json") {
				return nil
			}
			return data
		}),
		"another key":      signedBundle(t, other, kid, 2, "spiffe://example.org/b"),
		"another revision": signedBundle(t, key, kid, 7, "spiffe://example.org/b"),
		"digest":           {Revision: 2, Bundle: good.Bundle, Sha256: make([]byte, 32)},
	}
	bad["another revision"].Revision = 2
	for what, b := range bad {
		n := len(events.Events())
		a.applySync(&nodepb.SyncUpdate{Resources: []*nodepb.Resource{bundleResource(b)}})
		if cur := a.store.opaBundle("authz"); cur.Revision != 1 || !bytes.Equal(cur.Bundle, good.Bundle) {
			t.Fatalf("%s: the agent cached it (revision %d)", what, cur.Revision)
		}
		var deny *audit.Event
		for _, ev := range events.Events()[n:] {
			if ev.Action == "policy.bundle.verify" && ev.Decision == audit.Deny && ev.Subject == "authz" && ev.Details["served_revision"] == "1" {
				deny = &ev
			}
		}
		if deny == nil {
			t.Fatalf("%s: no deny audited", what)
		}
		t.Logf("%s: %s", what, deny.Reason)
		if code, body := fetch(); code != 200 || !bytes.Equal(body, good.Bundle) {
			t.Fatalf("%s: the local bundle service no longer serves revision 1 (%d)", what, code)
		}
		if !allowed("spiffe://example.org/a") || allowed("spiffe://example.org/b") {
			t.Fatalf("%s: ext_authz no longer decides by revision 1", what)
		}
	}
	if !strings.Contains(logs.String(), "refused an OPA bundle that does not verify") {
		t.Fatalf("no refusal logged:\n%s", logs.String())
	}
	// A good revision 2 after all that is accepted.
	next := signedBundle(t, key, kid, 2, "spiffe://example.org/b")
	a.applySync(&nodepb.SyncUpdate{Resources: []*nodepb.Resource{bundleResource(next)}})
	if cur := a.store.opaBundle("authz"); cur.Revision != 2 || !allowed("spiffe://example.org/b") {
		t.Fatalf("a good revision 2 was not taken: %d", cur.Revision)
	}
}

// syncLog is a goroutine-safe log buffer.
type syncLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
