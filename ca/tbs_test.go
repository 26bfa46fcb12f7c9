package ca

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/emmansun/gmsm/smx509"
)

// The direct TBSCertificate encoding must be exactly what the reference
// encoders (crypto/x509 for ecdsa, gmsm's smx509 for sm2) produce for the
// same template, so that skipping CreateCertificate changes nothing but speed.
func TestLeafTBSMatchesCreateCertificate(t *testing.T) {
	l := newLocal(t, "example.org")
	cases := []struct {
		name string
		dns  []string
	}{
		{"uri-only", nil},
		{"with-dns", []string{"api.example.org", "*.svc.example.org"}},
	}
	for _, p := range Profiles() {
		for _, c := range cases {
			t.Run(p.Name()+"/"+c.name, func(t *testing.T) {
				svid, key := issue(t, l, p.Name(), "spiffe://example.org/ns/default/sa/web", c.dns...)
				a, _ := l.Issuer(p.Name())
				got, err := p.ParseCertificate(svid.Certificates[0])
				if err != nil {
					t.Fatal(err)
				}
				var want []byte
				switch parsed := got.parsed.(type) {
				case *x509.Certificate:
					tmpl := &x509.Certificate{
						SerialNumber: parsed.SerialNumber, NotBefore: parsed.NotBefore, NotAfter: parsed.NotAfter,
						KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
						BasicConstraintsValid: true, SubjectKeyId: parsed.SubjectKeyId, URIs: parsed.URIs, DNSNames: c.dns,
					}
					issuer, _ := a.Certificate().X509()
					der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), a.signer)
					if err != nil {
						t.Fatal(err)
					}
					ref, _ := x509.ParseCertificate(der)
					want = ref.RawTBSCertificate
					if !bytes.Equal(parsed.RawTBSCertificate, want) {
						t.Errorf("TBS differs from x509.CreateCertificate:\n got %x\nwant %x", parsed.RawTBSCertificate, want)
					}
				case *smx509.Certificate:
					tmpl := &smx509.Certificate{
						SerialNumber: parsed.SerialNumber, NotBefore: parsed.NotBefore, NotAfter: parsed.NotAfter,
						KeyUsage: smx509.KeyUsageDigitalSignature | smx509.KeyUsageKeyAgreement, ExtKeyUsage: []smx509.ExtKeyUsage{smx509.ExtKeyUsageServerAuth, smx509.ExtKeyUsageClientAuth},
						BasicConstraintsValid: true, SubjectKeyId: parsed.SubjectKeyId, URIs: parsed.URIs, DNSNames: c.dns,
					}
					issuer := a.Certificate().parsed.(*smx509.Certificate)
					der, err := smx509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), a.signer)
					if err != nil {
						t.Fatal(err)
					}
					ref, _ := smx509.ParseCertificate(der)
					want = ref.RawTBSCertificate
					if !bytes.Equal(parsed.RawTBSCertificate, want) {
						t.Errorf("TBS differs from smx509.CreateCertificate:\n got %x\nwant %x", parsed.RawTBSCertificate, want)
					}
					// smx509 verifies the signature with the default signer ID.
					if err := parsed.CheckSignatureFrom(issuer); err != nil {
						t.Errorf("signature does not verify: %v", err)
					}
				}
			})
		}
	}
}
