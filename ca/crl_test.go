package ca

import (
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"testing"

	"github.com/emmansun/gmsm/smx509"
)

func pemCRL(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}) }

// parsedCRL is the part of a CRL the tests check, for either profile.
type parsedCRL struct {
	number  *big.Int
	serials []*big.Int
}

func parseCRL(t *testing.T, profile string, der []byte, issuer *Certificate) parsedCRL {
	t.Helper()
	var out parsedCRL
	if profile == ProfileECDSA {
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		ic, _ := issuer.X509()
		if err := rl.CheckSignatureFrom(ic); err != nil {
			t.Fatalf("CRL signature: %v", err)
		}
		out.number = rl.Number
		for _, e := range rl.RevokedCertificateEntries {
			out.serials = append(out.serials, e.SerialNumber)
		}
		return out
	}
	rl, err := smx509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.CheckSignatureFrom(issuer.parsed.(*smx509.Certificate)); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	out.number = rl.Number
	for _, e := range rl.RevokedCertificateEntries {
		out.serials = append(out.serials, e.SerialNumber)
	}
	return out
}

func TestCRLNumbersIncreaseAndSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	kek, err := CreateKEKFile(dir + "/kek")
	if err != nil {
		t.Fatal(err)
	}
	open := func() *LocalCA {
		l, err := OpenLocal(LocalConfig{Dir: dir, KEK: kek, TrustDomain: td("example.org")})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	for _, p := range Profiles() {
		svid, _ := issue(t, l, p.Name(), "spiffe://example.org/w")
		issuer, _ := l.Issuer(p.Name())
		for want := int64(1); want <= 2; want++ {
			der, err := l.NextCRL(p.Name(), false, []Revocation{{SerialNumber: svid.SerialNumber, RevokedAt: svid.NotBefore}})
			if err != nil {
				t.Fatal(err)
			}
			got := parseCRL(t, p.Name(), der, issuer.Certificate())
			if got.number.Int64() != want {
				t.Errorf("%s CRL number = %v, want %d", p.Name(), got.number, want)
			}
			if len(got.serials) != 1 || got.serials[0].Cmp(svid.SerialNumber) != 0 {
				t.Errorf("%s CRL serials = %v, want [%x]", p.Name(), got.serials, svid.SerialNumber)
			}
		}
		root, _ := l.Root(p.Name())
		der, err := l.NextCRL(p.Name(), true, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := parseCRL(t, p.Name(), der, root.Certificate()); got.number.Int64() != 1 || len(got.serials) != 0 {
			t.Errorf("%s root CRL: number %v, %d entries; want 1, 0", p.Name(), got.number, len(got.serials))
		}
	}
	l.Close()

	l = open()
	defer l.Close()
	for _, p := range Profiles() {
		issuer, _ := l.Issuer(p.Name())
		der, err := l.NextCRL(p.Name(), false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := parseCRL(t, p.Name(), der, issuer.Certificate()); got.number.Int64() != 3 {
			t.Errorf("%s CRL number after reopen = %v, want 3", p.Name(), got.number)
		}
	}
}

func TestCRLRejectsBadParams(t *testing.T) {
	l := newLocal(t, "example.org")
	a, _ := l.Issuer(ProfileECDSA)
	for name, p := range map[string]CRLParams{
		"no-number":   {},
		"zero-number": {Number: big.NewInt(0)},
		"huge-number": {Number: new(big.Int).Lsh(big.NewInt(1), 200)},
		"no-serial":   {Number: big.NewInt(1), Revoked: []Revocation{{}}},
	} {
		if _, err := a.CreateCRL(p); err == nil {
			t.Errorf("%s: CreateCRL succeeded", name)
		}
	}
}
