package stepcas

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/internal/ecdsaca"
)

func caTemplate(name string, serial int64, pathLen int) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		MaxPathLen: pathLen, MaxPathLenZero: pathLen == 0,
	}
}

func TestImportRegisters(t *testing.T) {
	if _, ok := ecdsaca.Registered().(Service); !ok {
		t.Fatalf("registered service = %T, want stepcas.Service", ecdsaca.Registered())
	}
}

// A root, an intermediate made with a new key and one certified from a
// public key form chains that crypto/x509 verifies, with the templates'
// subjects and serials.
func TestHierarchy(t *testing.T) {
	t.Parallel()
	var s Service
	root, rootKey, err := s.CreateCA(caTemplate("root", 1, 1), nil, nil)
	if err != nil {
		t.Fatalf("CreateCA(root): %v", err)
	}
	if k, ok := rootKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("root key is a %T, want ECDSA P-256", rootKey)
	}
	inter, _, err := s.CreateCA(caTemplate("intermediate", 2, 0), root, rootKey)
	if err != nil {
		t.Fatalf("CreateCA(intermediate): %v", err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := s.SignCA(caTemplate("intermediate s2", 3, 0), other.Public(), root, rootKey)
	if err != nil {
		t.Fatalf("SignCA: %v", err)
	}
	if !signed.PublicKey.(*ecdsa.PublicKey).Equal(other.Public()) {
		t.Error("SignCA certified another key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range []*x509.Certificate{root, inter, signed} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s does not verify under the root: %v", c.Subject.CommonName, err)
		}
		if !c.IsCA || c.SignatureAlgorithm != x509.ECDSAWithSHA256 {
			t.Errorf("%s: CA %v, signature %v", c.Subject.CommonName, c.IsCA, c.SignatureAlgorithm)
		}
	}
	if inter.SerialNumber.Int64() != 2 || signed.Subject.CommonName != "intermediate s2" {
		t.Errorf("the templates' serial and subject were not kept: %v, %q", inter.SerialNumber, signed.Subject.CommonName)
	}
}

func TestLoadSigner(t *testing.T) {
	t.Parallel()
	var s Service
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := s.LoadSigner(der)
	if err != nil {
		t.Fatalf("LoadSigner: %v", err)
	}
	if !signer.Public().(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("LoadSigner returned another key")
	}
	if _, err := s.LoadSigner([]byte("not a key")); err == nil {
		t.Error("LoadSigner accepted garbage")
	}
}
