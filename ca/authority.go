package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/jonboulle/clockwork"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults, as design.md lays them out.
const (
	DefaultSVIDTTL         = 24 * time.Hour
	DefaultIntermediateTTL = 30 * 24 * time.Hour
	DefaultRootTTL         = 10 * 365 * 24 * time.Hour
	// Backdate is how far NotBefore is set before the time of issuance, to
	// tolerate clock skew between issuer and relying parties.
	Backdate = 60 * time.Second
	// MaxCSRSize bounds the size of a CSR accepted for issuance.
	MaxCSRSize = 64 << 10
	// MaxDNSNames bounds the DNS SANs of one certificate.
	MaxDNSNames = 32
	// maxSPIFFEIDLen is the longest SPIFFE ID the SPIFFE spec requires support for.
	maxSPIFFEIDLen = 2048
)

// Authority is a CA certificate with its signing key: it issues X509-SVIDs
// (when it is an intermediate) and CRLs. An Authority is safe for concurrent
// use; its fields never change after NewAuthority.
type Authority struct {
	profile Profile
	td      spiffeid.TrustDomain
	cert    *Certificate
	signer  crypto.Signer
	chain   [][]byte // cert.Raw, then the issuers above it up to (excluding) the root
	clock   clockwork.Clock
	leaf    *leafTemplate
}

// AuthorityConfig configures NewAuthority.
type AuthorityConfig struct {
	Profile     Profile
	TrustDomain spiffeid.TrustDomain
	// Certificate is the authority's CA certificate.
	Certificate *Certificate
	// Signer holds the private key of Certificate.
	Signer crypto.Signer
	// Upstream are the intermediates above Certificate, nearest first,
	// excluding the root; empty when Certificate is signed by the root.
	Upstream []*Certificate
	// Clock is the time source of validity periods; nil means the real clock.
	Clock clockwork.Clock
}

// NewAuthority checks that the certificate is a CA of the profile, that the
// signer holds its key, and prepares the encoding of leaves it will sign.
func NewAuthority(c AuthorityConfig) (*Authority, error) {
	switch {
	case c.Profile == nil:
		return nil, errors.New("ca: authority: no profile")
	case c.TrustDomain.IsZero():
		return nil, errors.New("ca: authority: no trust domain")
	case c.Certificate == nil || c.Signer == nil:
		return nil, errors.New("ca: authority: certificate and signer are required")
	case c.Certificate.Profile != c.Profile.Name():
		return nil, fmt.Errorf("ca: authority: %s certificate for the %s profile", c.Certificate.Profile, c.Profile.Name())
	case !c.Certificate.IsCA:
		return nil, errors.New("ca: authority: certificate is not a CA")
	case len(c.Certificate.SubjectKeyID) == 0:
		return nil, errors.New("ca: authority: certificate has no subject key identifier")
	}
	pub, ok := c.Signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(c.Certificate.PublicKey) {
		return nil, errors.New("ca: authority: signer does not hold the certificate's key")
	}
	clock := c.Clock
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	chain := [][]byte{c.Certificate.Raw}
	for _, u := range c.Upstream {
		chain = append(chain, u.Raw)
	}
	return &Authority{
		profile: c.Profile, td: c.TrustDomain, cert: c.Certificate, signer: c.Signer,
		chain: chain, clock: clock, leaf: newLeafTemplate(c.Profile, c.Certificate),
	}, nil
}

// Profile returns the authority's profile.
func (a *Authority) Profile() Profile { return a.profile }

// Certificate returns the authority's CA certificate.
func (a *Authority) Certificate() *Certificate { return a.cert }

// X509SVIDParams is an authorized request for an X509-SVID.
type X509SVIDParams struct {
	// CSR is a DER PKCS#10 request. Only its public key is used: its subject
	// and SANs are ignored (more than one URI SAN is refused as malformed
	// intent). Its signature must verify and its key must be the profile's.
	CSR []byte
	// SPIFFEID is the identity the caller has been authorized for.
	SPIFFEID string
	// DNSNames are optional DNS SANs.
	DNSNames []string
	// TTL is the requested lifetime; zero means DefaultSVIDTTL. NotAfter is
	// clamped to the authority's own NotAfter.
	TTL time.Duration
}

// X509SVID is an issued workload certificate.
type X509SVID struct {
	SPIFFEID     string
	Profile      string
	SerialNumber *big.Int
	NotBefore    time.Time
	NotAfter     time.Time
	// Certificates holds DER certificates: the leaf, then the intermediates
	// up to (excluding) the root.
	Certificates [][]byte
}

// ChainPEM returns the leaf followed by the intermediates, PEM-encoded.
func (s *X509SVID) ChainPEM() []byte { return EncodePEM(s.Certificates...) }

// SignX509SVID issues an X509-SVID for p.SPIFFEID certifying the key of
// p.CSR. Invalid requests get a *RequestError and issue nothing.
func (a *Authority) SignX509SVID(ctx context.Context, p X509SVIDParams) (*X509SVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	id, err := a.checkSPIFFEID(p.SPIFFEID)
	if err != nil {
		return nil, err
	}
	if err := CheckDNSNames(p.DNSNames); err != nil {
		return nil, err
	}
	ttl := p.TTL
	switch {
	case ttl < 0:
		return nil, reqErr(ReasonInvalidTTL, fmt.Sprintf("negative TTL %s", ttl), nil)
	case ttl == 0:
		ttl = DefaultSVIDTTL
	case ttl < time.Second:
		return nil, reqErr(ReasonInvalidTTL, fmt.Sprintf("TTL %s is under one second", ttl), nil)
	}
	switch {
	case len(p.CSR) == 0:
		return nil, reqErr(ReasonMalformedCSR, "empty CSR", nil)
	case len(p.CSR) > MaxCSRSize:
		return nil, reqErr(ReasonCSRTooLarge, fmt.Sprintf("%d bytes, limit %d", len(p.CSR), MaxCSRSize), nil)
	}
	csr, err := a.profile.checkCSR(p.CSR)
	if err != nil {
		return nil, err
	}
	if csr.uriSANs > 1 {
		return nil, reqErr(ReasonTooManyURISANs, fmt.Sprintf("the CSR asks for %d URI SANs; an X509-SVID has exactly one", csr.uriSANs), nil)
	}
	skid, err := subjectKeyID(csr.spki)
	if err != nil {
		return nil, reqErr(ReasonMalformedCSR, "", err)
	}

	now := a.clock.Now().Truncate(time.Second)
	notAfter := now.Add(ttl)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, reqErr(ReasonAuthorityExpired, "the issuing authority expired at "+a.cert.NotAfter.UTC().Format(time.RFC3339), nil)
	}
	notBefore := now.Add(-Backdate)
	if notBefore.Before(a.cert.NotBefore) {
		notBefore = a.cert.NotBefore
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	f := &leafFields{
		serial: serial, notBefore: notBefore, notAfter: notAfter,
		spki: csr.spki, subjKeyID: skid, uri: id.String(), dnsNames: p.DNSNames,
	}
	der, err := a.signLeaf(f)
	if err != nil {
		return nil, err
	}
	certs := make([][]byte, 0, 1+len(a.chain))
	certs = append(certs, der)
	certs = append(certs, a.chain...)
	return &X509SVID{
		SPIFFEID: f.uri, Profile: a.profile.Name(), SerialNumber: serial,
		NotBefore: notBefore.UTC(), NotAfter: notAfter.UTC(), Certificates: certs,
	}, nil
}

func (a *Authority) signLeaf(f *leafFields) ([]byte, error) {
	tbs, err := a.leaf.encode(f)
	if err != nil {
		return nil, fmt.Errorf("ca: encode certificate: %w", err)
	}
	sig, err := a.profile.signTBS(a.signer, tbs)
	if err != nil {
		return nil, fmt.Errorf("ca: sign certificate: %w", err)
	}
	der, err := assembleCertificate(tbs, a.leaf.sigAlg, sig)
	if err != nil {
		return nil, fmt.Errorf("ca: encode certificate: %w", err)
	}
	return der, nil
}

func (a *Authority) checkSPIFFEID(s string) (spiffeid.ID, error) {
	id, err := ParseWorkloadID(s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if id.TrustDomain() != a.td {
		return spiffeid.ID{}, reqErr(ReasonTrustDomainMismatch, fmt.Sprintf("%q is not in trust domain %q", s, a.td.Name()), nil)
	}
	return id, nil
}

// ParseWorkloadID parses a SPIFFE ID that can name a workload: valid by the
// SPIFFE ID rules, at most 2048 bytes, with a non-empty path. Errors are
// *RequestError with ReasonInvalidSPIFFEID.
func ParseWorkloadID(s string) (spiffeid.ID, error) {
	if len(s) > maxSPIFFEIDLen {
		return spiffeid.ID{}, reqErr(ReasonInvalidSPIFFEID, fmt.Sprintf("%d bytes, limit %d", len(s), maxSPIFFEIDLen), nil)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, reqErr(ReasonInvalidSPIFFEID, fmt.Sprintf("%q", s), err)
	}
	if id.Path() == "" {
		return spiffeid.ID{}, reqErr(ReasonInvalidSPIFFEID, fmt.Sprintf("%q names the trust domain itself; a workload ID needs a path", s), nil)
	}
	return id, nil
}

// NewSerial returns a random positive 128-bit serial number.
func NewSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("ca: serial: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// EncodePEM encodes DER certificates as consecutive PEM CERTIFICATE blocks.
func EncodePEM(ders ...[]byte) []byte {
	var buf bytes.Buffer
	for _, d := range ders {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: d})
	}
	return buf.Bytes()
}

// CheckDNSNames validates DNS SANs: at most MaxDNSNames names, each of
// lowercase LDH labels of 1-63 bytes, at most 253 bytes in all, with an
// optional "*." wildcard as the first label. Errors are *RequestError with
// ReasonInvalidDNSName.
func CheckDNSNames(names []string) error {
	if len(names) > MaxDNSNames {
		return reqErr(ReasonInvalidDNSName, fmt.Sprintf("%d DNS names, limit %d", len(names), MaxDNSNames), nil)
	}
	for _, n := range names {
		if !validDNSName(n) {
			return reqErr(ReasonInvalidDNSName, fmt.Sprintf("%q is not a lowercase DNS name", n), nil)
		}
	}
	return nil
}

func validDNSName(n string) bool {
	if len(n) == 0 || len(n) > 253 {
		return false
	}
	if len(n) > 2 && n[:2] == "*." {
		n = n[2:]
	}
	label := 0
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case c == '.':
			if label == 0 || n[i-1] == '-' {
				return false
			}
			label = 0
			continue
		case c == '-':
			if label == 0 {
				return false
			}
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0 && n[len(n)-1] != '-'
}

// CheckSignedBy verifies that child's signature is parent's, for either
// profile.
func CheckSignedBy(child, parent *Certificate) error {
	if c, ok := child.X509(); ok {
		p, ok := parent.X509()
		if !ok {
			return errors.New("ca: an ecdsa certificate under an sm2 parent")
		}
		return c.CheckSignatureFrom(p)
	}
	c, ok := child.parsed.(*smx509.Certificate)
	p, ok2 := parent.parsed.(*smx509.Certificate)
	if !ok || !ok2 {
		return errors.New("ca: certificates of different profiles")
	}
	return c.CheckSignatureFrom(p)
}
