package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"testing"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// BenchmarkIssue measures one issuance on one goroutine: CSR parse and
// signature check, policy-free signing of the leaf, and PEM encoding of the
// chain. Compare with BenchmarkRawCrypto, the floor: one CSR signature
// verification plus one certificate signature.
//
//	go test ./ca -run '^$' -bench 'Issue|RawCrypto' -benchtime 3s -count 5
func BenchmarkIssue(b *testing.B) {
	l := newLocal(b, "example.org")
	for _, p := range Profiles() {
		b.Run(p.Name(), func(b *testing.B) {
			a, _ := l.Issuer(p.Name())
			key, _ := p.GenerateKey()
			params := X509SVIDParams{CSR: makeCSR(b, key, nil), SPIFFEID: "spiffe://example.org/ns/default/sa/bench"}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				svid, err := a.SignX509SVID(ctx, params)
				if err != nil {
					b.Fatal(err)
				}
				if len(svid.ChainPEM()) == 0 {
					b.Fatal("empty PEM")
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
		})
	}
}

// BenchmarkRawCrypto is the cryptographic floor of one issuance: verify the
// CSR's signature over its TBS and sign a leaf TBS of the real size, with
// the profile's algorithms (SM2 including the Z_A computation on both sides).
func BenchmarkRawCrypto(b *testing.B) {
	l := newLocal(b, "example.org")
	for _, p := range Profiles() {
		b.Run(p.Name(), func(b *testing.B) {
			a, _ := l.Issuer(p.Name())
			key, _ := p.GenerateKey()
			csrDER := makeCSR(b, key, nil)
			svid, _ := issue(b, l, p.Name(), "spiffe://example.org/ns/default/sa/bench")
			leaf, _ := p.ParseCertificate(svid.Certificates[0])
			var verify func() bool
			var tbs []byte
			switch c := leaf.parsed.(type) {
			case *x509.Certificate:
				tbs = c.RawTBSCertificate
				csr, _ := x509.ParseCertificateRequest(csrDER)
				pub := csr.PublicKey.(*ecdsa.PublicKey)
				verify = func() bool {
					d := sha256.Sum256(csr.RawTBSCertificateRequest)
					return ecdsa.VerifyASN1(pub, d[:], csr.Signature)
				}
			case *smx509.Certificate:
				tbs = c.RawTBSCertificate
				csr, _ := smx509.ParseCertificateRequest(csrDER)
				pub := csr.PublicKey.(*ecdsa.PublicKey)
				verify = func() bool { return sm2.VerifyASN1WithSM2(pub, nil, csr.RawTBSCertificateRequest, csr.Signature) }
			}
			b.ReportAllocs()
			for b.Loop() {
				if !verify() {
					b.Fatal("CSR signature does not verify")
				}
				if p == SM2 {
					if _, err := a.signer.Sign(rand.Reader, tbs, sm2.DefaultSM2SignerOpts); err != nil {
						b.Fatal(err)
					}
				} else {
					d := sha256.Sum256(tbs)
					if _, err := a.signer.Sign(rand.Reader, d[:], nil); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
		})
	}
}
