package ca

import (
	"errors"
	"testing"
	"time"
)

// A server's intermediate is certified from its CSR; the key stays with the
// server, and the certificate chains to the root and issues leaves that
// openssl accepts.
func TestSignIntermediateCSR(t *testing.T) {
	l := newLocal(t, "example.org")
	for _, p := range Profiles() {
		t.Run(p.Name(), func(t *testing.T) {
			root, _ := l.Root(p.Name())
			key, _ := p.GenerateKey()
			csr, _ := p.CreateCSR(key)
			params := CAParams{Profile: p, TrustDomain: td("example.org"), Name: "intermediate s2", Now: time.Now()}
			cert, err := SignIntermediateCSR(params, csr, root.Certificate(), root.signer)
			if err != nil {
				t.Fatal(err)
			}
			if !cert.IsCA || cert.NotAfter.Sub(cert.NotBefore) != DefaultIntermediateTTL+Backdate {
				t.Errorf("CA %v, validity %s", cert.IsCA, cert.NotAfter.Sub(cert.NotBefore))
			}
			if err := CheckSignedBy(cert, root.Certificate()); err != nil {
				t.Fatal(err)
			}
			a, err := NewAuthority(AuthorityConfig{Profile: p, TrustDomain: td("example.org"), Certificate: cert, Signer: key})
			if err != nil {
				t.Fatal(err)
			}
			wk, _ := p.GenerateKey()
			wcsr, _ := p.CreateCSR(wk)
			svid, err := a.SignX509SVID(t.Context(), X509SVIDParams{CSR: wcsr, SPIFFEID: "spiffe://example.org/w"})
			if err != nil {
				t.Fatal(err)
			}
			if err := verifyWithOpenSSL(t, p.Name(), root.Certificate().Raw, cert.Raw, svid.Certificates[0]); err != nil {
				t.Error(err)
			}
			other := ECDSA
			if p == ECDSA {
				other = SM2
			}
			if _, err := SignIntermediateCSR(params, makeCSR(t, mustKey(t, other), nil), root.Certificate(), root.signer); !errors.Is(err, ErrKeyType) {
				t.Errorf("CSR with a %s key: %v, want ErrKeyType", other.Name(), err)
			}
		})
	}
}
