package sds

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"slices"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

const (
	idA = "spiffe://example.org/ns/a/sa/a"
	idB = "spiffe://example.org/ns/b/sa/b"
)

// setupAB gives caller "a" and "b" their own default SVID and both the
// same ROOTCA resource (topic "bundle").
func setupAB(t *testing.T, h *harness, p testPKI) (rootca *Resource) {
	t.Helper()
	h.store.grant("a", "default", p.svid(t, "default", idA, "a1"))
	h.store.grant("b", "default", p.svid(t, "default", idB, "b1"))
	rootca = p.bundle(t, "bundle1", 1)
	for _, c := range []string{"a", "b"} {
		h.store.set(c, "ROOTCA", fakeEntry{status: Granted, res: rootca, topic: "bundle"})
	}
	return rootca
}

// Envoy without ADS opens one stream per secret: default and ROOTCA each
// get exactly their secret, named as requested, as PEM, leaf first.
func TestSotWDefaultAndROOTCA(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)

	cert := h.envoy("a", "default")
	roots := h.envoy("a", "ROOTCA")

	r := cert.recv()
	if got := names(t, r); !slices.Equal(got, []string{"default"}) {
		t.Fatalf("default stream got %q", got)
	}
	sec := secretNamed(t, r, "default")
	mustEqual(t, "leaf SPIFFE ID", leafID(t, sec), idA)
	var blocks []*pem.Block
	rest := sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		blocks = append(blocks, b)
	}
	if len(blocks) != 2 || !bytes.Equal(blocks[1].Bytes, p.inter.der()) {
		t.Fatalf("chain: %d PEM blocks, want leaf then intermediate", len(blocks))
	}
	if k, _ := pem.Decode(sec.GetTlsCertificate().GetPrivateKey().GetInlineBytes()); k == nil || k.Type != "PRIVATE KEY" {
		t.Fatal("private key is not a PKCS#8 PEM block")
	}
	cert.ack(r)

	r = roots.recv()
	vc := secretNamed(t, r, "ROOTCA").GetValidationContext()
	if b, _ := pem.Decode(vc.GetTrustedCa().GetInlineBytes()); b == nil || !bytes.Equal(b.Bytes, p.root.der()) {
		t.Fatal("trusted_ca is not the root")
	}
	if n := bytes.Count(vc.GetCrl().GetInlineBytes(), []byte("BEGIN X509 CRL")); n != 2 {
		t.Fatalf("crl has %d CRLs, want the root's and the intermediate's", n)
	}
	roots.ack(r)
	h.waitRequest("a", RequestACK)
	h.waitRequest("a", RequestACK)
	if a := h.auditsFor("a"); len(a) != 2 || a[0].Decision != DecisionGrant || a[1].Decision != DecisionGrant {
		t.Fatalf("audits %+v, want two grants", a)
	}
}

// A rotation pushes a new version and nonce to the stream that has the
// rotated secret, and nothing to the others.
func TestSotWRotationPushesNewVersionOnlyToItsStream(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	a := h.envoy("a", "default")
	b := h.envoy("b", "default")
	ra, rb := a.recv(), b.recv()
	a.ack(ra)
	b.ack(rb)
	h.waitRequest("a", RequestACK)
	h.waitRequest("b", RequestACK)
	h.idle()
	bResolves := h.store.resolveCount("b")

	h.store.grant("a", "default", p.svid(t, "default", idA, "a2"))
	r2 := a.recv()
	if r2.GetVersionInfo() == ra.GetVersionInfo() || r2.GetNonce() == ra.GetNonce() {
		t.Fatalf("rotation kept version %q / nonce %q", r2.GetVersionInfo(), r2.GetNonce())
	}
	if bytes.Equal(secretNamed(t, r2, "default").GetTlsCertificate().GetCertificateChain().GetInlineBytes(),
		secretNamed(t, ra, "default").GetTlsCertificate().GetCertificateChain().GetInlineBytes()) {
		t.Fatal("rotation sent the old certificate")
	}
	a.ack(r2)
	h.waitRequest("a", RequestACK)
	h.idle()
	if got := h.store.resolveCount("b"); got != bResolves {
		t.Fatalf("b's stream was woken by a's rotation: %d resolves, want %d", got, bResolves)
	}

	// b's next message is its own rotation, not a resend.
	h.store.grant("b", "default", p.svid(t, "default", idB, "b2"))
	if rb2 := b.recv(); rb2.GetVersionInfo() == rb.GetVersionInfo() {
		t.Fatal("b got a resend instead of its rotation")
	}
}

// One bundle change reaches every stream subscribed to it.
func TestSotWBundleChangeReachesEverySubscriber(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	var es []*envoy
	for _, c := range []string{"a", "b", "a", "b"} {
		e := h.envoy(c, "ROOTCA")
		e.ack(e.recv())
		es = append(es, e)
	}
	next := p.bundle(t, "bundle2", 2)
	for _, c := range []string{"a", "b"} {
		h.store.set(c, "ROOTCA", fakeEntry{status: Granted, res: next, topic: "bundle"})
	}
	for _, e := range es {
		r := e.recv()
		crl := secretNamed(t, r, "ROOTCA").GetValidationContext().GetCrl().GetInlineBytes()
		if !bytes.Equal(crl, next.Secret().GetValidationContext().GetCrl().GetInlineBytes()) {
			t.Fatal("stream did not get the new CRLs")
		}
	}
}

// An ACK sends nothing, and neither does a notification that changes no
// version.
func TestSotWACKSendsNothing(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	a := h.envoy("a", "default")
	r1 := a.recv()
	a.ack(r1)
	h.waitRequest("a", RequestACK)
	a.ack(r1) // a duplicate ACK, as after a names update with no change
	h.waitRequest("a", RequestACK)
	h.srv.Notify("a/default") // spurious: same version
	h.idle()
	before := h.srv.Stats().Responses

	h.store.grant("a", "default", p.svid(t, "default", idA, "a2"))
	r2 := a.recv()
	if r2.GetVersionInfo() == r1.GetVersionInfo() {
		t.Fatal("an ACK or a spurious notification caused a resend")
	}
	a.ack(r2)
	h.waitRequest("a", RequestACK)
	h.idle()
	mustEqual(t, "responses sent after the ACKs", h.srv.Stats().Responses-before, 1)
}

// A request with a stale nonce is ignored: it is neither answered nor
// does it change the subscription.
func TestSotWStaleNonceIgnored(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	a := h.envoy("a", "default")
	r1 := a.recv()
	a.ack(r1)
	h.waitRequest("a", RequestACK)

	stale := a.nonce
	a.nonce = "not-the-latest"
	a.request("default", "ROOTCA")
	a.nonce = stale
	a.names = []string{"default"}
	ev := h.waitRequest("a", RequestStale)
	mustEqual(t, "stale nonce", ev.Nonce, "not-the-latest")
	h.idle()

	h.store.grant("a", "default", p.svid(t, "default", idA, "a2"))
	r2 := a.recv()
	if got := names(t, r2); !slices.Equal(got, []string{"default"}) {
		t.Fatalf("after a stale request the stream serves %q, want the old subscription", got)
	}
	if h.srv.Stats().StaleNonces != 1 {
		t.Fatalf("stale nonces counted %d", h.srv.Stats().StaleNonces)
	}
}

// A NACK is counted and reported, and the rejected content is not sent
// again; the next change is.
func TestSotWNACKDoesNotLoop(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	a := h.envoy("a", "default")
	r1 := a.recv()
	a.nack("Failed to load certificate chain")
	ev := h.waitRequest("a", RequestNACK)
	mustEqual(t, "NACK error", ev.Error, "Failed to load certificate chain")
	mustEqual(t, "NACKs counted", h.srv.Stats().NACKs, uint64(1))
	h.srv.Notify("a/default")
	h.idle()

	h.store.grant("a", "default", p.svid(t, "default", idA, "a2"))
	r2 := a.recv()
	if r2.GetVersionInfo() == r1.GetVersionInfo() {
		t.Fatal("the NACKed version was sent again")
	}
	a.ack(r2)
	h.waitRequest("a", RequestACK)
	mustEqual(t, "responses", h.srv.Stats().Responses, uint64(2))
}

// resource_names may change on any request that carries the latest nonce;
// each change is answered with exactly the new set.
func TestSotWNamesChangeMidStream(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	a := h.envoy("a", "default")
	r := a.recv()
	a.accepted = r.GetVersionInfo()
	a.request("default", "ROOTCA") // ACK and a new subscription at once
	r = a.recv()
	if got := names(t, r); !slices.Equal(got, []string{"default", "ROOTCA"}) {
		t.Fatalf("got %q, want default and ROOTCA", got)
	}
	a.accepted = r.GetVersionInfo()
	a.request("ROOTCA")
	r = a.recv()
	if got := names(t, r); !slices.Equal(got, []string{"ROOTCA"}) {
		t.Fatalf("got %q, want ROOTCA only", got)
	}
	a.ack(r)
	h.waitRequest("a", RequestACK)
	h.idle()
	// default is no longer subscribed: its rotation wakes nothing.
	h.store.grant("a", "default", p.svid(t, "default", idA, "a2"))
	h.idle()
	next := p.bundle(t, "bundle2", 2)
	h.store.set("a", "ROOTCA", fakeEntry{status: Granted, res: next, topic: "bundle"})
	if got := names(t, a.recv()); !slices.Equal(got, []string{"ROOTCA"}) {
		t.Fatalf("got %q after the bundle change", got)
	}
}

// An empty resource_names on the first request subscribes to every secret
// the caller may have, including ones it gets later.
func TestSotWEmptyNamesIsEverything(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	h.store.grant("a", idA, p.svid(t, idA, idA, "a1"))
	a := h.envoy("a")
	r := a.recv()
	if got := names(t, r); !slices.Equal(got, []string{"ROOTCA", "default", idA}) {
		t.Fatalf("wildcard got %q", got)
	}
	a.ack(r)
	h.waitRequest("a", RequestACK)
	h.store.grant("a", "spiffe://example.org", p.bundle(t, "td1", 1))
	r = a.recv()
	if got := names(t, r); !slices.Equal(got, []string{"ROOTCA", "default", "spiffe://example.org", idA}) {
		t.Fatalf("after a new secret the wildcard got %q", got)
	}
	mustEqual(t, "new secret's name", secretNamed(t, r, "spiffe://example.org").GetName(), "spiffe://example.org")
}

// A name the caller may not have gets no resource: an empty response
// (version and nonce, no resource), audited; the stream stays open and
// gets the secret once it is granted.
func TestSotWRefusedNameAuditedThenGranted(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	a := h.envoy("a", idB)
	r := a.recv()
	if len(r.GetResources()) != 0 {
		t.Fatalf("refused name got %d resources", len(r.GetResources()))
	}
	a.nack("Missing SDS resources for " + idB + " in onConfigUpdate()") // what Envoy does
	h.waitRequest("a", RequestNACK)
	au := h.auditsFor("a")
	if len(au) != 1 || au[0].Decision != DecisionRefuse || au[0].Name != idB || au[0].Method != MethodStream || au[0].Reason == "" {
		t.Fatalf("audits %+v, want one refusal of %s", au, idB)
	}

	h.store.grant("a", idB, p.svid(t, idB, idB, "x1"))
	r = a.recv()
	mustEqual(t, "granted later", leafID(t, secretNamed(t, r, idB)), idB)
	if au := h.auditsFor("a"); len(au) != 2 || au[1].Decision != DecisionGrant {
		t.Fatalf("audits %+v, want the grant after the refusal", au)
	}
}

// A name the caller may have but the agent has not got yet is not
// answered until it is ready (Envoy waits rather than warming without it).
func TestSotWPendingWaitsForTheSecret(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	h.store.set("a", "default", fakeEntry{status: Pending})
	a := h.envoy("a", "default")
	h.waitRequest("a", RequestInitial)
	h.idle()
	h.store.grant("a", "default", p.svid(t, "default", idA, "a1"))
	r := a.recv() // the first response is the granted one, not an empty one
	mustEqual(t, "first response", leafID(t, secretNamed(t, r, "default")), idA)
}

// Two workloads on one agent each get only their own certificate.
func TestSotWEachCallerGetsItsOwn(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	a, b := h.envoy("a", "default"), h.envoy("b", "default")
	mustEqual(t, "a's default", leafID(t, secretNamed(t, a.recv(), "default")), idA)
	mustEqual(t, "b's default", leafID(t, secretNamed(t, b.recv(), "default")), idB)
}

// Any Secret type is served unchanged: new kinds (OPA bundles as
// generic_secret) need no protocol change.
func TestSotWGenericSecret(t *testing.T) {
	h := newHarness(t, nil)
	sec := &tlsv3.Secret{Name: "ignored", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secret: inline([]byte("opa bundle bytes")),
	}}}
	r, err := NewResource(sec, "rev1")
	if err != nil {
		t.Fatal(err)
	}
	h.store.grant("a", "opa/authz", r)
	a := h.envoy("a", "opa/authz")
	got := secretNamed(t, a.recv(), "opa/authz")
	mustEqual(t, "generic secret", string(got.GetGenericSecret().GetSecret().GetInlineBytes()), "opa bundle bytes")
	if sec.GetName() != "ignored" {
		t.Fatal("the source's secret was modified")
	}
}

// A push waits for the ACK of the previous response, then is sent.
func TestSotWPushWaitsForACK(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	a := h.envoy("a", "default")
	r1 := a.recv()
	h.store.grant("a", "default", p.svid(t, "default", idA, "a2"))
	h.idle()
	mustEqual(t, "responses before the ACK", h.srv.Stats().Responses, uint64(1))
	a.ack(r1)
	r2 := a.recv()
	if r2.GetVersionInfo() == r1.GetVersionInfo() {
		t.Fatal("the change was not sent after the ACK")
	}
}

// failingSource fails every Resolve once fail is set.
type failingSource struct {
	Source
	fail *atomic.Bool
}

func (f failingSource) Resolve(ctx context.Context, name string) (Result, error) {
	if f.fail.Load() {
		return Result{}, errors.New("store unavailable")
	}
	return f.Source.Resolve(ctx, name)
}

// A Source error during a push is counted and logged; the stream stays
// open.
func TestSotWPushSourceError(t *testing.T) {
	var h *harness
	var fail atomic.Bool
	h = newHarness(t, func(c *Config) {
		c.Secrets = func(_ context.Context, node *corev3.Node) (Source, error) {
			return failingSource{Source: h.store.source(node.GetId()), fail: &fail}, nil
		}
	})
	p := newPKI(t)
	setupAB(t, h, p)
	a := h.envoy("a", "default")
	a.ack(a.recv())
	h.waitRequest("a", RequestACK)
	fail.Store(true)
	h.store.grant("a", "default", p.svid(t, "default", idA, "a2"))
	h.idle()
	mustEqual(t, "source errors", h.srv.Stats().SourceErrors, uint64(1))
	mustEqual(t, "open streams", h.srv.Stats().OpenStreams, int64(1))
}
