package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

type sm2Profile struct{}

// DER of AlgorithmIdentifier{SM2-with-SM3 1.2.156.10197.1.501} (parameters absent).
var sm2WithSM3 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75}

func (sm2Profile) Name() string { return ProfileSM2 }

func (sm2Profile) GenerateKey() (crypto.Signer, error) { return sm2.GenerateKey(rand.Reader) }

func (sm2Profile) ParseCertificate(der []byte) (*Certificate, error) {
	c, err := smx509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse sm2 certificate: %w", err)
	}
	return &Certificate{
		Raw: c.Raw, RawSubject: c.RawSubject, RawSubjectPublicKeyInfo: c.RawSubjectPublicKeyInfo,
		SubjectKeyID: c.SubjectKeyId, SerialNumber: c.SerialNumber, Subject: c.Subject.String(),
		NotBefore: c.NotBefore, NotAfter: c.NotAfter, IsCA: c.IsCA, PublicKey: c.PublicKey,
		URIs:    uriStrings(len(c.URIs), func(i int) string { return c.URIs[i].String() }),
		Profile: ProfileSM2, parsed: c,
	}, nil
}

func (p sm2Profile) checkCSR(der []byte) (*csrInfo, error) {
	if c, ok := parsePlainCSR(der); ok && bytes.Equal(c.sigAlg, sm2WithSM3) {
		if pub, err := smx509.ParsePKIXPublicKey(c.spki); err == nil && isSM2(pub) {
			if !sm2.VerifyASN1WithSM2(pub.(*ecdsa.PublicKey), nil, c.info, c.sig) {
				// What CheckSignature says of the same request.
				return nil, reqErr(ReasonCSRSignature, "the CSR's signature does not verify (signer ID "+SM2SignerID+")", errors.New("x509: SM2 verification failure"))
			}
			return &csrInfo{pub: pub, spki: c.spki}, nil
		}
	}
	return p.checkAnyCSR(der)
}

// checkAnyCSR is checkCSR for every request, with the full parser.
func (sm2Profile) checkAnyCSR(der []byte) (*csrInfo, error) {
	csr, err := smx509.ParseCertificateRequest(der)
	if err != nil {
		return nil, reqErr(ReasonMalformedCSR, "not a DER PKCS#10 certificate request", err)
	}
	if !isSM2(csr.PublicKey) {
		return nil, reqErr(ReasonKeyType, describeKey(csr.PublicKey)+"; the sm2 profile accepts SM2 keys only", nil)
	}
	if csr.SignatureAlgorithm != smx509.SM2WithSM3 {
		return nil, reqErr(ReasonCSRSignature, "signature algorithm "+csr.SignatureAlgorithm.String()+"; want SM2-with-SM3", nil)
	}
	// smx509 verifies SM2 signatures with the default signer ID.
	if err := csr.CheckSignature(); err != nil {
		return nil, reqErr(ReasonCSRSignature, "the CSR's signature does not verify (signer ID "+SM2SignerID+")", err)
	}
	return &csrInfo{pub: csr.PublicKey, spki: csr.RawSubjectPublicKeyInfo, uriSANs: len(csr.URIs)}, nil
}

func (sm2Profile) CreateCSR(key crypto.Signer) ([]byte, error) {
	der, err := smx509.CreateCertificateRequest(rand.Reader, &smx509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("ca: create CSR: %w", err)
	}
	return der, nil
}

func (sm2Profile) sigAlgDER() []byte { return sm2WithSM3 }

// signTBS signs with SM2 over SM3(Z_A || tbs), Z_A computed with the
// default signer ID: the signer is given the message, not a digest.
func (sm2Profile) signTBS(signer crypto.Signer, tbs []byte) ([]byte, error) {
	return signer.Sign(rand.Reader, tbs, sm2.DefaultSM2SignerOpts)
}

func (sm2Profile) leafKeyUsage() x509.KeyUsage {
	return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement
}

func (p sm2Profile) createCA(tmpl *x509.Certificate, parent *Certificate, parentSigner crypto.Signer) (*Certificate, crypto.Signer, error) {
	key, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: generate sm2 key: %w", err)
	}
	t := toSMTemplate(tmpl)
	issuer, signer := t, crypto.Signer(key)
	if parent != nil {
		pc, ok := parent.parsed.(*smx509.Certificate)
		if !ok {
			return nil, nil, fmt.Errorf("ca: sm2 certificate cannot have a %s parent", parent.Profile)
		}
		issuer, signer = pc, parentSigner
	}
	der, err := smx509.CreateCertificate(rand.Reader, t, issuer, key.Public(), signer)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create %s: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := p.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func (p sm2Profile) signCA(tmpl *x509.Certificate, pub crypto.PublicKey, parent *Certificate, parentSigner crypto.Signer) (*Certificate, error) {
	pc, ok := parent.parsed.(*smx509.Certificate)
	if !ok {
		return nil, fmt.Errorf("ca: sm2 certificate cannot have a %s parent", parent.Profile)
	}
	der, err := smx509.CreateCertificate(rand.Reader, toSMTemplate(tmpl), pc, pub, parentSigner)
	if err != nil {
		return nil, fmt.Errorf("ca: sign %s: %w", tmpl.Subject.CommonName, err)
	}
	return p.ParseCertificate(der)
}

func (sm2Profile) createCRL(tmpl *x509.RevocationList, issuer *Certificate, signer crypto.Signer) ([]byte, error) {
	ic, ok := issuer.parsed.(*smx509.Certificate)
	if !ok {
		return nil, fmt.Errorf("ca: sm2 CRL cannot have a %s issuer", issuer.Profile)
	}
	t := &smx509.RevocationList{
		Number:          tmpl.Number,
		ThisUpdate:      tmpl.ThisUpdate,
		NextUpdate:      tmpl.NextUpdate,
		ExtraExtensions: tmpl.ExtraExtensions,
	}
	for _, e := range tmpl.RevokedCertificateEntries {
		t.RevokedCertificateEntries = append(t.RevokedCertificateEntries, smx509.RevocationListEntry{
			SerialNumber: e.SerialNumber, RevocationTime: e.RevocationTime, ReasonCode: e.ReasonCode,
		})
	}
	return smx509.CreateRevocationList(rand.Reader, t, ic, signer)
}

func (sm2Profile) MarshalPrivateKey(key crypto.Signer) ([]byte, error) {
	k, ok := key.(*sm2.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("ca: sm2 profile cannot seal a %T", key)
	}
	return smx509.MarshalPKCS8PrivateKey(k)
}

func (sm2Profile) parseKey(der []byte) (crypto.Signer, error) {
	k, err := smx509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse sm2 key: %w", err)
	}
	s, ok := k.(*sm2.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("ca: sealed key is a %T, not an SM2 key", k)
	}
	return s, nil
}

// toSMTemplate copies the template fields meshca uses into gmsm's mirror of
// x509.Certificate.
func toSMTemplate(t *x509.Certificate) *smx509.Certificate {
	s := &smx509.Certificate{
		SerialNumber:          t.SerialNumber,
		Subject:               t.Subject,
		NotBefore:             t.NotBefore,
		NotAfter:              t.NotAfter,
		KeyUsage:              smx509.KeyUsage(t.KeyUsage),
		BasicConstraintsValid: t.BasicConstraintsValid,
		IsCA:                  t.IsCA,
		MaxPathLen:            t.MaxPathLen,
		MaxPathLenZero:        t.MaxPathLenZero,
		SubjectKeyId:          t.SubjectKeyId,
		AuthorityKeyId:        t.AuthorityKeyId,
		DNSNames:              t.DNSNames,
		URIs:                  t.URIs,
		ExtraExtensions:       t.ExtraExtensions,
	}
	for _, u := range t.ExtKeyUsage {
		s.ExtKeyUsage = append(s.ExtKeyUsage, smx509.ExtKeyUsage(u))
	}
	return s
}
