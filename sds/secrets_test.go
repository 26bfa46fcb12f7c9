package sds

import (
	"bytes"
	"crypto/rand"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func splitPEM(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		out = append(out, pem.EncodeToMemory(blk))
	}
}

// opensslVerify runs openssl verify -crl_check_all on what Envoy would
// get: trusted_ca and crl from the validation context, the chain of the
// tls_certificate (leaf first).
func opensslVerify(t *testing.T, vc *tlsv3.CertificateValidationContext, chainPEM []byte) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatalf("openssl is required (make deps installs it): %v", err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certs := splitPEM(t, chainPEM)
	args := []string{"verify", "-crl_check_all", "-CAfile", write("ca.pem", vc.GetTrustedCa().GetInlineBytes()),
		"-CRLfile", write("crl.pem", vc.GetCrl().GetInlineBytes())}
	if len(certs) > 1 {
		args = append(args, "-untrusted", write("untrusted.pem", bytes.Join(certs[1:], nil)))
	}
	args = append(args, write("leaf.pem", certs[0]))
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

// The served PEMs verify with openssl -crl_check_all using the served
// CRLs (the root's and the intermediate's); a revoked leaf does not.
func TestValidationContextVerifiesWithOpenSSL(t *testing.T) {
	p := newPKI(t)
	good, goodKey := p.inter.leaf(t, idA, 1001)
	bad, badKey := p.inter.leaf(t, idB, 1002)
	vcSecret, err := ValidationContextSecret("ROOTCA", ValidationContextParams{
		Roots: [][]byte{p.root.der()}, Intermediates: [][]byte{p.inter.der()},
		CRLs:      [][]byte{p.root.crl(t, 1), p.inter.crl(t, 1, big.NewInt(1002))},
		MatchSANs: MatchTrustDomains(spiffeid.RequireTrustDomainFromString("example.org")),
	})
	if err != nil {
		t.Fatal(err)
	}
	vc := vcSecret.GetValidationContext()
	if m := vc.GetMatchTypedSubjectAltNames(); len(m) != 1 || m[0].GetMatcher().GetPrefix() != "spiffe://example.org/" || m[0].GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
		t.Fatalf("SAN matchers %v", m)
	}
	for _, tc := range []struct {
		chain [][]byte
		key   []byte
		ok    bool
	}{{good, goodKey, true}, {bad, badKey, false}} {
		sec, err := TLSCertificateSecret("default", tc.chain, tc.key)
		if err != nil {
			t.Fatal(err)
		}
		out, err := opensslVerify(t, vc, sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		switch {
		case tc.ok && err != nil:
			t.Fatalf("openssl rejects a good chain: %v\n%s", err, out)
		case !tc.ok && (err == nil || !strings.Contains(out, "revoked")):
			t.Fatalf("openssl accepts a revoked chain (%v):\n%s", err, out)
		}
	}
}

// A CRL for the intermediate but not the root is refused: openssl (like
// Envoy) then rejects even good chains.
func TestValidationContextRequiresEveryCRL(t *testing.T) {
	p := newPKI(t)
	_, err := ValidationContextSecret("ROOTCA", ValidationContextParams{
		Roots: [][]byte{p.root.der()}, Intermediates: [][]byte{p.inter.der()}, CRLs: [][]byte{p.inter.crl(t, 1)},
	})
	if err == nil || !strings.Contains(err.Error(), "no CRL for CA CN=test root") {
		t.Fatalf("incomplete CRLs: %v", err)
	}
	// What Envoy would do with it: openssl fails the good chain.
	good, key := p.inter.leaf(t, idA, 7)
	sec, err := TLSCertificateSecret("default", good, key)
	if err != nil {
		t.Fatal(err)
	}
	vc := &tlsv3.CertificateValidationContext{TrustedCa: inline(pemBlocks("CERTIFICATE", [][]byte{p.root.der()})), Crl: inline(pemBlocks("X509 CRL", [][]byte{p.inter.crl(t, 1)}))}
	if out, err := opensslVerify(t, vc, sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()); err == nil {
		t.Fatalf("openssl accepted a chain whose root has no CRL:\n%s", out)
	}

	other := newRoot(t, "other root")
	if _, err := ValidationContextSecret("ROOTCA", ValidationContextParams{
		Roots: [][]byte{p.root.der()}, CRLs: [][]byte{p.root.crl(t, 1), other.crl(t, 1)},
	}); err == nil || !strings.Contains(err.Error(), "none of the CAs") {
		t.Fatalf("a stray CRL: %v", err)
	}
	if _, err := ValidationContextSecret("ROOTCA", ValidationContextParams{Roots: [][]byte{p.root.der()}}); err != nil {
		t.Fatalf("no CRLs at all is fine: %v", err)
	}
}

func TestTLSCertificateSecretChecks(t *testing.T) {
	p := newPKI(t)
	chain, key := p.inter.leaf(t, idA, 1)
	_, otherKey := p.inter.leaf(t, idB, 2)
	if _, err := TLSCertificateSecret("default", [][]byte{chain[1], chain[0]}, key); err == nil || !strings.Contains(err.Error(), "leaf first") {
		t.Fatalf("chain out of order: %v", err)
	}
	if _, err := TLSCertificateSecret("default", chain, otherKey); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := TLSCertificateSecret("default", nil, key); err == nil {
		t.Fatal("empty chain accepted")
	}
	if _, err := TLSCertificateSecret("default", chain, []byte("not a key")); err == nil {
		t.Fatal("garbage key accepted")
	}
}

// SM2 chains and CRLs are accepted and served as PEM like ECDSA ones.
func TestSM2Secrets(t *testing.T) {
	rootKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := &smx509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sm2 root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: smx509.KeyUsageCertSign | smx509.KeyUsageCRLSign,
	}
	rootDER, err := smx509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, err := smx509.ParseCertificate(rootDER)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(idA)
	leafDER, err := smx509.CreateCertificate(rand.Reader, &smx509.Certificate{
		SerialNumber: big.NewInt(2), URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: smx509.KeyUsageDigitalSignature,
	}, root, leafKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := smx509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := TLSCertificateSecret("default~sm2", [][]byte{leafDER}, keyDER)
	if err != nil {
		t.Fatalf("SM2 tls certificate: %v", err)
	}
	if blk, _ := pem.Decode(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()); blk == nil || !bytes.Equal(blk.Bytes, leafDER) {
		t.Fatal("SM2 chain not served as PEM")
	}
	crl, err := smx509.CreateRevocationList(rand.Reader, &smx509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour),
	}, root, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ValidationContextSecret("ROOTCA~sm2", ValidationContextParams{Roots: [][]byte{rootDER}, CRLs: [][]byte{crl}}); err != nil {
		t.Fatalf("SM2 validation context: %v", err)
	}
}

// ALL is one SPIFFECertValidatorConfig entry per trust domain, named
// without spiffe://; disabled, a plain trusted_ca of every bundle.
func TestSPIFFEValidationContextSecret(t *testing.T) {
	a, b := newRoot(t, "a"), newRoot(t, "b")
	bundles := []TrustDomainBundle{
		{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Roots: [][]byte{a.der()}},
		{TrustDomain: spiffeid.RequireTrustDomainFromString("partner.test"), Roots: [][]byte{b.der()}},
	}
	sec, err := SPIFFEValidationContextSecret("ALL", bundles, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	cv := sec.GetValidationContext().GetCustomValidatorConfig()
	mustEqual(t, "validator", cv.GetName(), SPIFFECertValidatorName)
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cv.GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.GetTrustDomains()) != 2 || cfg.GetTrustDomains()[0].GetName() != "example.org" || cfg.GetTrustDomains()[1].GetName() != "partner.test" {
		t.Fatalf("trust domains %v", cfg.GetTrustDomains())
	}
	if blk, _ := pem.Decode(cfg.GetTrustDomains()[1].GetTrustBundle().GetInlineBytes()); blk == nil || !bytes.Equal(blk.Bytes, b.der()) {
		t.Fatal("partner.test bundle")
	}
	if sec.GetValidationContext().GetCrl() != nil || sec.GetValidationContext().GetTrustedCa() != nil {
		t.Fatal("ALL with the SPIFFE validator carries trusted_ca or crl")
	}

	plain, err := SPIFFEValidationContextSecret("ALL", bundles, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if plain.GetValidationContext().GetCustomValidatorConfig() != nil || len(splitPEM(t, plain.GetValidationContext().GetTrustedCa().GetInlineBytes())) != 2 {
		t.Fatal("disabled SPIFFE validator: want trusted_ca with both roots and no custom validator")
	}
}
