// Package x509pop is the x509pop node attestation method: proof of
// possession of a private key whose certificate a provisioning CA issued.
//
// The agent sends its certificate chain, leaf first, as the payload
// {"chain": ["<base64 DER>", ...]}. The server verifies the chain to its
// provisioning roots (the leaf must allow client authentication: extended
// key usage clientAuth or any, or none at all), then challenges the agent
// with a fresh 32-byte random nonce. The agent signs
// SHA-256(nonce || "meshca-x509pop") with the leaf's key (ECDSA P-256 or
// P-384, ASN.1 signature; RSA of 2048 bits or more, PSS or PKCS #1 v1.5)
// and returns the raw signature. A fresh nonce per attestation means a
// recorded response is worthless.
//
// The agent's ID is spiffe://<td>/meshca/agent/x509pop/<hex SHA-1 of the
// leaf DER>. Selectors:
//
//	x509pop:subject:cn:<leaf subject common name>      (if it has one)
//	x509pop:ca:fingerprint:<hex SHA-1 of DER>          (each CA of the verified chains, intermediates then root)
//	x509pop:serialnumber:<hex of the leaf serial>      (lowercase, big-endian, no leading zeros)
package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/internal/jsonpayload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Name is the attestation method and the type of its selectors.
const Name = "x509pop"

// Limits.
const (
	// MaxChainLen bounds the number of certificates in the payload.
	MaxChainLen = 8
	// NonceSize is the size of the server's challenge.
	NonceSize = 32
	// MaxSignatureSize bounds the agent's response (an RSA-8192 signature
	// is 1024 bytes).
	MaxSignatureSize = 1024
	// MinRSABits is the smallest RSA key accepted.
	MinRSABits = 2048
)

// domain is appended to the nonce before hashing, so that a signature made
// for x509pop cannot be used for anything else.
const domain = "meshca-x509pop"

// Config configures the server side of x509pop.
type Config struct {
	// TrustDomain of the agents' IDs. Required.
	TrustDomain spiffeid.TrustDomain
	// Roots are the provisioning CA certificates that issue node
	// certificates. Required. They are trusted as roots: agents send the
	// intermediates, if any.
	Roots []*x509.Certificate
	// Clock gives the time at which certificates must be valid.
	// Default: the real clock.
	Clock clockwork.Clock
}

// Attestor is the server side of x509pop.
type Attestor struct {
	td    spiffeid.TrustDomain
	roots *x509.CertPool
	clock clockwork.Clock
}

var _ attest.NodeAttestor = (*Attestor)(nil)

// New returns an x509pop attestor.
func New(cfg Config) (*Attestor, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("x509pop: no trust domain configured")
	}
	if len(cfg.Roots) == 0 {
		return nil, errors.New("x509pop: no provisioning CA configured")
	}
	pool := x509.NewCertPool()
	for i, r := range cfg.Roots {
		if r == nil {
			return nil, fmt.Errorf("x509pop: provisioning CA %d is nil", i)
		}
		pool.AddCert(r)
	}
	clock := cfg.Clock
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	return &Attestor{td: cfg.TrustDomain, roots: pool, clock: clock}, nil
}

// Name returns "x509pop".
func (a *Attestor) Name() string { return Name }

// Attest verifies the chain in payload, then challenges the agent to prove
// it holds the leaf's key. challenge is required.
func (a *Attestor) Attest(ctx context.Context, payload []byte, challenge attest.Challenge) (*attest.NodeResult, error) {
	if challenge == nil {
		return nil, errors.New("x509pop: a challenge function is required")
	}
	chain, err := decodePayload(payload)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if err := checkKey(leaf.PublicKey); err != nil {
		return nil, attest.NewError(attest.KindNotAuthorized, Name, "leaf certificate key", err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	now := a.clock.Now()
	verified, err := leaf.Verify(x509.VerifyOptions{
		Roots: a.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, attest.NewError(attest.KindNotAuthorized, Name, verifyMessage(err, leaf, now), err)
	}

	var nonce [NonceSize]byte
	rand.Read(nonce[:]) // never fails (crypto/rand, Go 1.24+)
	sig, err := challenge(ctx, append([]byte(nil), nonce[:]...))
	if err != nil {
		return nil, attest.NewError(attest.KindUnavailable, Name, "challenge exchange with the agent failed", err)
	}
	if len(sig) == 0 || len(sig) > MaxSignatureSize {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name,
			fmt.Sprintf("challenge response is %d bytes, want a signature of 1 to %d", len(sig), MaxSignatureSize), nil)
	}
	if err := verifySignature(leaf.PublicKey, digest(nonce[:]), sig); err != nil {
		return nil, attest.NewError(attest.KindNotAuthorized, Name,
			"the challenge response is not a signature of this nonce by the leaf certificate's key", err)
	}

	fp := sha1.Sum(leaf.Raw)
	id, err := attest.AgentID(a.td, Name, hex.EncodeToString(fp[:]))
	if err != nil {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "agent ID", err)
	}
	sels, err := selectors(leaf, verified)
	if err != nil {
		return nil, err
	}
	return &attest.NodeResult{AgentID: id, Selectors: sels}, nil
}

func selectors(leaf *x509.Certificate, chains [][]*x509.Certificate) ([]attest.Selector, error) {
	var out []attest.Selector
	if cn := leaf.Subject.CommonName; cn != "" {
		s := attest.Selector{Type: Name, Value: "subject:cn:" + cn}
		if err := s.Validate(); err != nil {
			return nil, attest.NewError(attest.KindInvalidEvidence, Name, "leaf subject common name cannot be a selector", err)
		}
		out = append(out, s)
	}
	seen := map[string]bool{}
	for _, chain := range chains {
		for _, c := range chain[1:] {
			sum := sha1.Sum(c.Raw)
			fp := hex.EncodeToString(sum[:])
			if !seen[fp] {
				seen[fp] = true
				out = append(out, attest.Selector{Type: Name, Value: "ca:fingerprint:" + fp})
			}
		}
	}
	out = append(out, attest.Selector{Type: Name, Value: "serialnumber:" + SerialHex(leaf)})
	return out, nil
}

// SerialHex returns the lowercase hex of a certificate's serial number, as
// in the x509pop:serialnumber selector ("0" for a zero serial).
func SerialHex(c *x509.Certificate) string {
	if c.SerialNumber == nil || c.SerialNumber.Sign() == 0 {
		return "0"
	}
	return hex.EncodeToString(c.SerialNumber.Bytes())
}

// verifyMessage says in words why a chain was refused.
func verifyMessage(err error, leaf *x509.Certificate, now time.Time) string {
	var inv x509.CertificateInvalidError
	var unk x509.UnknownAuthorityError
	switch {
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
			return fmt.Sprintf("certificate is not valid at %s (valid %s to %s)", now.UTC().Format(time.RFC3339),
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		return "a CA certificate of the chain is expired or not yet valid"
	case errors.As(err, &inv) && inv.Reason == x509.IncompatibleUsage:
		return "certificate does not allow client authentication"
	case errors.As(err, &unk):
		return "certificate is not issued by a provisioning CA"
	}
	return "certificate chain does not verify to a provisioning CA"
}

// checkKey accepts ECDSA P-256/P-384 and RSA of MinRSABits or more.
func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s is not supported (want P-256 or P-384)", k.Curve.Params().Name)
		}
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("RSA key of %d bits is too small (want %d or more)", k.N.BitLen(), MinRSABits)
		}
		return nil
	}
	return fmt.Errorf("%T keys are not supported (want ECDSA P-256/P-384 or RSA)", pub)
}

// digest is SHA-256(nonce || "meshca-x509pop"), the value the agent signs.
func digest(nonce []byte) []byte {
	h := sha256.New()
	h.Write(nonce)
	h.Write([]byte(domain))
	return h.Sum(nil)
}

func verifySignature(pub any, digest, sig []byte) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return errors.New("ECDSA signature verification failed")
		}
		return nil
	case *rsa.PublicKey:
		if rsa.VerifyPSS(k, crypto.SHA256, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil {
			return nil
		}
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) == nil {
			return nil
		}
		return errors.New("RSA signature verification failed (PSS and PKCS #1 v1.5)")
	}
	return fmt.Errorf("%T keys are not supported", pub)
}

// payload is the JSON evidence.
type payload struct {
	Chain [][]byte `json:"chain"` // DER, base64 (standard encoding) in JSON
}

func decodePayload(b []byte) ([]*x509.Certificate, error) {
	var p payload
	if err := jsonpayload.Decode(b, attest.MaxPayloadSize, &p); err != nil {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "payload", err)
	}
	if len(p.Chain) == 0 || len(p.Chain) > MaxChainLen {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name,
			fmt.Sprintf("chain has %d certificates, want 1 to %d (leaf first)", len(p.Chain), MaxChainLen), nil)
	}
	certs := make([]*x509.Certificate, len(p.Chain))
	for i, der := range p.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, attest.NewError(attest.KindInvalidEvidence, Name, fmt.Sprintf("chain certificate %d", i), err)
		}
		certs[i] = c
	}
	return certs, nil
}

// Evidence is the agent side of x509pop.
type Evidence struct {
	chain [][]byte
	key   crypto.Signer
}

var _ attest.NodeEvidence = (*Evidence)(nil)

// NewEvidence returns evidence presenting chain (DER, leaf first) and
// proving possession of key, the leaf's private key. It checks that key
// matches the leaf.
func NewEvidence(chain [][]byte, key crypto.Signer) (*Evidence, error) {
	if len(chain) == 0 || len(chain) > MaxChainLen {
		return nil, fmt.Errorf("x509pop: chain has %d certificates, want 1 to %d", len(chain), MaxChainLen)
	}
	if key == nil {
		return nil, errors.New("x509pop: no private key")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("x509pop: leaf certificate: %w", err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if eq, ok := leaf.PublicKey.(equaler); !ok || !eq.Equal(key.Public()) {
		return nil, errors.New("x509pop: the private key does not match the leaf certificate")
	}
	if err := checkKey(leaf.PublicKey); err != nil {
		return nil, fmt.Errorf("x509pop: leaf certificate key: %w", err)
	}
	return &Evidence{chain: chain, key: key}, nil
}

// Name returns "x509pop".
func (e *Evidence) Name() string { return Name }

// Payload returns {"chain": [...]}.
func (e *Evidence) Payload() ([]byte, error) {
	return json.Marshal(payload{Chain: e.chain})
}

// Respond signs SHA-256(nonce || "meshca-x509pop") with the leaf's key
// (RSA keys sign with PSS). It only signs nonces of NonceSize bytes.
func (e *Evidence) Respond(nonce []byte) ([]byte, error) {
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("x509pop: challenge is %d bytes, want a %d-byte nonce", len(nonce), NonceSize)
	}
	var opts crypto.SignerOpts = crypto.SHA256
	if _, ok := e.key.Public().(*rsa.PublicKey); ok {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	}
	sig, err := e.key.Sign(rand.Reader, digest(nonce), opts)
	if err != nil {
		return nil, fmt.Errorf("x509pop: sign the challenge: %w", err)
	}
	return sig, nil
}
