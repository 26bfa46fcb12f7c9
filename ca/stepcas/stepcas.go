// Package stepcas creates and certifies the CAs of meshca's ECDSA
// hierarchy through smallstep's certificate authority service (softcas,
// github.com/smallstep/certificates/cas) and key manager (softkms,
// go.step.sm/crypto/kms), so that an upstream CA service (step-ca, Vault,
// a cloud CAS) or an HSM-backed key manager can take their places behind
// the same apiv1 interfaces.
//
// Importing the package registers it with package ca:
//
//	import _ "github.com/meshca/meshca/ca/stepcas"
//
// Servers and the meshca command import it; the node agent does not, so it
// does not link smallstep's CAS and KMS (see agent/deps_test.go). Without
// it, package ca refuses to create or certify an ECDSA CA
// (ca.ErrNoECDSACAService) and opens sealed ECDSA keys with crypto/x509.
package stepcas

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/meshca/meshca/ca/internal/ecdsaca"
	casapi "github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/softkms"
)

func init() { ecdsaca.Register(Service{}) }

// Service is the smallstep-backed ECDSA CA service. Its zero value is
// ready to use.
type Service struct{}

var _ ecdsaca.Service = Service{}

// CreateCA makes a P-256 CA key through softkms and its certificate from
// tmpl through softcas: a self-signed root when parent is nil, else an
// intermediate signed by parentSigner.
func (Service) CreateCA(tmpl, parent *x509.Certificate, parentSigner crypto.Signer) (*x509.Certificate, crypto.Signer, error) {
	km, err := softkms.New(context.Background(), kmsapi.Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("stepcas: softkms: %w", err)
	}
	cas, err := softcas.New(context.Background(), casapi.Options{IsCreator: true, KeyManager: km})
	if err != nil {
		return nil, nil, fmt.Errorf("stepcas: softcas: %w", err)
	}
	req := &casapi.CreateCertificateAuthorityRequest{
		Name:      tmpl.Subject.CommonName,
		Type:      casapi.RootCA,
		Template:  tmpl,
		Lifetime:  tmpl.NotAfter.Sub(tmpl.NotBefore),
		CreateKey: &kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256},
	}
	if parent != nil {
		req.Type = casapi.IntermediateCA
		req.Parent = &casapi.CreateCertificateAuthorityResponse{Certificate: parent, Signer: parentSigner}
	}
	resp, err := cas.CreateCertificateAuthority(req)
	if err != nil {
		return nil, nil, fmt.Errorf("stepcas: softcas: create %s: %w", tmpl.Subject.CommonName, err)
	}
	key, ok := resp.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("stepcas: softkms made a %T, want an ECDSA P-256 key", resp.PrivateKey)
	}
	return resp.Certificate, key, nil
}

// SignCA certifies pub as a CA from tmpl, under parent, through softcas,
// the same service interface an upstream CA would implement. It sets
// tmpl.PublicKey.
func (Service) SignCA(tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, parentSigner crypto.Signer) (*x509.Certificate, error) {
	cas, err := softcas.New(context.Background(), casapi.Options{CertificateChain: []*x509.Certificate{parent}, Signer: parentSigner})
	if err != nil {
		return nil, fmt.Errorf("stepcas: softcas: %w", err)
	}
	tmpl.PublicKey = pub
	resp, err := cas.CreateCertificate(&casapi.CreateCertificateRequest{Template: tmpl, Lifetime: tmpl.NotAfter.Sub(tmpl.NotBefore)})
	if err != nil {
		return nil, fmt.Errorf("stepcas: softcas: sign %s: %w", tmpl.Subject.CommonName, err)
	}
	return resp.Certificate, nil
}

// LoadSigner loads a PKCS#8 DER key through softkms; the same CreateSigner
// call takes pkcs11: or cloud KMS URIs once those key managers are
// configured.
func (Service) LoadSigner(pkcs8 []byte) (crypto.Signer, error) {
	km, err := softkms.New(context.Background(), kmsapi.Options{})
	if err != nil {
		return nil, fmt.Errorf("stepcas: softkms: %w", err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	defer clear(pemKey)
	s, err := km.CreateSigner(&kmsapi.CreateSignerRequest{SigningKeyPEM: pemKey})
	if err != nil {
		return nil, fmt.Errorf("stepcas: softkms: load key: %w", err)
	}
	return s, nil
}
