package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// Every malformed or unauthorized request gets a typed error and no certificate.
func TestSignX509SVIDRefusesBadInput(t *testing.T) {
	l := newLocal(t, "example.org")
	const id = "spiffe://example.org/ns/a/sa/b"

	p256, _ := ECDSA.GenerateKey()
	sm2key, _ := SM2.GenerateKey()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	goodECDSA := makeCSR(t, p256, nil)
	goodSM2 := makeCSR(t, sm2key, nil)
	badSig := func(csr []byte) []byte {
		b := bytes.Clone(csr)
		b[len(b)-1] ^= 0x01
		return b
	}
	huge, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: "huge"},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: make([]byte, 70<<10)}},
	}, p256)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name    string
		profile string
		params  X509SVIDParams
		want    error
	}{
		{"garbage", ProfileECDSA, X509SVIDParams{CSR: []byte("not a csr at all"), SPIFFEID: id}, ErrMalformedCSR},
		{"garbage/sm2", ProfileSM2, X509SVIDParams{CSR: []byte{0x30, 0x82, 0xff, 0xff, 0x00}, SPIFFEID: id}, ErrMalformedCSR},
		{"empty", ProfileECDSA, X509SVIDParams{SPIFFEID: id}, ErrMalformedCSR},
		{"pem-not-der", ProfileECDSA, X509SVIDParams{CSR: []byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"), SPIFFEID: id}, ErrMalformedCSR},
		{"truncated", ProfileECDSA, X509SVIDParams{CSR: goodECDSA[:len(goodECDSA)/2], SPIFFEID: id}, ErrMalformedCSR},
		{"bad-signature/ecdsa", ProfileECDSA, X509SVIDParams{CSR: badSig(goodECDSA), SPIFFEID: id}, ErrCSRSignature},
		{"bad-signature/sm2", ProfileSM2, X509SVIDParams{CSR: badSig(goodSM2), SPIFFEID: id}, ErrCSRSignature},
		{"sm2-key-for-ecdsa", ProfileECDSA, X509SVIDParams{CSR: goodSM2, SPIFFEID: id}, ErrKeyType},
		{"p256-key-for-sm2", ProfileSM2, X509SVIDParams{CSR: goodECDSA, SPIFFEID: id}, ErrKeyType},
		{"p384-key", ProfileECDSA, X509SVIDParams{CSR: makeCSR(t, p384, nil), SPIFFEID: id}, ErrKeyType},
		{"rsa-1024/ecdsa", ProfileECDSA, X509SVIDParams{CSR: makeCSR(t, rsa1024, nil), SPIFFEID: id}, ErrKeyType},
		{"rsa-1024/sm2", ProfileSM2, X509SVIDParams{CSR: makeCSR(t, rsa1024, nil), SPIFFEID: id}, ErrKeyType},
		{"two-uri-sans/ecdsa", ProfileECDSA, X509SVIDParams{CSR: makeCSR(t, p256, []string{id, "spiffe://example.org/other"}), SPIFFEID: id}, ErrTooManyURISANs},
		{"two-uri-sans/sm2", ProfileSM2, X509SVIDParams{CSR: makeCSR(t, sm2key, []string{id, "https://example.org/"}), SPIFFEID: id}, ErrTooManyURISANs},
		{"oversized", ProfileECDSA, X509SVIDParams{CSR: huge, SPIFFEID: id}, ErrCSRTooLarge},
		{"oversized-garbage", ProfileSM2, X509SVIDParams{CSR: make([]byte, MaxCSRSize+1), SPIFFEID: id}, ErrCSRTooLarge},
		{"id/empty", ProfileECDSA, X509SVIDParams{CSR: goodECDSA}, ErrInvalidSPIFFEID},
		{"id/no-path", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: "spiffe://example.org"}, ErrInvalidSPIFFEID},
		{"id/wrong-scheme", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: "https://example.org/a"}, ErrInvalidSPIFFEID},
		{"id/uppercase-td", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: "spiffe://Example.org/a"}, ErrInvalidSPIFFEID},
		{"id/dot-segment", ProfileSM2, X509SVIDParams{CSR: goodSM2, SPIFFEID: "spiffe://example.org/a/../b"}, ErrInvalidSPIFFEID},
		{"id/trailing-slash", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: "spiffe://example.org/a/"}, ErrInvalidSPIFFEID},
		{"id/query", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: "spiffe://example.org/a?b=c"}, ErrInvalidSPIFFEID},
		{"id/port", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: "spiffe://example.org:443/a"}, ErrInvalidSPIFFEID},
		{"id/too-long", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: "spiffe://example.org/" + strings.Repeat("a", 2100)}, ErrInvalidSPIFFEID},
		{"id/other-trust-domain", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: "spiffe://evil.org/a"}, ErrTrustDomainMismatch},
		{"dns/uppercase", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: id, DNSNames: []string{"API.example.org"}}, ErrInvalidDNSName},
		{"dns/empty-label", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: id, DNSNames: []string{"a..b"}}, ErrInvalidDNSName},
		{"dns/inner-wildcard", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: id, DNSNames: []string{"a.*.b"}}, ErrInvalidDNSName},
		{"dns/too-many", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: id, DNSNames: make([]string, MaxDNSNames+1)}, ErrInvalidDNSName},
		{"ttl/negative", ProfileECDSA, X509SVIDParams{CSR: goodECDSA, SPIFFEID: id, TTL: -time.Hour}, ErrInvalidTTL},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := l.Issuer(c.profile)
			if err != nil {
				t.Fatal(err)
			}
			svid, err := a.SignX509SVID(context.Background(), c.params)
			if svid != nil {
				t.Errorf("issued a certificate for a bad request")
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("error = %v, want %v", err, c.want)
			}
			var re *RequestError
			if !errors.As(err, &re) || re.Reason != c.want.(*RequestError).Reason {
				t.Errorf("error %v is not a *RequestError with reason %s", err, c.want.(*RequestError).Reason)
			}
		})
	}
}

// The identity comes from the authorized request, never from the CSR.
func TestSignX509SVIDIgnoresCSRIdentity(t *testing.T) {
	l := newLocal(t, "example.org")
	for _, p := range Profiles() {
		key, _ := p.GenerateKey()
		csr := makeCSR(t, key, []string{"spiffe://example.org/admin"}, "admin.example.org")
		a, _ := l.Issuer(p.Name())
		svid, err := a.SignX509SVID(context.Background(), X509SVIDParams{CSR: csr, SPIFFEID: "spiffe://example.org/ns/a/sa/b", TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := p.ParseCertificate(svid.Certificates[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0] != "spiffe://example.org/ns/a/sa/b" || leaf.Subject != "" {
			t.Errorf("%s: leaf URIs %v subject %q; want only the authorized ID and an empty subject", p.Name(), leaf.URIs, leaf.Subject)
		}
		if leaf.IsCA {
			t.Errorf("%s: leaf is a CA", p.Name())
		}
		if d := leaf.NotAfter.Sub(leaf.NotBefore); d != time.Hour+Backdate {
			t.Errorf("%s: validity %s, want TTL + backdate = %s", p.Name(), d, time.Hour+Backdate)
		}
	}
}

// NotAfter never exceeds the issuer's, and an expired issuer issues nothing.
func TestSignX509SVIDClampsToIssuer(t *testing.T) {
	l := newLocal(t, "example.org")
	a, _ := l.Issuer(ProfileECDSA)
	key, _ := ECDSA.GenerateKey()
	csr := makeCSR(t, key, nil)
	svid, err := a.SignX509SVID(context.Background(), X509SVIDParams{CSR: csr, SPIFFEID: "spiffe://example.org/w", TTL: 365 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !svid.NotAfter.Equal(a.Certificate().NotAfter) {
		t.Errorf("NotAfter %s, want the issuer's %s", svid.NotAfter, a.Certificate().NotAfter)
	}
	late, err := NewAuthority(AuthorityConfig{Profile: ECDSA, TrustDomain: td("example.org"), Certificate: a.Certificate(), Signer: a.signer,
		Clock: clockwork.NewFakeClockAt(a.Certificate().NotAfter.Add(time.Minute))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := late.SignX509SVID(context.Background(), X509SVIDParams{CSR: csr, SPIFFEID: "spiffe://example.org/w"}); !errors.Is(err, ErrAuthorityExpired) {
		t.Errorf("expired issuer: error %v, want ErrAuthorityExpired", err)
	}
}

func TestNewAuthorityRefusesMismatchedKey(t *testing.T) {
	l := newLocal(t, "example.org")
	a, _ := l.Issuer(ProfileECDSA)
	other, _ := ECDSA.GenerateKey()
	if _, err := NewAuthority(AuthorityConfig{Profile: ECDSA, TrustDomain: td("example.org"), Certificate: a.Certificate(), Signer: other}); err == nil {
		t.Error("NewAuthority accepted a signer that does not hold the certificate's key")
	}
	if _, err := NewAuthority(AuthorityConfig{Profile: SM2, TrustDomain: td("example.org"), Certificate: a.Certificate(), Signer: a.signer}); err == nil {
		t.Error("NewAuthority accepted an ecdsa certificate for the sm2 profile")
	}
}

func TestCheckDNSNames(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, n := range []string{"api", "api.prod.svc", "*.example.org", "a-b.c", "x1.y2", long + ".org", "1.2.3.4"} {
		if err := CheckDNSNames([]string{n}); err != nil {
			t.Errorf("CheckDNSNames(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range []string{"", "API", "a_b", "-a", "a-", "a..b", ".a", "a.", "*", "*.", "a.*.b", "é.org", long + "a.org", strings.Repeat(long+".", 4) + "org"} {
		if err := CheckDNSNames([]string{n}); !errors.Is(err, ErrInvalidDNSName) {
			t.Errorf("CheckDNSNames(%q) = %v, want ErrInvalidDNSName", n, err)
		}
	}
}

// A profile's own CSRs and PKCS#8 keys are what its issuer and parsers accept.
func TestProfileCSRAndKeyEncoding(t *testing.T) {
	l := newLocal(t, "example.org")
	for _, p := range Profiles() {
		key, err := p.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := p.CreateCSR(key)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := l.Issuer(p.Name())
		if _, err := a.SignX509SVID(context.Background(), X509SVIDParams{CSR: csr, SPIFFEID: "spiffe://example.org/w"}); err != nil {
			t.Errorf("%s: own CSR refused: %v", p.Name(), err)
		}
		der, err := p.MarshalPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		back, err := p.parseKey(der)
		if err != nil || !back.Public().(*ecdsa.PublicKey).Equal(key.Public()) {
			t.Errorf("%s: PKCS#8 round trip: %v", p.Name(), err)
		}
		other := ECDSA
		if p == ECDSA {
			other = SM2
		}
		if _, err := other.MarshalPrivateKey(key); err == nil {
			t.Errorf("%s key encoded by the %s profile", p.Name(), other.Name())
		}
	}
}
