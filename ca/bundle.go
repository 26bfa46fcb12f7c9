package ca

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultRefreshHint is the spiffe_refresh_hint of bundles.
const DefaultRefreshHint = 5 * time.Minute

// Bundle is a trust domain's set of X.509 roots.
type Bundle struct {
	TrustDomain spiffeid.TrustDomain
	// Roots are the root certificates of every active profile.
	Roots []*Certificate
	// Sequence is spiffe_sequence: it increases on every change of the bundle.
	Sequence uint64
	// RefreshHint is spiffe_refresh_hint; zero means DefaultRefreshHint.
	RefreshHint time.Duration
}

// ForProfile returns the bundle restricted to the roots of one profile.
// Consumers built on crypto/x509 or JOSE (go-spiffe among them) cannot parse
// SM2 roots and should be given ForProfile(ProfileECDSA).
func (b *Bundle) ForProfile(name string) *Bundle {
	out := *b
	out.Roots = nil
	for _, r := range b.Roots {
		if r.Profile == name {
			out.Roots = append(out.Roots, r)
		}
	}
	return &out
}

// PEM returns the roots as concatenated PEM certificates.
func (b *Bundle) PEM() []byte {
	ders := make([][]byte, len(b.Roots))
	for i, r := range b.Roots {
		ders[i] = r.Raw
	}
	return EncodePEM(ders...)
}

type jwk struct {
	Use string   `json:"use"`
	Kty string   `json:"kty"`
	Crv string   `json:"crv"`
	X   string   `json:"x"`
	Y   string   `json:"y"`
	X5c []string `json:"x5c"`
}

type jwks struct {
	Keys        []jwk  `json:"keys"`
	Sequence    uint64 `json:"spiffe_sequence"`
	RefreshHint int64  `json:"spiffe_refresh_hint"`
}

// SPIFFEJSON returns the bundle in the SPIFFE trust bundle format: a JWK set
// whose x509-svid keys carry one root each in x5c (and no kid), with
// spiffe_sequence and spiffe_refresh_hint (seconds). JOSE defines no SM2
// curve: SM2 roots appear as kty "EC", crv "SM2", which parsers that know
// only the registered curves reject; see ForProfile.
func (b *Bundle) SPIFFEJSON() ([]byte, error) {
	hint := b.RefreshHint
	if hint == 0 {
		hint = DefaultRefreshHint
	}
	doc := jwks{Keys: []jwk{}, Sequence: b.Sequence, RefreshHint: int64((hint + time.Second - 1) / time.Second)}
	for _, r := range b.Roots {
		pub, ok := r.PublicKey.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("ca: bundle: root %q has a %T key", r.Subject, r.PublicKey)
		}
		crv := "P-256"
		if r.Profile == ProfileSM2 {
			crv = "SM2"
		}
		var x, y [32]byte
		pub.X.FillBytes(x[:])
		pub.Y.FillBytes(y[:])
		doc.Keys = append(doc.Keys, jwk{
			Use: "x509-svid", Kty: "EC", Crv: crv,
			X:   base64.RawURLEncoding.EncodeToString(x[:]),
			Y:   base64.RawURLEncoding.EncodeToString(y[:]),
			X5c: []string{base64.StdEncoding.EncodeToString(r.Raw)},
		})
	}
	return json.MarshalIndent(doc, "", "  ")
}

// TrustDomainOfRoots returns the trust domain named by the roots' URI SANs
// (meshca CA certificates carry spiffe://<trust domain>).
func TrustDomainOfRoots(roots []*x509.Certificate) (spiffeid.TrustDomain, error) {
	for _, r := range roots {
		for _, u := range r.URIs {
			if id, err := spiffeid.FromURI(u); err == nil {
				return id.TrustDomain(), nil
			}
		}
	}
	return spiffeid.TrustDomain{}, errors.New("ca: the roots name no trust domain (no spiffe:// URI SAN)")
}
