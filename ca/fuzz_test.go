package ca

import (
	"context"
	"errors"
	"testing"
)

// FuzzIssue feeds arbitrary CSR bytes and SPIFFE IDs to both profiles.
// Issuance must never panic; it either refuses with a *RequestError or
// issues a leaf that carries exactly the requested ID, is not a CA and is
// signed by the issuer. The seed corpus is in testdata/fuzz/FuzzIssue.
func FuzzIssue(f *testing.F) {
	l := newLocal(f, "example.org")
	f.Fuzz(func(t *testing.T, csr []byte, useSM2 bool, id string) {
		p := ECDSA
		if useSM2 {
			p = SM2
		}
		a, err := l.Issuer(p.Name())
		if err != nil {
			t.Fatal(err)
		}
		svid, err := a.SignX509SVID(context.Background(), X509SVIDParams{CSR: csr, SPIFFEID: id})
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("refusal is not a *RequestError: %v", err)
			}
			if svid != nil {
				t.Fatal("a refused request returned a certificate")
			}
			return
		}
		leaf, err := p.ParseCertificate(svid.Certificates[0])
		if err != nil {
			t.Fatalf("issued an unparsable certificate: %v", err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0] != svid.SPIFFEID || leaf.IsCA {
			t.Fatalf("leaf URIs %v (want [%s]), CA %v", leaf.URIs, svid.SPIFFEID, leaf.IsCA)
		}
		if err := CheckSignedBy(leaf, a.Certificate()); err != nil {
			t.Fatalf("leaf not signed by its issuer: %v", err)
		}
	})
}
