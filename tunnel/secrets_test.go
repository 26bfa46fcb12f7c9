package tunnel

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/meshca/meshca/sds"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// fixedNow is the time of the fuzz seeds.
var fixedNow = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// testCA is a root and intermediate of a trust domain, signing SVIDs and
// CRLs with crypto/x509.
type testCA struct {
	t             testing.TB
	td            spiffeid.TrustDomain
	root, inter   *x509.Certificate
	rootK, interK *ecdsa.PrivateKey
	serial        int64
	now           time.Time
}

func newTestCA(t testing.TB, td string, now time.Time) *testCA {
	c := &testCA{t: t, td: spiffeid.RequireTrustDomainFromString(td), now: now, serial: 100}
	c.rootK, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c.interK, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tdURL, _ := url.Parse(c.td.IDString())
	c.root = c.sign(&x509.Certificate{Subject: pkix.Name{CommonName: td + " root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{tdURL}}, &c.rootK.PublicKey, nil, c.rootK)
	c.inter = c.sign(&x509.Certificate{Subject: pkix.Name{CommonName: td + " intermediate"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{tdURL}}, &c.interK.PublicKey, c.root, c.rootK)
	return c
}

func (c *testCA) sign(tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, key crypto.Signer) *x509.Certificate {
	c.t.Helper()
	c.serial++
	tmpl.SerialNumber = big.NewInt(c.serial)
	tmpl.NotBefore, tmpl.NotAfter = c.now.Add(-time.Minute), c.now.Add(time.Hour)
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		c.t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		c.t.Fatal(err)
	}
	return cert
}

// svid issues a leaf for path; it returns the chain (leaf, intermediate).
func (c *testCA) svid(path string) []*x509.Certificate {
	chain, _ := c.svidKey(path)
	return chain
}

// svidKey issues a leaf for path and returns its chain and key.
func (c *testCA) svidKey(path string) ([]*x509.Certificate, *ecdsa.PrivateKey) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(c.td.IDString() + path)
	leaf := c.sign(&x509.Certificate{URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, &k.PublicKey, c.inter, c.interK)
	return []*x509.Certificate{leaf, c.inter}, k
}

func (c *testCA) crl(issuer *x509.Certificate, key crypto.Signer, next time.Time, revoked ...*x509.Certificate) []byte {
	c.t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: c.now.Add(-time.Minute), NextUpdate: next}
	for _, r := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: r.SerialNumber, RevocationTime: c.now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer, key)
	if err != nil {
		c.t.Fatal(err)
	}
	return der
}

func pemOf(typ string, ders ...[]byte) []byte {
	var b []byte
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	return b
}

func rawOf(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}

func validationSecret(roots []byte, crls []byte) *tlsv3.Secret {
	vc := &tlsv3.CertificateValidationContext{TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: roots}}}
	if crls != nil {
		vc.Crl = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: crls}}
	}
	return &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}
}

// TestVerifyPeerRootsAndCRLs: a peer is verified against the roots and
// the CRL of every CA of its chain: a revoked leaf or intermediate is
// refused, a fresh leaf of the same CA is not; a CA without a CRL (when
// others have one) and an expired CRL fail closed; another trust
// domain's SVID is refused.
func TestVerifyPeerRootsAndCRLs(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	ca := newTestCA(t, "example.org", now)
	revoked, fresh := ca.svid("/ns/a/sa/client"), ca.svid("/ns/a/sa/client")
	next := now.Add(24 * time.Hour)
	rootCRL := ca.crl(ca.root, ca.rootK, next)
	interCRL := ca.crl(ca.inter, ca.interK, next, revoked[0])
	td := ca.td

	load := func(t *testing.T, crls ...[]byte) *validation {
		t.Helper()
		var c []byte
		if len(crls) > 0 {
			c = pemOf("X509 CRL", crls...)
		}
		v, err := parseValidation(validationSecret(pemOf("CERTIFICATE", ca.root.Raw), c), "v")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	t.Run("ok/no CRLs", func(t *testing.T) {
		id, _, err := load(t).verifyPeer(rawOf(revoked), td, now)
		if err != nil || id.String() != "spiffe://example.org/ns/a/sa/client" {
			t.Fatalf("verifyPeer = %v, %v", id, err)
		}
	})
	t.Run("fail/revoked leaf, ok/fresh leaf", func(t *testing.T) {
		v := load(t, rootCRL, interCRL)
		_, _, err := v.verifyPeer(rawOf(revoked), td, now)
		var re *RevokedError
		if !errors.As(err, &re) || re.Serial != revoked[0].SerialNumber.String() {
			t.Fatalf("revoked leaf: %v", err)
		}
		if _, _, err := v.verifyPeer(rawOf(fresh), td, now); err != nil {
			t.Fatalf("fresh leaf: %v", err)
		}
	})
	t.Run("fail/revoked intermediate", func(t *testing.T) {
		v := load(t, ca.crl(ca.root, ca.rootK, next, ca.inter), ca.crl(ca.inter, ca.interK, next))
		_, _, err := v.verifyPeer(rawOf(fresh), td, now)
		var re *RevokedError
		if !errors.As(err, &re) || re.Serial != ca.inter.SerialNumber.String() {
			t.Fatalf("revoked intermediate: %v", err)
		}
	})
	t.Run("fail/a CA without CRL", func(t *testing.T) {
		_, _, err := load(t, rootCRL).verifyPeer(rawOf(fresh), td, now)
		if err == nil || !strings.Contains(err.Error(), "no CRL of CA") {
			t.Fatalf("missing intermediate CRL: %v", err)
		}
	})
	t.Run("fail/CRL signed by another key", func(t *testing.T) {
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		forged := ca.crl(ca.inter, other, next) // names the intermediate, signed by someone else
		_, _, err := load(t, rootCRL, forged).verifyPeer(rawOf(fresh), td, now)
		if err == nil || !strings.Contains(err.Error(), "no CRL of CA") {
			t.Fatalf("forged CRL: %v", err)
		}
	})
	t.Run("fail/expired CRL", func(t *testing.T) {
		_, _, err := load(t, rootCRL, interCRL).verifyPeer(rawOf(fresh), td, next.Add(time.Second))
		if err == nil {
			t.Fatal("an expired CRL (and certificate) accepted")
		}
		short := ca.crl(ca.inter, ca.interK, now.Add(time.Minute))
		_, _, err = load(t, rootCRL, short).verifyPeer(rawOf(fresh), td, now.Add(2*time.Minute))
		if err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("expired CRL: %v", err)
		}
	})
	t.Run("fail/another trust domain", func(t *testing.T) {
		other := newTestCA(t, "other.org", now)
		_, _, err := load(t).verifyPeer(rawOf(other.svid("/ns/a/sa/client")), td, now)
		var pe *PeerError
		if !errors.As(err, &pe) {
			t.Fatalf("foreign SVID: %v", err)
		}
	})
	t.Run("fail/expired certificate", func(t *testing.T) {
		if _, _, err := load(t).verifyPeer(rawOf(fresh), td, now.Add(2*time.Hour)); err == nil {
			t.Fatal("an expired SVID accepted")
		}
	})
	t.Run("fail/expired after a cached verification", func(t *testing.T) {
		v := load(t, rootCRL, interCRL)
		if _, _, err := v.verifyPeer(rawOf(fresh), td, now); err != nil {
			t.Fatal(err)
		}
		if _, _, err := v.verifyPeer(rawOf(fresh), td, now.Add(2*time.Hour)); err == nil {
			t.Fatal("a cached chain accepted after it expired")
		}
		if _, _, err := v.verifyPeer(rawOf(fresh), spiffeid.RequireTrustDomainFromString("other.org"), now); err == nil {
			t.Fatal("a cached chain accepted for another trust domain")
		}
		// The cache holds path validation only: revocation is checked on
		// every call.
		if _, _, err := v.verifyPeer(rawOf(revoked), td, now); err == nil {
			t.Fatal("revoked leaf accepted")
		}
		if _, _, err := v.verifyPeer(rawOf(revoked), td, now); err == nil {
			t.Fatal("revoked leaf accepted from the cache")
		}
	})
}

// TestParseSecretsRefusesBadInput: secrets of the wrong type, garbage and
// SM2 chains are refused with typed errors.
func TestParseSecretsRefusesBadInput(t *testing.T) {
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	tlsSecret := func(chain, key []byte) *tlsv3.Secret {
		return &tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(chain), PrivateKey: inline(key)}}}
	}
	var se *SecretError
	if _, err := parseIdentity(validationSecret([]byte("x"), nil), "v"); !errors.As(err, &se) {
		t.Errorf("a validation context as identity: %v", err)
	}
	if _, err := parseIdentity(tlsSecret([]byte("garbage"), []byte("garbage")), "v"); !errors.As(err, &se) {
		t.Errorf("garbage identity: %v", err)
	}
	if _, err := parseValidation(validationSecret([]byte("garbage"), nil), "v"); !errors.As(err, &se) {
		t.Errorf("garbage validation context: %v", err)
	}

	// An SM2 SVID (what "default" carries for an SM2-only workload).
	sm2Sec := sm2Secret(t)
	if _, err := parseIdentity(sm2Sec, "v"); !errors.Is(err, ErrSM2) {
		t.Errorf("SM2 identity: %v", err)
	}
	if _, err := parseValidation(validationSecret(sm2Sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), nil), "v"); !errors.Is(err, ErrSM2) {
		t.Errorf("SM2 roots: %v", err)
	}
	// The agent's own builder gives what the tunnel parses.
	ca := newTestCA(t, "example.org", time.Now())
	sec, err := sds.ValidationContextSecret("ROOTCA", sds.ValidationContextParams{Roots: [][]byte{ca.root.Raw},
		Intermediates: [][]byte{ca.inter.Raw}, CRLs: [][]byte{ca.crl(ca.root, ca.rootK, time.Now().Add(time.Hour)), ca.crl(ca.inter, ca.interK, time.Now().Add(time.Hour))}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := parseValidation(sec, "v")
	if err != nil || len(v.roots) != 1 || len(v.crls) != 2 {
		t.Fatalf("sds.ValidationContextSecret: %v, %+v", err, v)
	}
}

// sm2Secret is a tls_certificate "default" holding a self-signed SM2
// certificate and its key.
func sm2Secret(t *testing.T) *tlsv3.Secret {
	t.Helper()
	k, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://example.org/gm")
	tmpl := &smx509.Certificate{SerialNumber: big.NewInt(1), URIs: []*url.URL{u}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: smx509.KeyUsageDigitalSignature | smx509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true}
	der, err := smx509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := smx509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	return &tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(pemOf("CERTIFICATE", der)), PrivateKey: inline(pemOf("PRIVATE KEY", keyDER))}}}
}
