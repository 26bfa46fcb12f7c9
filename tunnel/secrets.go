package tunnel

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/meshca/meshca/policy"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrSM2 is returned (wrapped) for an SM2 certificate, key or root: Go's
// TLS has no SM2 cipher suites (TLS_SM4_GCM_SM3, RFC 8998), so this
// endpoint cannot use SM2 chains. Give the workload an ECDSA entry (the
// plain SDS names "default" and "ROOTCA" then carry it), or use a
// GM-capable proxy (see the README: a Tongsuo-built Envoy asking for
// "default~sm2" and "ROOTCA~sm2").
var ErrSM2 = errors.New("tunnel: SM2 chains are not supported: Go's TLS has no SM2 cipher suites (RFC 8998); use an ECDSA identity, or a GM-capable proxy asking for the ~sm2 secrets")

// SecretError is a secret that does not parse; it is NACKed and the last
// good secret stays in use.
type SecretError struct {
	Name string
	Err  error
}

func (e *SecretError) Error() string { return fmt.Sprintf("tunnel: secret %q: %v", e.Name, e.Err) }
func (e *SecretError) Unwrap() error { return e.Err }

// identity is the workload's certificate and key from a tls_certificate.
type identity struct {
	cert     *tls.Certificate
	id       spiffeid.ID
	notAfter time.Time
	version  string
}

func secretErr(name string, format string, args ...any) error {
	return &SecretError{Name: name, Err: fmt.Errorf(format, args...)}
}

// parseIdentity reads a tls_certificate secret: an ECDSA X509-SVID chain
// (leaf first) and its PKCS#8 key, inline PEM.
func parseIdentity(sec *tlsv3.Secret, version string) (*identity, error) {
	name := sec.GetName()
	tc := sec.GetTlsCertificate()
	if tc == nil {
		return nil, secretErr(name, "is a %T, not a tls_certificate", sec.GetType())
	}
	chainPEM, keyPEM := tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes()
	if len(chainPEM) == 0 || len(keyPEM) == 0 {
		return nil, secretErr(name, "no inline certificate chain or private key")
	}
	if err := refuseSM2(chainPEM); err != nil {
		return nil, &SecretError{Name: name, Err: err}
	}
	cert, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, &SecretError{Name: name, Err: err}
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, &SecretError{Name: name, Err: err}
		}
		cert.Leaf = leaf
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, secretErr(name, "the leaf's key is a %T; this endpoint uses ECDSA identities", leaf.PublicKey)
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, &SecretError{Name: name, Err: err}
	}
	return &identity{cert: &cert, id: id, notAfter: leaf.NotAfter, version: version}, nil
}

// refuseSM2 returns ErrSM2 if a PEM bundle holds an SM2 certificate.
func refuseSM2(pemBytes []byte) error {
	for rest := pemBytes; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err == nil {
			continue
		}
		c, err := smx509.ParseCertificate(b.Bytes)
		if err != nil {
			continue // reported by the stdlib parser
		}
		if pk, ok := c.PublicKey.(*ecdsa.PublicKey); ok && pk.Curve == sm2.P256() {
			return fmt.Errorf("%w (certificate %q)", ErrSM2, c.Subject)
		}
	}
}

// crl is a parsed CRL with its revoked serials.
type crl struct {
	rl      *x509.RevocationList
	revoked map[string]bool // serial (decimal) → revoked
}

// validation is the validation context: roots of the own trust domain and
// the CRL of every CA that may appear in a chain (or none).
type validation struct {
	roots   []*x509.Certificate
	crls    []*crl
	version string

	mu       sync.Mutex
	signed   map[[2][32]byte]bool   // (CRL, issuer) pairs whose signature checked
	verified map[[32]byte]*verified // peer chains that verified against these roots
}

// verified is a peer chain that verified, valid from notBefore to
// notAfter (the intersection of its certificates' validity).
type verified struct {
	id                  spiffeid.ID
	chains              [][]*x509.Certificate
	notBefore, notAfter time.Time
}

// maxVerified bounds the cache of verified chains of one validation
// context (it is emptied when full).
const maxVerified = 4096

// parseValidation reads a validation_context secret: trusted_ca (PEM
// roots) and crl (PEM CRLs).
func parseValidation(sec *tlsv3.Secret, version string) (*validation, error) {
	name := sec.GetName()
	vc := sec.GetValidationContext()
	if vc == nil {
		return nil, secretErr(name, "is a %T, not a validation_context", sec.GetType())
	}
	if vc.GetCustomValidatorConfig() != nil {
		return nil, secretErr(name, "uses a custom validator (%s); ask for the trust domain's validation context (ROOTCA), which carries CRLs", vc.GetCustomValidatorConfig().GetName())
	}
	caPEM := vc.GetTrustedCa().GetInlineBytes()
	if err := refuseSM2(caPEM); err != nil {
		return nil, &SecretError{Name: name, Err: err}
	}
	v := &validation{version: version, signed: map[[2][32]byte]bool{}, verified: map[[32]byte]*verified{}}
	for rest := caPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, secretErr(name, "trusted_ca holds a %q block", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, secretErr(name, "trusted_ca: %v", err)
		}
		if !c.IsCA {
			return nil, secretErr(name, "trusted_ca: %s is not a CA", c.Subject)
		}
		v.roots = append(v.roots, c)
	}
	if len(v.roots) == 0 {
		return nil, secretErr(name, "no roots in trusted_ca")
	}
	for rest := vc.GetCrl().GetInlineBytes(); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "X509 CRL" {
			return nil, secretErr(name, "crl holds a %q block", b.Type)
		}
		rl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			return nil, secretErr(name, "crl: %v", err)
		}
		c := &crl{rl: rl, revoked: make(map[string]bool, len(rl.RevokedCertificateEntries))}
		for _, e := range rl.RevokedCertificateEntries {
			c.revoked[e.SerialNumber.String()] = true
		}
		v.crls = append(v.crls, c)
	}
	return v, nil
}

// RevokedError is a peer whose chain holds a revoked certificate.
type RevokedError struct {
	Serial  string // decimal
	Subject string
	Issuer  string
}

func (e *RevokedError) Error() string {
	return fmt.Sprintf("tunnel: certificate %s (serial %s) is revoked by its issuer %s", e.Subject, e.Serial, e.Issuer)
}

// PeerError is a peer certificate chain that does not verify.
type PeerError struct{ Err error }

func (e *PeerError) Error() string { return "tunnel: peer certificate: " + e.Err.Error() }
func (e *PeerError) Unwrap() error { return e.Err }

// verifyPeer verifies a peer's chain as an X509-SVID of trust domain td
// against the roots at now, then checks every certificate of the chain
// but the root against its issuer's CRL. It returns the peer's SPIFFE ID
// and the chain that passed.
func (v *validation) verifyPeer(raw [][]byte, td spiffeid.TrustDomain, now time.Time) (spiffeid.ID, []*x509.Certificate, error) {
	if len(raw) == 0 {
		return spiffeid.ID{}, nil, &PeerError{Err: errors.New("no certificate")}
	}
	// A peer reconnecting presents the same chain: its path validation
	// against these roots is kept (for the chain's validity window only);
	// the revocation check below runs on every connection.
	h := sha256.New()
	for _, der := range raw {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(der)>>24), byte(len(der)>>16), byte(len(der)>>8), byte(len(der))
		h.Write(n[:])
		h.Write(der)
	}
	var key [32]byte
	h.Sum(key[:0])
	v.mu.Lock()
	hit := v.verified[key]
	v.mu.Unlock()
	if hit == nil || now.Before(hit.notBefore) || now.After(hit.notAfter) {
		certs := make([]*x509.Certificate, len(raw))
		for i, der := range raw {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return spiffeid.ID{}, nil, &PeerError{Err: err}
			}
			certs[i] = c
		}
		id, chains, err := x509svid.Verify(certs, x509bundle.FromX509Authorities(td, v.roots), x509svid.WithTime(now))
		if err != nil {
			return spiffeid.ID{}, nil, &PeerError{Err: err}
		}
		hit = &verified{id: id, chains: chains, notBefore: chains[0][0].NotBefore, notAfter: chains[0][0].NotAfter}
		for _, chain := range chains {
			for _, c := range chain {
				if c.NotBefore.After(hit.notBefore) {
					hit.notBefore = c.NotBefore
				}
				if c.NotAfter.Before(hit.notAfter) {
					hit.notAfter = c.NotAfter
				}
			}
		}
		v.mu.Lock()
		if len(v.verified) >= maxVerified {
			clear(v.verified)
		}
		v.verified[key] = hit
		v.mu.Unlock()
	} else if hit.id.TrustDomain() != td {
		return spiffeid.ID{}, nil, &PeerError{Err: fmt.Errorf("%s is not of trust domain %s", hit.id, td)}
	}
	id, chains := hit.id, hit.chains
	var firstErr error
	for _, chain := range chains {
		err := v.checkRevocation(chain, now)
		if err == nil {
			return id, chain, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return spiffeid.ID{}, nil, firstErr
}

// checkRevocation checks each certificate of a verified chain (leaf
// first, root last) against the CRL of its issuer. Without any CRL (a
// cluster that has not signed them yet) nothing is checked; with some, a
// CA without one fails the chain, as Envoy does.
func (v *validation) checkRevocation(chain []*x509.Certificate, now time.Time) error {
	if len(v.crls) == 0 {
		return nil
	}
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		c := v.crlOf(issuer)
		if c == nil {
			return &PeerError{Err: fmt.Errorf("no CRL of CA %s in the validation context", issuer.Subject)}
		}
		if !c.rl.NextUpdate.IsZero() && now.After(c.rl.NextUpdate) {
			return &PeerError{Err: fmt.Errorf("the CRL of CA %s expired at %s (the agent has not had a fresh one)", issuer.Subject, c.rl.NextUpdate.UTC().Format(time.RFC3339))}
		}
		if c.revoked[cert.SerialNumber.String()] {
			return &RevokedError{Serial: cert.SerialNumber.String(), Subject: cert.Subject.String(), Issuer: issuer.Subject.String()}
		}
	}
	return nil
}

// crlOf returns the CRL that issuer signed, or nil.
func (v *validation) crlOf(issuer *x509.Certificate) *crl {
	for _, c := range v.crls {
		if !bytes.Equal(c.rl.RawIssuer, issuer.RawSubject) {
			continue
		}
		key := [2][32]byte{sha256.Sum256(c.rl.Raw), sha256.Sum256(issuer.Raw)}
		v.mu.Lock()
		ok, checked := v.signed[key]
		v.mu.Unlock()
		if !checked {
			ok = c.rl.CheckSignatureFrom(issuer) == nil
			v.mu.Lock()
			v.signed[key] = ok
			v.mu.Unlock()
		}
		if ok {
			return c
		}
	}
	return nil
}

// authorizer is a verified, compiled OPA bundle.
type authorizer struct {
	z        *policy.Authz
	revision uint64
	version  string
}

// parseAuthorizer reads a generic_secret carrying a signed OPA bundle,
// verifies its signature with the trust domain's OPA key (as OPA does)
// and compiles the decision with the same code as the agent's ext_authz.
func parseAuthorizer(ctx context.Context, sec *tlsv3.Secret, version string, keyPEM []byte, keyID, decision string) (*authorizer, error) {
	name := sec.GetName()
	g := sec.GetGenericSecret()
	if g == nil {
		return nil, secretErr(name, "is a %T, not a generic_secret", sec.GetType())
	}
	raw := g.GetSecret().GetInlineBytes()
	if len(raw) == 0 {
		return nil, secretErr(name, "no inline bundle")
	}
	b, err := policy.Verify(bytes.NewReader(raw), keyPEM, keyID)
	if err != nil {
		return nil, &SecretError{Name: name, Err: err}
	}
	rev, err := strconv.ParseUint(b.Manifest.Revision, 10, 64)
	if err != nil {
		return nil, secretErr(name, "manifest revision %q is not a number", b.Manifest.Revision)
	}
	z, err := policy.CompileAuthz(ctx, rev, raw, decision)
	if err != nil {
		return nil, &SecretError{Name: name, Err: err}
	}
	return &authorizer{z: z, revision: rev, version: version}, nil
}
