package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"math/big"
	"time"

	"github.com/emmansun/gmsm/sm2"
)

// Profile is a signature suite: the key type a CSR must carry, the algorithm
// certificates and CRLs are signed with, and the X.509 codec that reads them.
// meshca has two, ECDSA and SM2; a trust domain may run both hierarchies at once.
type Profile interface {
	// Name is the profile's name in configuration and on the command line:
	// "ecdsa" or "sm2".
	Name() string
	// GenerateKey makes a new private key of the profile's key type.
	GenerateKey() (crypto.Signer, error)
	// ParseCertificate parses one DER certificate of this profile.
	ParseCertificate(der []byte) (*Certificate, error)
	// CreateCSR makes a DER PKCS#10 request signed by key, naming nothing:
	// the CA certifies only its public key.
	CreateCSR(key crypto.Signer) ([]byte, error)
	// MarshalPrivateKey encodes a private key of the profile as PKCS#8 DER.
	MarshalPrivateKey(key crypto.Signer) ([]byte, error)

	// checkCSR parses a DER CSR, checks its key type and verifies its signature.
	checkCSR(der []byte) (*csrInfo, error)
	// sigAlgDER is the DER AlgorithmIdentifier of the profile's signatures.
	sigAlgDER() []byte
	// signTBS signs a DER TBSCertificate (or TBSCertList) with signer.
	signTBS(signer crypto.Signer, tbs []byte) ([]byte, error)
	// leafKeyUsage is the key usage of workload certificates.
	leafKeyUsage() x509.KeyUsage
	// createCA makes a CA key and its certificate (parent == nil: a
	// self-signed root), signed by parentSigner.
	createCA(tmpl *x509.Certificate, parent *Certificate, parentSigner crypto.Signer) (*Certificate, crypto.Signer, error)
	// signCA certifies pub as a CA under parent (an intermediate from a CSR).
	signCA(tmpl *x509.Certificate, pub crypto.PublicKey, parent *Certificate, parentSigner crypto.Signer) (*Certificate, error)
	// createCRL signs a CRL issued by issuer.
	createCRL(tmpl *x509.RevocationList, issuer *Certificate, signer crypto.Signer) ([]byte, error)
	// parseKey decodes a PKCS#8 DER private key of this profile.
	parseKey(der []byte) (crypto.Signer, error)
}

// Profile names.
const (
	ProfileECDSA = "ecdsa"
	ProfileSM2   = "sm2"
)

// SM2SignerID is the GM/T 0009 default signer ID used by every SM2 signature
// meshca makes and verifies.
const SM2SignerID = "1234567812345678"

var (
	// ECDSA is the P-256 / ECDSA-with-SHA256 profile (crypto/x509, smallstep).
	ECDSA Profile = ecdsaProfile{}
	// SM2 is the SM2 / SM2-with-SM3 profile (github.com/emmansun/gmsm).
	SM2 Profile = sm2Profile{}
)

// Profiles lists every profile in a stable order.
func Profiles() []Profile { return []Profile{ECDSA, SM2} }

// ProfileByName returns the profile called name.
func ProfileByName(name string) (Profile, error) {
	switch name {
	case ProfileECDSA:
		return ECDSA, nil
	case ProfileSM2:
		return SM2, nil
	}
	return nil, fmt.Errorf("%w %q: want %q or %q", ErrUnknownProfile, name, ProfileECDSA, ProfileSM2)
}

// Certificate is the profile-independent view of a parsed certificate.
// crypto/x509 cannot parse SM2 certificates, so meshca keeps the fields it
// needs here and the profile's own parsed form alongside.
type Certificate struct {
	Raw                     []byte
	RawSubject              []byte
	RawSubjectPublicKeyInfo []byte
	SubjectKeyID            []byte
	SerialNumber            *big.Int
	Subject                 string
	NotBefore, NotAfter     time.Time
	IsCA                    bool
	PublicKey               crypto.PublicKey
	// URIs holds the URI SANs, as strings.
	URIs []string
	// Profile is the name of the profile that parsed the certificate.
	Profile string

	parsed any // *x509.Certificate (ecdsa) or *smx509.Certificate (sm2)
}

// X509 returns the crypto/x509 form of an ECDSA-profile certificate; ok is
// false for SM2 certificates, which crypto/x509 cannot represent.
func (c *Certificate) X509() (cert *x509.Certificate, ok bool) {
	cert, ok = c.parsed.(*x509.Certificate)
	return cert, ok
}

// csrInfo is what issuance needs from a verified CSR.
type csrInfo struct {
	pub     crypto.PublicKey
	spki    []byte // DER SubjectPublicKeyInfo
	uriSANs int
}

// describeKey names a public key for error messages.
func describeKey(pub any) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d-bit key", k.N.BitLen())
	case *ecdsa.PublicKey:
		if k.Curve == sm2.P256() {
			return "SM2 key"
		}
		return "ECDSA " + k.Curve.Params().Name + " key"
	case ed25519.PublicKey:
		return "Ed25519 key"
	case nil:
		return "no key"
	}
	return fmt.Sprintf("%T key", pub)
}

func isP256(pub any) bool {
	k, ok := pub.(*ecdsa.PublicKey)
	return ok && k.Curve == elliptic.P256()
}

func isSM2(pub any) bool {
	k, ok := pub.(*ecdsa.PublicKey)
	return ok && k.Curve == sm2.P256()
}

func uriStrings(n int, at func(int) string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = at(i)
	}
	return out
}
