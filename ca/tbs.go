package ca

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// This file encodes a leaf TBSCertificate directly, in exactly the form
// x509.CreateCertificate produces for the same template (TestLeafTBSMatchesCreateCertificate
// guards this), so that issuance signs once and does not verify its own
// signature again.

var (
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidSubjectKeyID     = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidAuthorityKeyID   = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidServerAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

var (
	// The empty subject: X509-SVIDs carry their identity in the URI SAN,
	// which is then critical (RFC 5280 4.2.1.6).
	emptyName = []byte{0x30, 0x00}
	// basicConstraints{cA: FALSE} is the empty SEQUENCE.
	basicConstraintsLeaf = []byte{0x30, 0x00}
	ekuServerClient      = mustMarshal([]asn1.ObjectIdentifier{oidServerAuth, oidClientAuth})
)

// leafTemplate holds the per-authority parts of every leaf TBSCertificate,
// encoded once when the authority is loaded.
type leafTemplate struct {
	sigAlg     []byte // AlgorithmIdentifier
	issuer     []byte // the issuer's raw subject Name
	profileKey x509.KeyUsage
	// The extensions every leaf of the authority has, each a whole DER
	// Extension: key usage, extended key usage, basic constraints (in that
	// order, before the subject key ID), and the authority key ID.
	fixedExts []byte
	authKeyID []byte
}

// skiLen is the length of a leaf's subject key ID (subjectKeyID).
const skiLen = 20

// skiHeader is a subject key ID Extension up to the 20-byte ID itself.
var skiHeader = func() []byte {
	ext := extensionDER(oidSubjectKeyID, false, func(b *cryptobyte.Builder) { b.AddASN1OctetString(make([]byte, skiLen)) })
	return ext[:len(ext)-skiLen]
}()

func newLeafTemplate(p Profile, issuer *Certificate) *leafTemplate {
	keyUsage := marshalKeyUsage(p.leafKeyUsage())
	aki := mustMarshal(struct {
		ID []byte `asn1:"optional,tag:0"`
	}{issuer.SubjectKeyID})
	var fixed []byte
	fixed = append(fixed, extensionDER(oidKeyUsage, true, func(b *cryptobyte.Builder) { b.AddBytes(keyUsage) })...)
	fixed = append(fixed, extensionDER(oidExtKeyUsage, false, func(b *cryptobyte.Builder) { b.AddBytes(ekuServerClient) })...)
	fixed = append(fixed, extensionDER(oidBasicConstraints, true, func(b *cryptobyte.Builder) { b.AddBytes(basicConstraintsLeaf) })...)
	return &leafTemplate{
		sigAlg:     p.sigAlgDER(),
		issuer:     issuer.RawSubject,
		profileKey: p.leafKeyUsage(),
		fixedExts:  fixed,
		authKeyID:  extensionDER(oidAuthorityKeyID, false, func(b *cryptobyte.Builder) { b.AddBytes(aki) }),
	}
}

// extensionDER encodes one Extension, for the parts of a leaf that are
// the same in every leaf of an authority.
func extensionDER(oid asn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) []byte {
	b := cryptobyte.NewBuilder(nil)
	addExtension(b, oid, critical, value)
	return b.BytesOrPanic()
}

// leafFields are the per-certificate parts of a leaf.
type leafFields struct {
	serial    *big.Int
	notBefore time.Time
	notAfter  time.Time
	spki      []byte // DER SubjectPublicKeyInfo, copied from the CSR
	subjKeyID []byte
	uri       string
	dnsNames  []string
}

func (t *leafTemplate) encode(f *leafFields) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 640))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1Int64(2) // v3
		})
		b.AddASN1BigInt(f.serial)
		b.AddBytes(t.sigAlg)
		b.AddBytes(t.issuer)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, f.notBefore)
			addTime(b, f.notAfter)
		})
		b.AddBytes(emptyName)
		b.AddBytes(f.spki)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				// Same order as x509.CreateCertificate.
				b.AddBytes(t.fixedExts)
				if len(f.subjKeyID) != skiLen {
					b.SetError(errors.New("ca: subject key ID of the wrong length"))
					return
				}
				b.AddBytes(skiHeader)
				b.AddBytes(f.subjKeyID)
				b.AddBytes(t.authKeyID)
				addExtension(b, oidSubjectAltName, true, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						for _, d := range f.dnsNames {
							b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(d)) })
						}
						b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(f.uri)) })
					})
				})
			})
		})
	})
	return b.Bytes()
}

// assembleCertificate wraps a TBSCertificate and its signature.
func assembleCertificate(tbs, sigAlg, sig []byte) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, len(tbs)+len(sig)+32))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(sigAlg)
		b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
			b.AddUint8(0) // no unused bits
			b.AddBytes(sig)
		})
	})
	return b.Bytes()
}

func addExtension(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, critical bool, value func(*cryptobyte.Builder)) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical {
			b.AddASN1Boolean(true)
		}
		b.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

// addTime encodes t as RFC 5280 requires: UTCTime through 2049,
// GeneralizedTime from 2050.
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC()
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1UTCTime(t)
		return
	}
	b.AddASN1GeneralizedTime(t)
}

// subjectKeyID is RFC 7093 method 1: the leftmost 160 bits of the SHA-256 of
// the subjectPublicKey BIT STRING's value, as crypto/x509 computes it for CAs.
func subjectKeyID(spki []byte) ([]byte, error) {
	s := cryptobyte.String(spki)
	var inner, alg cryptobyte.String
	var bits asn1.BitString
	if !s.ReadASN1(&inner, cbasn1.SEQUENCE) || !s.Empty() ||
		!inner.ReadASN1(&alg, cbasn1.SEQUENCE) || !inner.ReadASN1BitString(&bits) || !inner.Empty() {
		return nil, errors.New("malformed SubjectPublicKeyInfo")
	}
	h := sha256.Sum256(bits.Bytes)
	return h[:20], nil
}

// marshalKeyUsage encodes a KeyUsage value as crypto/x509 does.
func marshalKeyUsage(ku x509.KeyUsage) []byte {
	a := [2]byte{reverseBits(byte(ku)), reverseBits(byte(ku >> 8))}
	l := 1
	if a[1] != 0 {
		l = 2
	}
	bs := a[:l]
	return mustMarshal(asn1.BitString{Bytes: bs, BitLength: bitLength(bs)})
}

func reverseBits(in byte) byte {
	var out byte
	for i := 0; i < 8; i++ {
		out = out<<1 | in&1
		in >>= 1
	}
	return out
}

func bitLength(b []byte) int {
	n := len(b) * 8
	for i := len(b) - 1; i >= 0; i-- {
		for bit := 0; bit < 8; bit++ {
			if b[i]&(1<<bit) != 0 {
				return n
			}
			n--
		}
	}
	return n
}

func mustMarshal(v any) []byte {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic("ca: static ASN.1 value does not encode: " + err.Error())
	}
	return b
}
