package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/emmansun/gmsm/smx509"
	"github.com/meshca/meshca/ca/internal/ecdsaca"
)

type ecdsaProfile struct{}

// DER of AlgorithmIdentifier{ecdsa-with-SHA256} (RFC 5758: parameters absent).
var ecdsaWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}

func (ecdsaProfile) Name() string { return ProfileECDSA }

func (ecdsaProfile) GenerateKey() (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func (ecdsaProfile) ParseCertificate(der []byte) (*Certificate, error) {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse ecdsa certificate: %w", err)
	}
	return &Certificate{
		Raw: c.Raw, RawSubject: c.RawSubject, RawSubjectPublicKeyInfo: c.RawSubjectPublicKeyInfo,
		SubjectKeyID: c.SubjectKeyId, SerialNumber: c.SerialNumber, Subject: c.Subject.String(),
		NotBefore: c.NotBefore, NotAfter: c.NotAfter, IsCA: c.IsCA, PublicKey: c.PublicKey,
		URIs:    uriStrings(len(c.URIs), func(i int) string { return c.URIs[i].String() }),
		Profile: ProfileECDSA, parsed: c,
	}, nil
}

func (p ecdsaProfile) checkCSR(der []byte) (*csrInfo, error) {
	if c, ok := parsePlainCSR(der); ok && bytes.Equal(c.sigAlg, ecdsaWithSHA256) {
		if pub, ok := plainP256Key(c.spki); ok {
			d := sha256.Sum256(c.info)
			if !ecdsa.VerifyASN1(pub, d[:], c.sig) {
				// What CheckSignature says of the same request.
				return nil, reqErr(ReasonCSRSignature, "the CSR's signature does not verify", errors.New("x509: ECDSA verification failure"))
			}
			return &csrInfo{pub: pub, spki: c.spki}, nil
		}
	}
	return p.checkAnyCSR(der)
}

// checkAnyCSR is checkCSR for every request, with the full parser.
func (ecdsaProfile) checkAnyCSR(der []byte) (*csrInfo, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		// crypto/x509 refuses curves it does not know; name an SM2 key
		// precisely instead of calling the CSR malformed.
		if sm, err2 := smx509.ParseCertificateRequest(der); err2 == nil {
			return nil, reqErr(ReasonKeyType, describeKey(sm.PublicKey)+"; the ecdsa profile accepts ECDSA P-256 keys only", nil)
		}
		return nil, reqErr(ReasonMalformedCSR, "not a DER PKCS#10 certificate request", err)
	}
	if !isP256(csr.PublicKey) {
		return nil, reqErr(ReasonKeyType, describeKey(csr.PublicKey)+"; the ecdsa profile accepts ECDSA P-256 keys only", nil)
	}
	if csr.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		return nil, reqErr(ReasonCSRSignature, "signature algorithm "+csr.SignatureAlgorithm.String()+"; want ECDSA-SHA256", nil)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, reqErr(ReasonCSRSignature, "the CSR's signature does not verify", err)
	}
	return &csrInfo{pub: csr.PublicKey, spki: csr.RawSubjectPublicKeyInfo, uriSANs: len(csr.URIs)}, nil
}

func (ecdsaProfile) CreateCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("ca: create CSR: %w", err)
	}
	return der, nil
}

func (ecdsaProfile) sigAlgDER() []byte { return ecdsaWithSHA256 }

func (ecdsaProfile) signTBS(signer crypto.Signer, tbs []byte) ([]byte, error) {
	d := sha256.Sum256(tbs)
	return signer.Sign(rand.Reader, d[:], crypto.SHA256)
}

func (ecdsaProfile) leafKeyUsage() x509.KeyUsage { return x509.KeyUsageDigitalSignature }

// createCA makes a CA key and its certificate through the registered
// ECDSA CA service (package ca/stepcas: smallstep's softcas and softkms).
func (p ecdsaProfile) createCA(tmpl *x509.Certificate, parent *Certificate, parentSigner crypto.Signer) (*Certificate, crypto.Signer, error) {
	svc, err := ecdsaCAService()
	if err != nil {
		return nil, nil, err
	}
	var pc *x509.Certificate
	if parent != nil {
		var ok bool
		if pc, ok = parent.X509(); !ok {
			return nil, nil, fmt.Errorf("ca: ecdsa certificate cannot have a %s parent", parent.Profile)
		}
	}
	c, key, err := svc.CreateCA(tmpl, pc, parentSigner)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: %w", err)
	}
	if !isP256(key.Public()) {
		return nil, nil, fmt.Errorf("ca: the ECDSA CA service made a %s, want ECDSA P-256", describeKey(key.Public()))
	}
	cert, err := p.ParseCertificate(c.Raw)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// signCA certifies a CSR's key as a CA through the registered ECDSA CA
// service, the same interface an upstream CA would implement.
func (p ecdsaProfile) signCA(tmpl *x509.Certificate, pub crypto.PublicKey, parent *Certificate, parentSigner crypto.Signer) (*Certificate, error) {
	svc, err := ecdsaCAService()
	if err != nil {
		return nil, err
	}
	pc, ok := parent.X509()
	if !ok {
		return nil, fmt.Errorf("ca: ecdsa certificate cannot have a %s parent", parent.Profile)
	}
	c, err := svc.SignCA(tmpl, pub, pc, parentSigner)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return p.ParseCertificate(c.Raw)
}

func ecdsaCAService() (ecdsaca.Service, error) {
	if svc := ecdsaca.Registered(); svc != nil {
		return svc, nil
	}
	return nil, ErrNoECDSACAService
}

func (ecdsaProfile) createCRL(tmpl *x509.RevocationList, issuer *Certificate, signer crypto.Signer) ([]byte, error) {
	ic, ok := issuer.X509()
	if !ok {
		return nil, fmt.Errorf("ca: ecdsa CRL cannot have a %s issuer", issuer.Profile)
	}
	return x509.CreateRevocationList(rand.Reader, tmpl, ic, signer)
}

func (ecdsaProfile) MarshalPrivateKey(key crypto.Signer) ([]byte, error) {
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("ca: ecdsa profile cannot seal a %T", key)
	}
	return x509.MarshalPKCS8PrivateKey(k)
}

// parseKey loads a sealed key through the registered ECDSA CA service
// (smallstep's softkms, whose CreateSigner also takes pkcs11: or cloud KMS
// URIs once those key managers are configured), or with crypto/x509 in a
// program without one.
func (ecdsaProfile) parseKey(der []byte) (crypto.Signer, error) {
	var s crypto.Signer
	if svc := ecdsaca.Registered(); svc != nil {
		var err error
		if s, err = svc.LoadSigner(der); err != nil {
			return nil, fmt.Errorf("ca: load key: %w", err)
		}
	} else {
		k, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("ca: load key: %w", err)
		}
		var ok bool
		if s, ok = k.(*ecdsa.PrivateKey); !ok {
			return nil, fmt.Errorf("ca: sealed key is a %T, not ECDSA P-256", k)
		}
	}
	if !isP256(s.Public()) {
		return nil, fmt.Errorf("ca: sealed key is a %s, not ECDSA P-256", describeKey(s.Public()))
	}
	return s, nil
}
