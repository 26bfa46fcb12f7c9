package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// plainCSR is a PKCS#10 request (RFC 2986) of the form meshca's agents
// send: version 0, an empty subject, no attributes (so no requested
// extensions and no SANs). Such a request carries nothing but a key and
// its proof of possession, so it can be checked without crypto/x509's
// reflective ASN.1 parser, which costs more than a tenth of the signing
// work at the node API's rates. Every other request, and every request
// that fails here in any way, takes the full parser of its profile, which
// also words the refusal; parsePlainCSR only ever accepts requests that
// parser accepts with the same key (FuzzPlainCSR checks it).
type plainCSR struct {
	info   []byte // the DER CertificationRequestInfo: what the signature covers
	spki   []byte // the DER SubjectPublicKeyInfo
	sigAlg []byte // the DER AlgorithmIdentifier of the signature
	sig    []byte // the signature value
}

// parsePlainCSR reads der as a plain request, strictly DER; ok is false for
// anything else.
func parsePlainCSR(der []byte) (c plainCSR, ok bool) {
	in := cryptobyte.String(der)
	var req, infoElem, info, subject, spki, sigAlg, attrs cryptobyte.String
	var version int64
	var sig asn1.BitString
	if !in.ReadASN1(&req, cbasn1.SEQUENCE) || !in.Empty() ||
		!req.ReadASN1Element(&infoElem, cbasn1.SEQUENCE) {
		return c, false
	}
	if elem := infoElem; !elem.ReadASN1(&info, cbasn1.SEQUENCE) ||
		!info.ReadASN1Integer(&version) || version != 0 ||
		!info.ReadASN1(&subject, cbasn1.SEQUENCE) || !subject.Empty() ||
		!info.ReadASN1Element(&spki, cbasn1.SEQUENCE) ||
		!info.ReadASN1(&attrs, cbasn1.Tag(0).Constructed().ContextSpecific()) || !attrs.Empty() ||
		!info.Empty() {
		return c, false
	}
	if !req.ReadASN1Element(&sigAlg, cbasn1.SEQUENCE) || !req.ReadASN1BitString(&sig) || sig.BitLength%8 != 0 || !req.Empty() {
		return c, false
	}
	return plainCSR{info: infoElem, spki: spki, sigAlg: sigAlg, sig: sig.Bytes}, true
}

// p256KeyAlgorithm is the DER AlgorithmIdentifier of an ECDSA P-256 key
// (id-ecPublicKey with the prime256v1 named curve).
var p256KeyAlgorithm = []byte{0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// plainP256Key reads a P-256 SubjectPublicKeyInfo (an uncompressed point on
// the curve, as crypto/x509 requires) without reflection; ok is false for
// any other key, which the full parser then names.
func plainP256Key(spki []byte) (*ecdsa.PublicKey, bool) {
	in := cryptobyte.String(spki)
	var info, alg cryptobyte.String
	var point asn1.BitString
	if !in.ReadASN1(&info, cbasn1.SEQUENCE) || !in.Empty() ||
		!info.ReadASN1Element(&alg, cbasn1.SEQUENCE) || !bytes.Equal(alg, p256KeyAlgorithm) ||
		!info.ReadASN1BitString(&point) || point.BitLength%8 != 0 || !info.Empty() {
		return nil, false
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point.Bytes)
	return pub, err == nil
}
