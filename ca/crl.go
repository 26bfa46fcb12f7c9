package ca

import (
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// DefaultCRLValidity is how long a CRL is valid (NextUpdate - ThisUpdate)
// when CRLParams.NextUpdate is zero.
const DefaultCRLValidity = 24 * time.Hour

// Revocation is one revoked certificate in a CRL.
type Revocation struct {
	SerialNumber *big.Int
	RevokedAt    time.Time
	// ReasonCode is an RFC 5280 CRLReason; 0 (unspecified) is omitted.
	ReasonCode int
}

// CRLParams describes a CRL to sign.
type CRLParams struct {
	// Number is the CRL number. It must be positive and greater than the
	// number of every CRL this authority signed before; callers keep it in
	// replicated state so it never goes backwards after a failover.
	Number *big.Int
	// ThisUpdate defaults to the authority's clock.
	ThisUpdate time.Time
	// NextUpdate defaults to ThisUpdate + DefaultCRLValidity.
	NextUpdate time.Time
	Revoked    []Revocation
}

// CreateCRL signs a DER CRL over the certificates this authority issued.
func (a *Authority) CreateCRL(p CRLParams) ([]byte, error) {
	if p.Number == nil || p.Number.Sign() <= 0 || p.Number.BitLen() > 159 {
		return nil, errors.New("ca: CRL number must be positive and at most 20 octets")
	}
	if p.ThisUpdate.IsZero() {
		p.ThisUpdate = a.clock.Now()
	}
	if p.NextUpdate.IsZero() {
		p.NextUpdate = p.ThisUpdate.Add(DefaultCRLValidity)
	}
	if !p.NextUpdate.After(p.ThisUpdate) {
		return nil, errors.New("ca: CRL NextUpdate must be after ThisUpdate")
	}
	tmpl := &x509.RevocationList{
		Number:     p.Number,
		ThisUpdate: p.ThisUpdate.UTC(),
		NextUpdate: p.NextUpdate.UTC(),
	}
	for _, r := range p.Revoked {
		if r.SerialNumber == nil || r.RevokedAt.IsZero() {
			return nil, errors.New("ca: CRL entry needs a serial number and a revocation time")
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: r.SerialNumber, RevocationTime: r.RevokedAt.UTC(), ReasonCode: r.ReasonCode,
		})
	}
	der, err := a.profile.createCRL(tmpl, a.cert, a.signer)
	if err != nil {
		return nil, fmt.Errorf("ca: sign CRL: %w", err)
	}
	return der, nil
}
