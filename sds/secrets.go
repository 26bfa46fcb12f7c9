package sds

import (
	"bytes"
	"crypto"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/emmansun/gmsm/smx509"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/anypb"
)

// SecretTypeURL is the type URL of SDS resources.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// SPIFFECertValidatorName is the name of Envoy's SPIFFE certificate
// validator extension.
const SPIFFECertValidatorName = "envoy.tls.cert_validator.spiffe"

// TLSCertificateSecret builds a tls_certificate secret from a DER chain,
// leaf first then its intermediates (no root), and the leaf's private key
// as PKCS#8 DER: Envoy gets both as inline PEM, the chain as one
// "CERTIFICATE" block per certificate in the same order, the key as a
// "PRIVATE KEY" block. ECDSA and SM2 chains are accepted. It checks what
// makes a real Envoy refuse the secret: an unparsable certificate, a chain
// out of order (each certificate must be issued by the next), a key that
// is not PKCS#8 or does not match the leaf.
func TLSCertificateSecret(name string, chain [][]byte, keyPKCS8 []byte) (*tlsv3.Secret, error) {
	if len(chain) == 0 {
		return nil, errors.New("sds: tls certificate: empty chain")
	}
	certs := make([]*smx509.Certificate, len(chain))
	for i, der := range chain {
		c, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("sds: tls certificate: chain[%d]: %w", i, err)
		}
		certs[i] = c
	}
	for i := 0; i+1 < len(certs); i++ {
		if !bytes.Equal(certs[i].RawIssuer, certs[i+1].RawSubject) {
			return nil, fmt.Errorf("sds: tls certificate: chain[%d] (%s) is not issued by chain[%d] (%s): want leaf first, then each issuer", i, certs[i].Subject, i+1, certs[i+1].Subject)
		}
	}
	key, err := smx509.ParsePKCS8PrivateKey(keyPKCS8)
	if err != nil {
		return nil, fmt.Errorf("sds: tls certificate: private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("sds: tls certificate: private key %T is not a signer", key)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(certs[0].PublicKey) {
		return nil, errors.New("sds: tls certificate: private key does not match the leaf certificate")
	}
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(pemBlocks("CERTIFICATE", chain)),
			PrivateKey:       inline(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyPKCS8})),
		}},
	}, nil
}

// ValidationContextParams are the inputs of [ValidationContextSecret].
type ValidationContextParams struct {
	// Roots are the DER trust anchors, served as PEM trusted_ca. Only
	// roots: Envoy sets X509_V_FLAG_PARTIAL_CHAIN, so an intermediate in
	// trusted_ca would be an anchor of its own.
	Roots [][]byte
	// Intermediates are the DER certificates of every other CA that can
	// appear in a chain under Roots (each server's intermediate). They are
	// not served; they let the builder check that CRLs are complete.
	Intermediates [][]byte
	// CRLs are DER CRLs, served as PEM crl. When any is given, there must
	// be one issued by each CA of Roots and Intermediates: Envoy (BoringSSL
	// with X509_V_FLAG_CRL_CHECK_ALL) rejects every certificate of a chain
	// in which one CA has no CRL once any CA has one.
	CRLs [][]byte
	// MatchSANs, when set, restricts the peers to those with a matching
	// SAN (match_typed_subject_alt_names), e.g. [MatchSPIFFEIDs].
	MatchSANs []*tlsv3.SubjectAltNameMatcher
}

// ValidationContextSecret builds a validation_context secret: trusted_ca
// with the roots, crl with the CRL of every CA (see
// [ValidationContextParams.CRLs]), optional SAN matchers. Every CRL must
// be signed by the CA whose subject it names; ECDSA and SM2 are accepted.
func ValidationContextSecret(name string, p ValidationContextParams) (*tlsv3.Secret, error) {
	if len(p.Roots) == 0 {
		return nil, errors.New("sds: validation context: no roots")
	}
	var cas []*smx509.Certificate
	for i, der := range p.Roots {
		c, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("sds: validation context: roots[%d]: %w", i, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("sds: validation context: roots[%d] (%s) is not a CA", i, c.Subject)
		}
		cas = append(cas, c)
	}
	for i, der := range p.Intermediates {
		c, err := smx509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("sds: validation context: intermediates[%d]: %w", i, err)
		}
		cas = append(cas, c)
	}
	if err := checkCRLs(cas, p.CRLs); err != nil {
		return nil, err
	}
	vc := &tlsv3.CertificateValidationContext{
		TrustedCa:                 inline(pemBlocks("CERTIFICATE", p.Roots)),
		MatchTypedSubjectAltNames: p.MatchSANs,
	}
	if len(p.CRLs) > 0 {
		vc.Crl = inline(pemBlocks("X509 CRL", p.CRLs))
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}, nil
}

// checkCRLs checks that crls is empty or holds, for each CA, one CRL it
// signed, and nothing else.
func checkCRLs(cas []*smx509.Certificate, crls [][]byte) error {
	if len(crls) == 0 {
		return nil
	}
	covered := make([]bool, len(cas))
	for i, der := range crls {
		rl, err := smx509.ParseRevocationList(der)
		if err != nil {
			return fmt.Errorf("sds: validation context: crls[%d]: %w", i, err)
		}
		found := false
		for j, ca := range cas {
			if !bytes.Equal(rl.RawIssuer, ca.RawSubject) {
				continue
			}
			if len(rl.AuthorityKeyId) > 0 && len(ca.SubjectKeyId) > 0 && !bytes.Equal(rl.AuthorityKeyId, ca.SubjectKeyId) {
				continue
			}
			if err := rl.CheckSignatureFrom(ca); err != nil {
				return fmt.Errorf("sds: validation context: crls[%d] (issuer %s): signature: %w", i, rl.Issuer, err)
			}
			covered[j], found = true, true
			break
		}
		if !found {
			return fmt.Errorf("sds: validation context: crls[%d] is issued by %s, which is none of the CAs given", i, rl.Issuer)
		}
	}
	var missing []string
	for j, ok := range covered {
		if !ok {
			missing = append(missing, cas[j].Subject.String())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("sds: validation context: no CRL for CA %s: with a CRL for some CAs of a chain but not all, Envoy rejects every certificate of it", strings.Join(missing, ", "))
	}
	return nil
}

// TrustDomainBundle is one trust domain's roots, for
// [SPIFFEValidationContextSecret].
type TrustDomainBundle struct {
	TrustDomain spiffeid.TrustDomain
	// Roots are DER X.509 authorities.
	Roots [][]byte
}

// SPIFFEValidationContextSecret builds the all-bundles validation context
// served with Envoy's SPIFFE certificate validator
// (envoy.tls.cert_validator.spiffe): one SPIFFECertValidatorConfig trust
// domain entry per bundle, named without "spiffe://", so that a peer is
// validated against the bundle of the trust domain in its own SPIFFE ID.
//
// It carries no CRLs: the SPIFFE validator takes only
// allow_expired_certificate and match_typed_subject_alt_names from the
// validation context, and federated bundles come without CRLs for their
// CAs. Proxies that must enforce revocation use the per-trust-domain
// resources (ROOTCA, spiffe://<td>) instead.
//
// With disableSPIFFEValidator (agent config, or Envoy node metadata, see
// [NodeOptions]) it is instead a plain validation context whose
// trusted_ca holds the roots of every bundle.
func SPIFFEValidationContextSecret(name string, bundles []TrustDomainBundle, matchSANs []*tlsv3.SubjectAltNameMatcher, disableSPIFFEValidator bool) (*tlsv3.Secret, error) {
	if len(bundles) == 0 {
		return nil, errors.New("sds: spiffe validation context: no bundles")
	}
	for _, b := range bundles {
		if b.TrustDomain.IsZero() {
			return nil, errors.New("sds: spiffe validation context: bundle without trust domain")
		}
		if len(b.Roots) == 0 {
			return nil, fmt.Errorf("sds: spiffe validation context: trust domain %s has no roots", b.TrustDomain)
		}
		for i, der := range b.Roots {
			if _, err := smx509.ParseCertificate(der); err != nil {
				return nil, fmt.Errorf("sds: spiffe validation context: %s roots[%d]: %w", b.TrustDomain, i, err)
			}
		}
	}
	vc := &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: matchSANs}
	if disableSPIFFEValidator {
		var all [][]byte
		for _, b := range bundles {
			all = append(all, b.Roots...)
		}
		vc.TrustedCa = inline(pemBlocks("CERTIFICATE", all))
	} else {
		cfg := &tlsv3.SPIFFECertValidatorConfig{}
		for _, b := range bundles {
			cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
				Name:        b.TrustDomain.Name(),
				TrustBundle: inline(pemBlocks("CERTIFICATE", b.Roots)),
			})
		}
		typed, err := anypb.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("sds: spiffe validation context: %w", err)
		}
		vc.CustomValidatorConfig = &corev3.TypedExtensionConfig{Name: SPIFFECertValidatorName, TypedConfig: typed}
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}, nil
}

// MatchSPIFFEIDs returns SAN matchers accepting exactly the given SPIFFE
// IDs (URI SANs).
func MatchSPIFFEIDs(ids ...spiffeid.ID) []*tlsv3.SubjectAltNameMatcher {
	out := make([]*tlsv3.SubjectAltNameMatcher, 0, len(ids))
	for _, id := range ids {
		out = append(out, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id.String()}},
		})
	}
	return out
}

// MatchTrustDomains returns SAN matchers accepting any SPIFFE ID of the
// given trust domains (URI SAN prefix "spiffe://<td>/").
func MatchTrustDomains(tds ...spiffeid.TrustDomain) []*tlsv3.SubjectAltNameMatcher {
	out := make([]*tlsv3.SubjectAltNameMatcher, 0, len(tds))
	for _, td := range tds {
		out = append(out, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: td.IDString() + "/"}},
		})
	}
	return out
}

func pemBlocks(typ string, ders [][]byte) []byte {
	var b bytes.Buffer
	for _, der := range ders {
		_ = pem.Encode(&b, &pem.Block{Type: typ, Bytes: der})
	}
	return b.Bytes()
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}
