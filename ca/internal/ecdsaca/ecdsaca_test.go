package ecdsaca_test

// This test binary links package ca without ca/stepcas, as the node agent
// does: it checks what ca does without an ECDSA CA service, then with one.

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/internal/ecdsaca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// stdlibService is a Service on crypto/x509 alone that counts its calls.
type stdlibService struct{ calls *atomic.Int32 }

func (s stdlibService) CreateCA(tmpl, parent *x509.Certificate, parentSigner crypto.Signer) (*x509.Certificate, crypto.Signer, error) {
	s.calls.Add(1)
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentSigner = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentSigner)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func (s stdlibService) SignCA(tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, parentSigner crypto.Signer) (*x509.Certificate, error) {
	s.calls.Add(1)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentSigner)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func (s stdlibService) LoadSigner(pkcs8 []byte) (crypto.Signer, error) {
	s.calls.Add(1)
	k, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		return nil, err
	}
	return k.(crypto.Signer), nil
}

func TestCAWithAndWithoutService(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	params := func(p ca.Profile, name string) ca.CAParams {
		return ca.CAParams{Profile: p, TrustDomain: td, Name: name, Now: time.Now()}
	}
	kek, err := ca.NewKEK(bytes.Repeat([]byte{7}, ca.KEKSize))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := ca.SealKey(kek, ca.ECDSA, "test", key)
	if err != nil {
		t.Fatal(err)
	}

	// Without a service: no ECDSA CA, a clear error; SM2 CAs and sealed
	// ECDSA keys (crypto/x509) still work.
	if ecdsaca.Registered() != nil {
		t.Fatal("a service is registered in a binary that does not import ca/stepcas")
	}
	if _, _, err := ca.NewRoot(params(ca.ECDSA, "root")); !errors.Is(err, ca.ErrNoECDSACAService) {
		t.Errorf("NewRoot(ecdsa) without a service = %v, want ErrNoECDSACAService", err)
	}
	if _, _, err := ca.NewRoot(params(ca.SM2, "root")); err != nil {
		t.Errorf("NewRoot(sm2) without an ECDSA service: %v", err)
	}
	opened, err := sealed.Open(kek)
	if err != nil || !opened.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Errorf("opening a sealed ECDSA key without a service: %v", err)
	}

	// With one, ca creates, certifies and opens through it.
	var calls atomic.Int32
	ecdsaca.Register(stdlibService{&calls})
	root, rootKey, err := ca.NewRoot(params(ca.ECDSA, "root"))
	if err != nil {
		t.Fatalf("NewRoot(ecdsa): %v", err)
	}
	inter, _, err := ca.NewIntermediate(params(ca.ECDSA, "intermediate"), root, rootKey)
	if err != nil {
		t.Fatalf("NewIntermediate(ecdsa): %v", err)
	}
	if err := ca.CheckSignedBy(inter, root); err != nil {
		t.Error(err)
	}
	csrKey, _ := ca.ECDSA.GenerateKey()
	csr, err := ca.ECDSA.CreateCSR(csrKey)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := ca.SignIntermediateCSR(params(ca.ECDSA, "intermediate s2"), csr, root, rootKey)
	if err != nil {
		t.Fatalf("SignIntermediateCSR(ecdsa): %v", err)
	}
	if err := ca.CheckSignedBy(signed, root); err != nil || !signed.IsCA {
		t.Errorf("the certified intermediate: CA %v, %v", signed.IsCA, err)
	}
	if _, err := sealed.Open(kek); err != nil {
		t.Errorf("opening a sealed key through the service: %v", err)
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("the service was called %d times, want 4 (root, intermediate, CSR, key)", n)
	}
}
