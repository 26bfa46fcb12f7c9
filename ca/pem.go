package ca

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// ErrNoPEMCertificate is ParseCertificatesPEM's error for input that holds
// no PEM certificate at all (not PEM, or empty), so that callers can say
// which file was expected.
var ErrNoPEMCertificate = errors.New("ca: PEM bundle holds no certificate")

// MaxPEMBundleSize bounds a PEM bundle of certificates accepted by
// ParseCertificatesPEM.
const MaxPEMBundleSize = 1 << 20

// ParseCertificatesPEM parses a bundle of PEM CERTIFICATE blocks (X.509,
// as crypto/x509 reads them: ECDSA roots, intermediates, leaves), in
// order. Text between blocks is allowed, as openssl writes it; any other
// block type, a block that does not parse, trailing garbage that looks
// like PEM, or no certificate at all is an error.
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	if len(b) > MaxPEMBundleSize {
		return nil, fmt.Errorf("ca: PEM bundle of %d bytes, limit %d", len(b), MaxPEMBundleSize)
	}
	var out []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("ca: a %q PEM block (block %d); want only CERTIFICATE blocks", blk.Type, len(out)+1)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca: PEM certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if strings.Contains(string(rest), "-----BEGIN") {
		return nil, errors.New("ca: PEM bundle: a damaged block after the certificates")
	}
	if len(out) == 0 {
		return nil, ErrNoPEMCertificate
	}
	return out, nil
}
