package ca

import (
	"bytes"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func ecdsaRoots(t *testing.T, b *Bundle) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, r := range b.ForProfile(ProfileECDSA).Roots {
		c, ok := r.X509()
		if !ok {
			t.Fatal("ecdsa root is not a crypto/x509 certificate")
		}
		out = append(out, c)
	}
	return out
}

// go-spiffe v2 verifies ECDSA X509-SVIDs against the trust bundle, enforcing
// the X509-SVID leaf rules, and refuses a leaf of another trust domain.
func TestGoSPIFFEVerifiesSVIDs(t *testing.T) {
	l := newLocal(t, "example.org")
	bundles := x509bundle.NewSet(x509bundle.FromX509Authorities(td("example.org"), ecdsaRoots(t, l.Bundle())))

	svid, key := issue(t, l, ProfileECDSA, "spiffe://example.org/ns/web/sa/frontend", "frontend.web.svc")
	id, chains, err := x509svid.ParseAndVerify(svid.Certificates, bundles)
	if err != nil {
		t.Fatalf("go-spiffe refused our SVID: %v", err)
	}
	if id.String() != "spiffe://example.org/ns/web/sa/frontend" || len(chains) != 1 || len(chains[0]) != 3 {
		t.Errorf("got ID %s with chains %d (len %d), want the requested ID with one 3-certificate chain", id, len(chains), len(chains[0]))
	}
	// The key and chain load as an SVID (leaf rules: one URI SAN, no CA, KU).
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	for _, c := range svid.Certificates {
		raw = append(raw, c...)
	}
	if _, err := x509svid.ParseRaw(raw, keyDER); err != nil {
		t.Errorf("x509svid.ParseRaw: %v", err)
	}

	// A leaf from another trust domain: no bundle for it ...
	other := newLocal(t, "other.org")
	foreign, _ := issue(t, other, ProfileECDSA, "spiffe://other.org/ns/web/sa/frontend")
	if _, _, err := x509svid.ParseAndVerify(foreign.Certificates, bundles); err == nil {
		t.Error("go-spiffe accepted a leaf of another trust domain")
	}
	// ... and our roots presented as the other domain's bundle do not chain it.
	forged := x509bundle.NewSet(x509bundle.FromX509Authorities(td("other.org"), ecdsaRoots(t, l.Bundle())))
	if _, _, err := x509svid.ParseAndVerify(foreign.Certificates, forged); err == nil {
		t.Error("go-spiffe accepted a foreign leaf under our roots")
	}
}

// The SPIFFE bundle JSON parses with go-spiffe and carries the roots, the
// sequence and the refresh hint (seconds).
func TestSPIFFEBundleFormat(t *testing.T) {
	l := newLocal(t, "example.org")
	b := l.Bundle()
	js, err := b.ForProfile(ProfileECDSA).SPIFFEJSON()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := spiffebundle.Parse(td("example.org"), js)
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v\n%s", err, js)
	}
	roots := parsed.X509Authorities()
	if len(roots) != 1 || !roots[0].Equal(ecdsaRoots(t, b)[0]) {
		t.Errorf("parsed roots %d, want our ECDSA root", len(roots))
	}
	if seq, ok := parsed.SequenceNumber(); !ok || seq != b.Sequence || seq == 0 {
		t.Errorf("spiffe_sequence = %d (%v), want %d", seq, ok, b.Sequence)
	}
	if hint, ok := parsed.RefreshHint(); !ok || hint != DefaultRefreshHint {
		t.Errorf("spiffe_refresh_hint = %v, want %v", hint, DefaultRefreshHint)
	}
	all, err := b.SPIFFEJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"crv": "P-256"`, `"crv": "SM2"`, `"use": "x509-svid"`} {
		if !bytes.Contains(all, []byte(want)) {
			t.Errorf("full bundle lacks %s:\n%s", want, all)
		}
	}
	if bytes.Contains(all, []byte(`"kid"`)) {
		t.Error("x509-svid keys must not carry a kid")
	}
	if got := len(b.PEM()); got == 0 || !bytes.Contains(b.PEM(), []byte("BEGIN CERTIFICATE")) {
		t.Error("PEM bundle is empty")
	}
}
