package ca

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"
)

// The requests meshca's agents make take the plain path, for both
// profiles; a request with a subject or SANs takes the full parser and is
// checked just the same.
func TestPlainCSRs(t *testing.T) {
	for _, p := range []Profile{ECDSA, SM2} {
		key, err := p.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		der, err := p.CreateCSR(key)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := parsePlainCSR(der); !ok {
			t.Errorf("%s: an agent's CSR does not take the plain path", p.Name())
		}
		got, err := p.checkCSR(der)
		if err != nil || got.uriSANs != 0 || !got.pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
			t.Errorf("%s: plain CSR checked as %+v, %v", p.Name(), got, err)
		}
		// A flipped bit in the signature: refused as a bad signature.
		bad := append([]byte(nil), der...)
		bad[len(bad)-3] ^= 1
		var re *RequestError
		if _, err := p.checkCSR(bad); !errors.As(err, &re) || re.Reason != ReasonCSRSignature {
			t.Errorf("%s: CSR with a broken signature: %v, want %s", p.Name(), err, ReasonCSRSignature)
		}
	}
	key, _ := ECDSA.GenerateKey()
	u1, _ := url.Parse("spiffe://example.org/a")
	u2, _ := url.Parse("spiffe://example.org/b")
	der, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "w"}, URIs: []*url.URL{u1, u2}}, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := parsePlainCSR(der); ok {
		t.Fatal("a CSR with a subject and SANs took the plain path")
	}
	if got, err := ECDSA.checkCSR(der); err != nil || got.uriSANs != 2 {
		t.Fatalf("CSR with two URI SANs checked as %+v, %v; want 2 URI SANs counted", got, err)
	}
}

// FuzzPlainCSR: for any bytes, each profile's check decides exactly as its
// full parser does (accepted with the same key and SPKI, or refused for
// the same reason); the plain path is only a shortcut. The seed corpus is
// in testdata/fuzz/FuzzPlainCSR.
func FuzzPlainCSR(f *testing.F) {
	f.Fuzz(func(t *testing.T, der []byte) {
		for _, p := range []interface {
			checkCSR([]byte) (*csrInfo, error)
			checkAnyCSR([]byte) (*csrInfo, error)
		}{ecdsaProfile{}, sm2Profile{}} {
			fast, ferr := p.checkCSR(der)
			full, err := p.checkAnyCSR(der)
			switch {
			case (ferr == nil) != (err == nil):
				t.Fatalf("%T: check says %v, the full parser %v", p, ferr, err)
			case err != nil:
				var a, b *RequestError
				if !errors.As(ferr, &a) || !errors.As(err, &b) || a.Reason != b.Reason {
					t.Fatalf("%T: refused as %v, the full parser refuses as %v", p, ferr, err)
				}
			case string(fast.spki) != string(full.spki) || fast.uriSANs != full.uriSANs ||
				!fast.pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(full.pub):
				t.Fatalf("%T: accepted as %+v, the full parser accepts as %+v", p, fast, full)
			}
		}
	})
}
