package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/emmansun/gmsm/smx509"
	casapi "github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/softkms"
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

func (ecdsaProfile) checkCSR(der []byte) (*csrInfo, error) {
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

// createCA makes a CA key through smallstep's softkms and its certificate
// through softcas, so that an upstream certificate authority service (step-ca,
// Vault, a cloud CAS) or an HSM-backed key manager can take their places
// behind the same apiv1 interfaces.
func (p ecdsaProfile) createCA(tmpl *x509.Certificate, parent *Certificate, parentSigner crypto.Signer) (*Certificate, crypto.Signer, error) {
	km, err := softkms.New(context.Background(), kmsapi.Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("ca: softkms: %w", err)
	}
	cas, err := softcas.New(context.Background(), casapi.Options{IsCreator: true, KeyManager: km})
	if err != nil {
		return nil, nil, fmt.Errorf("ca: softcas: %w", err)
	}
	req := &casapi.CreateCertificateAuthorityRequest{
		Name:      tmpl.Subject.CommonName,
		Type:      casapi.RootCA,
		Template:  tmpl,
		Lifetime:  tmpl.NotAfter.Sub(tmpl.NotBefore),
		CreateKey: &kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256},
	}
	if parent != nil {
		pc, ok := parent.X509()
		if !ok {
			return nil, nil, fmt.Errorf("ca: ecdsa certificate cannot have a %s parent", parent.Profile)
		}
		req.Type = casapi.IntermediateCA
		req.Parent = &casapi.CreateCertificateAuthorityResponse{Certificate: pc, Signer: parentSigner}
	}
	resp, err := cas.CreateCertificateAuthority(req)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: softcas: create %s: %w", tmpl.Subject.CommonName, err)
	}
	key, ok := resp.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !isP256(key.Public()) {
		return nil, nil, fmt.Errorf("ca: softkms made a %T, want an ECDSA P-256 key", resp.PrivateKey)
	}
	cert, err := p.ParseCertificate(resp.Certificate.Raw)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// signCA certifies a CSR's key as a CA through softcas, the same service
// interface an upstream CA would implement.
func (p ecdsaProfile) signCA(tmpl *x509.Certificate, pub crypto.PublicKey, parent *Certificate, parentSigner crypto.Signer) (*Certificate, error) {
	pc, ok := parent.X509()
	if !ok {
		return nil, fmt.Errorf("ca: ecdsa certificate cannot have a %s parent", parent.Profile)
	}
	cas, err := softcas.New(context.Background(), casapi.Options{CertificateChain: []*x509.Certificate{pc}, Signer: parentSigner})
	if err != nil {
		return nil, fmt.Errorf("ca: softcas: %w", err)
	}
	tmpl.PublicKey = pub
	resp, err := cas.CreateCertificate(&casapi.CreateCertificateRequest{Template: tmpl, Lifetime: tmpl.NotAfter.Sub(tmpl.NotBefore)})
	if err != nil {
		return nil, fmt.Errorf("ca: softcas: sign %s: %w", tmpl.Subject.CommonName, err)
	}
	return p.ParseCertificate(resp.Certificate.Raw)
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

// parseKey loads a key through smallstep's softkms; the same CreateSigner
// call takes pkcs11: or cloud KMS URIs once those key managers are configured.
func (ecdsaProfile) parseKey(der []byte) (crypto.Signer, error) {
	km, err := softkms.New(context.Background(), kmsapi.Options{})
	if err != nil {
		return nil, err
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	s, err := km.CreateSigner(&kmsapi.CreateSignerRequest{SigningKeyPEM: pemKey})
	clear(pemKey)
	if err != nil {
		return nil, fmt.Errorf("ca: softkms: load key: %w", err)
	}
	if !isP256(s.Public()) {
		return nil, fmt.Errorf("ca: sealed key is a %s, not ECDSA P-256", describeKey(s.Public()))
	}
	return s, nil
}
