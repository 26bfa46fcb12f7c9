// Package ecdsaca is the seam between package ca and the service that
// creates and certifies the CAs of the ECDSA hierarchy: package
// ca/stepcas, which does it through smallstep's softcas and softkms and
// registers itself here when it is imported.
//
// The seam exists so that what only handles certificates and keys of
// workloads (the node agent: key generation, CSRs, certificate parsing,
// PEM) links package ca without smallstep's CAS and KMS, while servers and
// the offline CA, which import ca/stepcas, create their ECDSA hierarchy
// through them. The package depends on the standard library alone, so ca
// and ca/stepcas may both import it.
package ecdsaca

import (
	"crypto"
	"crypto/x509"
	"sync/atomic"
)

// Service creates and certifies ECDSA P-256 CA certificates, and loads
// sealed ECDSA keys. Implementations are safe for concurrent use.
type Service interface {
	// CreateCA makes a CA key and its certificate from tmpl: a self-signed
	// root when parent is nil, else an intermediate signed by
	// parentSigner, the key of parent.
	CreateCA(tmpl, parent *x509.Certificate, parentSigner crypto.Signer) (*x509.Certificate, crypto.Signer, error)
	// SignCA certifies pub as a CA from tmpl, under parent, whose key is
	// parentSigner (an intermediate from a CSR).
	SignCA(tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, parentSigner crypto.Signer) (*x509.Certificate, error)
	// LoadSigner makes a signer of a PKCS#8 DER private key.
	LoadSigner(pkcs8 []byte) (crypto.Signer, error)
}

var registered atomic.Pointer[Service]

// Register makes s the service package ca uses. ca/stepcas calls it from
// its init function; a later Register replaces the service.
func Register(s Service) { registered.Store(&s) }

// Registered returns the registered service, or nil when none is.
func Registered() Service {
	if s := registered.Load(); s != nil {
		return *s
	}
	return nil
}
