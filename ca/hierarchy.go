package ca

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CAParams describes a root or intermediate to create.
type CAParams struct {
	Profile     Profile
	TrustDomain spiffeid.TrustDomain
	// Name goes into the subject's common name, "meshca <profile> <Name>
	// <trust domain>", e.g. "root" or "intermediate server-1".
	Name string
	// TTL is the lifetime; zero means DefaultRootTTL for a root and
	// DefaultIntermediateTTL for an intermediate. An intermediate's NotAfter
	// is clamped to its parent's.
	TTL time.Duration
	// Now is the time of creation; NotBefore is Now - Backdate.
	Now time.Time
}

// NewRoot creates a self-signed root CA (path length 1) with a new key.
func NewRoot(p CAParams) (*Certificate, crypto.Signer, error) {
	tmpl, err := caTemplate(p, DefaultRootTTL)
	if err != nil {
		return nil, nil, err
	}
	tmpl.MaxPathLen = 1
	return p.Profile.createCA(tmpl, nil, nil)
}

// NewIntermediate creates an intermediate CA (path length 0) with a new key,
// signed by parent.
func NewIntermediate(p CAParams, parent *Certificate, parentSigner crypto.Signer) (*Certificate, crypto.Signer, error) {
	if parent == nil || parentSigner == nil {
		return nil, nil, errors.New("ca: intermediate needs a parent certificate and signer")
	}
	tmpl, err := intermediateTemplate(p, parent)
	if err != nil {
		return nil, nil, err
	}
	return p.Profile.createCA(tmpl, parent, parentSigner)
}

// SignIntermediateCSR certifies the key of a CSR as an intermediate CA
// (path length 0) signed by parent: how a server's own intermediate, whose
// key never leaves it, is certified by the root. The CSR must verify and
// carry the profile's key type; its subject is ignored. Bad CSRs get a
// *RequestError.
func SignIntermediateCSR(p CAParams, csrDER []byte, parent *Certificate, parentSigner crypto.Signer) (*Certificate, error) {
	if parent == nil || parentSigner == nil {
		return nil, errors.New("ca: intermediate needs a parent certificate and signer")
	}
	if len(csrDER) > MaxCSRSize {
		return nil, reqErr(ReasonCSRTooLarge, fmt.Sprintf("%d bytes, limit %d", len(csrDER), MaxCSRSize), nil)
	}
	csr, err := p.Profile.checkCSR(csrDER)
	if err != nil {
		return nil, err
	}
	tmpl, err := intermediateTemplate(p, parent)
	if err != nil {
		return nil, err
	}
	return p.Profile.signCA(tmpl, csr.pub, parent, parentSigner)
}

func intermediateTemplate(p CAParams, parent *Certificate) (*x509.Certificate, error) {
	tmpl, err := caTemplate(p, DefaultIntermediateTTL)
	if err != nil {
		return nil, err
	}
	if tmpl.NotAfter.After(parent.NotAfter) {
		tmpl.NotAfter = parent.NotAfter
	}
	if !tmpl.NotAfter.After(p.Now) {
		return nil, fmt.Errorf("ca: parent %q expired at %s", parent.Subject, parent.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl.MaxPathLen = 0
	tmpl.MaxPathLenZero = true
	return tmpl, nil
}

func caTemplate(p CAParams, defTTL time.Duration) (*x509.Certificate, error) {
	if p.Profile == nil || p.TrustDomain.IsZero() || p.Now.IsZero() {
		return nil, errors.New("ca: CA parameters need a profile, a trust domain and a time")
	}
	ttl := p.TTL
	if ttl == 0 {
		ttl = defTTL
	}
	if ttl < time.Minute {
		return nil, fmt.Errorf("ca: CA lifetime %s is too short", ttl)
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	now := p.Now.Truncate(time.Second)
	return &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"meshca"},
			CommonName:   "meshca " + p.Profile.Name() + " " + p.Name + " " + p.TrustDomain.Name(),
		},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Signing certificates carry the trust domain's SPIFFE ID (X509-SVID §4.1).
		URIs: []*url.URL{p.TrustDomain.ID().URL()},
	}, nil
}

// CSRPublicKey checks a CSR for the profile (its key type and signature)
// and returns the DER SubjectPublicKeyInfo it asks to certify. Bad CSRs get
// a *RequestError.
func CSRPublicKey(p Profile, csrDER []byte) ([]byte, error) {
	if len(csrDER) > MaxCSRSize {
		return nil, reqErr(ReasonCSRTooLarge, fmt.Sprintf("%d bytes, limit %d", len(csrDER), MaxCSRSize), nil)
	}
	csr, err := p.checkCSR(csrDER)
	if err != nil {
		return nil, err
	}
	return csr.spki, nil
}
