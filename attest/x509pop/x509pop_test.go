package x509pop

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/attest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	td  = spiffeid.RequireTrustDomainFromString("example.org")
	now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
)

// ca is a test certificate authority.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newRoot(t testing.TB, cn string) *ca {
	t.Helper()
	key := mustEC(t, elliptic.P256())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	return &ca{cert: mustCreate(t, tmpl, tmpl, key.Public(), key), key: key}
}

func (c *ca) intermediate(t testing.TB, cn string) *ca {
	t.Helper()
	key := mustEC(t, elliptic.P256())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	return &ca{cert: mustCreate(t, tmpl, c.cert, key.Public(), c.key), key: key}
}

type leafOpts struct {
	key       crypto.Signer
	notBefore time.Time
	notAfter  time.Time
	eku       []x509.ExtKeyUsage
	serial    int64
}

func (c *ca) leaf(t testing.TB, cn string, o leafOpts) *x509.Certificate {
	t.Helper()
	if o.notBefore.IsZero() {
		o.notBefore = now.Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = now.Add(time.Hour)
	}
	if o.eku == nil {
		o.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if o.serial == 0 {
		o.serial = 0x0abc0123
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(o.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: o.notBefore, NotAfter: o.notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: o.eku,
	}
	return mustCreate(t, tmpl, c.cert, o.key.Public(), c.key)
}

func mustEC(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

func mustRSA(t testing.TB) *rsa.PrivateKey {
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
	})
	return rsaKey
}

func mustCreate(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ders(certs ...*x509.Certificate) [][]byte {
	var out [][]byte
	for _, c := range certs {
		out = append(out, c.Raw)
	}
	return out
}

func fingerprint(c *x509.Certificate) string {
	s := sha1.Sum(c.Raw)
	return hex.EncodeToString(s[:])
}

func newAttestor(t testing.TB, roots ...*x509.Certificate) *Attestor {
	t.Helper()
	a, err := New(Config{TrustDomain: td, Roots: roots, Clock: clockwork.NewFakeClockAt(now)})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// respondWith wires a challenge to the agent's evidence, as the server's
// gRPC stream does.
func respondWith(ev attest.NodeEvidence) attest.Challenge {
	return func(_ context.Context, c []byte) ([]byte, error) { return ev.Respond(c) }
}

func TestAttest(t *testing.T) {
	root := newRoot(t, "provisioning root")
	inter := root.intermediate(t, "provisioning intermediate")
	keys := map[string]crypto.Signer{
		"ecdsa-p256": mustEC(t, elliptic.P256()),
		"ecdsa-p384": mustEC(t, elliptic.P384()),
		"rsa-2048":   mustRSA(t),
	}
	for name, key := range keys {
		t.Run("ok/"+name, func(t *testing.T) {
			leaf := inter.leaf(t, "node-1.example.org", leafOpts{key: key})
			ev, err := NewEvidence(ders(leaf, inter.cert), key)
			if err != nil {
				t.Fatal(err)
			}
			payload, err := ev.Payload()
			if err != nil {
				t.Fatal(err)
			}
			res, err := newAttestor(t, root.cert).Attest(t.Context(), payload, respondWith(ev))
			if err != nil {
				t.Fatalf("Attest = %v", err)
			}
			if want := "spiffe://example.org/meshca/agent/x509pop/" + fingerprint(leaf); res.AgentID.String() != want {
				t.Errorf("AgentID = %s, want %s", res.AgentID, want)
			}
			want := []string{
				"x509pop:subject:cn:node-1.example.org",
				"x509pop:ca:fingerprint:" + fingerprint(inter.cert),
				"x509pop:ca:fingerprint:" + fingerprint(root.cert),
				"x509pop:serialnumber:0abc0123",
			}
			if got := strs(res.Selectors); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("Selectors =\n%v\nwant\n%v", got, want)
			}
		})
	}

	t.Run("ok/rsa-pkcs1v15-response", func(t *testing.T) {
		key := mustRSA(t)
		leaf := root.leaf(t, "node-rsa", leafOpts{key: key})
		ev, _ := NewEvidence(ders(leaf), key)
		payload, _ := ev.Payload()
		pkcs1 := func(_ context.Context, nonce []byte) ([]byte, error) {
			return key.Sign(rand.Reader, digest(nonce), crypto.SHA256)
		}
		if _, err := newAttestor(t, root.cert).Attest(t.Context(), payload, pkcs1); err != nil {
			t.Fatalf("Attest with a PKCS #1 v1.5 response = %v", err)
		}
	})

	t.Run("ok/any-eku-and-no-cn", func(t *testing.T) {
		key := mustEC(t, elliptic.P256())
		leaf := root.leaf(t, "", leafOpts{key: key, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		ev, _ := NewEvidence(ders(leaf), key)
		payload, _ := ev.Payload()
		res, err := newAttestor(t, root.cert).Attest(t.Context(), payload, respondWith(ev))
		if err != nil {
			t.Fatalf("Attest = %v", err)
		}
		want := []string{"x509pop:ca:fingerprint:" + fingerprint(root.cert), "x509pop:serialnumber:0abc0123"}
		if got := strs(res.Selectors); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("Selectors = %v, want %v", got, want)
		}
	})
}

func strs(sels []attest.Selector) []string {
	var out []string
	for _, s := range sels {
		out = append(out, s.String())
	}
	return out
}

func TestAttestRefused(t *testing.T) {
	root := newRoot(t, "provisioning root")
	other := newRoot(t, "some other CA")
	key := mustEC(t, elliptic.P256())
	good := root.leaf(t, "node", leafOpts{key: key})
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	_ = edPub
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey := mustEC(t, elliptic.P256())

	ok := func(ev *Evidence) attest.Challenge { return respondWith(ev) }
	tests := []struct {
		name      string
		chain     [][]byte
		payload   string // instead of chain
		evKey     crypto.Signer
		challenge func(ev *Evidence) attest.Challenge
		clock     time.Time
		want      error
		inMsg     string
	}{
		{name: "fail/other-ca", chain: ders(other.leaf(t, "node", leafOpts{key: key})), want: attest.ErrNotAuthorized,
			inMsg: "not issued by a provisioning CA"},
		{name: "fail/self-signed", chain: ders(newRoot(t, "node").cert), want: attest.ErrNotAuthorized},
		{name: "fail/expired", chain: ders(root.leaf(t, "node", leafOpts{key: key, notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-time.Hour)})),
			want: attest.ErrNotAuthorized, inMsg: "not valid at"},
		{name: "fail/not-yet-valid", chain: ders(good), clock: now.Add(-2 * time.Hour), want: attest.ErrNotAuthorized, inMsg: "not valid at"},
		{name: "fail/expired-by-clock", chain: ders(good), clock: now.Add(2 * time.Hour), want: attest.ErrNotAuthorized, inMsg: "not valid at"},
		{name: "fail/server-auth-only", chain: ders(root.leaf(t, "node", leafOpts{key: key, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})),
			want: attest.ErrNotAuthorized, inMsg: "client authentication"},
		{name: "fail/ed25519-key", chain: ders(root.leaf(t, "node", leafOpts{key: edKey})), evKey: edKey,
			want: attest.ErrNotAuthorized, inMsg: "not supported"},
		{name: "fail/rsa-1024", chain: ders(root.leaf(t, "node", leafOpts{key: smallRSA})), evKey: smallRSA,
			want: attest.ErrNotAuthorized, inMsg: "too small"},
		{name: "fail/wrong-key-signs", chain: ders(good), evKey: wrongKey, want: attest.ErrNotAuthorized, inMsg: "not a signature of this nonce"},
		{name: "fail/signs-raw-nonce", chain: ders(good), challenge: func(*Evidence) attest.Challenge {
			return func(_ context.Context, n []byte) ([]byte, error) {
				d := sha256Sum(n)
				return key.Sign(rand.Reader, d, crypto.SHA256)
			}
		}, want: attest.ErrNotAuthorized},
		{name: "fail/garbage-response", chain: ders(good), challenge: func(*Evidence) attest.Challenge {
			return func(context.Context, []byte) ([]byte, error) { return []byte("not a signature"), nil }
		}, want: attest.ErrNotAuthorized},
		{name: "fail/empty-response", chain: ders(good), challenge: func(*Evidence) attest.Challenge {
			return func(context.Context, []byte) ([]byte, error) { return nil, nil }
		}, want: attest.ErrInvalidEvidence, inMsg: "0 bytes"},
		{name: "fail/huge-response", chain: ders(good), challenge: func(*Evidence) attest.Challenge {
			return func(context.Context, []byte) ([]byte, error) { return make([]byte, MaxSignatureSize+1), nil }
		}, want: attest.ErrInvalidEvidence},
		{name: "fail/agent-gone", chain: ders(good), challenge: func(*Evidence) attest.Challenge {
			return func(context.Context, []byte) ([]byte, error) { return nil, errors.New("stream closed") }
		}, want: attest.ErrUnavailable, inMsg: "stream closed"},
		{name: "fail/not-json", payload: "chain", want: attest.ErrInvalidEvidence},
		{name: "fail/empty-chain", payload: `{"chain":[]}`, want: attest.ErrInvalidEvidence, inMsg: "0 certificates"},
		{name: "fail/bad-base64", payload: `{"chain":["!!!"]}`, want: attest.ErrInvalidEvidence, inMsg: "invalid base64"},
		{name: "fail/not-a-certificate", payload: `{"chain":["AAEC"]}`, want: attest.ErrInvalidEvidence, inMsg: "certificate 0"},
		{name: "fail/long-chain", chain: ders(good, good, good, good, good, good, good, good, good), want: attest.ErrInvalidEvidence, inMsg: "9 certificates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := []byte(tt.payload)
			ev := &Evidence{chain: tt.chain, key: key}
			if tt.evKey != nil {
				ev.key = tt.evKey
			}
			if tt.payload == "" {
				var err error
				if payload, err = ev.Payload(); err != nil {
					t.Fatal(err)
				}
			}
			a := newAttestor(t, root.cert)
			if !tt.clock.IsZero() {
				a.clock = clockwork.NewFakeClockAt(tt.clock)
			}
			mk := tt.challenge
			if mk == nil {
				mk = ok
			}
			res, err := a.Attest(t.Context(), payload, mk(ev))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Attest = %v, %v; want %v", res, err, tt.want)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tt.inMsg) {
				t.Errorf("error %q does not contain %q", err, tt.inMsg)
			}
		})
	}
}

func sha256Sum(b []byte) []byte {
	h := crypto.SHA256.New()
	h.Write(b)
	return h.Sum(nil)
}

// TestReplayedResponse records a valid response and replays it on a later
// attestation, which challenges with a new nonce.
func TestReplayedResponse(t *testing.T) {
	root := newRoot(t, "provisioning root")
	key := mustEC(t, elliptic.P256())
	ev, err := NewEvidence(ders(root.leaf(t, "node", leafOpts{key: key})), key)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := ev.Payload()
	a := newAttestor(t, root.cert)
	var recorded, nonces [][]byte
	record := func(_ context.Context, nonce []byte) ([]byte, error) {
		nonces = append(nonces, nonce)
		sig, err := ev.Respond(nonce)
		recorded = append(recorded, sig)
		return sig, err
	}
	if _, err := a.Attest(t.Context(), payload, record); err != nil {
		t.Fatalf("first Attest = %v", err)
	}
	replay := func(_ context.Context, nonce []byte) ([]byte, error) {
		nonces = append(nonces, nonce)
		return recorded[0], nil
	}
	_, err = a.Attest(t.Context(), payload, replay)
	if !errors.Is(err, attest.ErrNotAuthorized) {
		t.Fatalf("Attest with a replayed response = %v, want ErrNotAuthorized", err)
	}
	if len(nonces) != 2 || len(nonces[0]) != NonceSize || bytes.Equal(nonces[0], nonces[1]) {
		t.Errorf("nonces %x: want two different %d-byte nonces", nonces, NonceSize)
	}
}

func TestNew(t *testing.T) {
	root := newRoot(t, "root")
	for name, cfg := range map[string]Config{
		"fail/no-trust-domain": {Roots: []*x509.Certificate{root.cert}},
		"fail/no-roots":        {TrustDomain: td},
		"fail/nil-root":        {TrustDomain: td, Roots: []*x509.Certificate{nil}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	a, err := New(Config{TrustDomain: td, Roots: []*x509.Certificate{root.cert}})
	if err != nil || a.Name() != Name {
		t.Fatalf("New = %v, %v", a, err)
	}
	if _, err := a.Attest(t.Context(), []byte(`{}`), nil); err == nil {
		t.Error("Attest without a challenge function succeeded")
	}
}

func TestEvidence(t *testing.T) {
	root := newRoot(t, "root")
	key := mustEC(t, elliptic.P256())
	leaf := root.leaf(t, "node", leafOpts{key: key})
	if _, err := NewEvidence(ders(leaf), mustEC(t, elliptic.P256())); err == nil {
		t.Error("NewEvidence with a key that does not match the leaf succeeded")
	}
	if _, err := NewEvidence(nil, key); err == nil {
		t.Error("NewEvidence without a chain succeeded")
	}
	if _, err := NewEvidence([][]byte{{1, 2}}, key); err == nil {
		t.Error("NewEvidence with a garbage leaf succeeded")
	}
	ev, err := NewEvidence(ders(leaf, root.cert), key)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Name() != Name {
		t.Errorf("Name() = %q", ev.Name())
	}
	if _, err := ev.Respond([]byte("short")); err == nil {
		t.Error("Respond signed a challenge that is not a nonce")
	}
	p, _ := ev.Payload()
	var decoded struct{ Chain [][]byte }
	if err := json.Unmarshal(p, &decoded); err != nil || len(decoded.Chain) != 2 || !bytes.Equal(decoded.Chain[0], leaf.Raw) {
		t.Errorf("Payload() = %s", p)
	}
	if SerialHex(&x509.Certificate{SerialNumber: big.NewInt(0)}) != "0" || SerialHex(&x509.Certificate{SerialNumber: big.NewInt(255)}) != "ff" {
		t.Error("SerialHex")
	}
}

// FuzzDecodePayload checks that payload decoding never panics and fails
// only with ErrInvalidEvidence.
func FuzzDecodePayload(f *testing.F) {
	root := newRoot(f, "root")
	key := mustEC(f, elliptic.P256())
	good, _ := json.Marshal(payload{Chain: ders(root.leaf(f, "node", leafOpts{key: key}), root.cert)})
	for _, s := range []string{string(good), `{"chain":[]}`, `{"chain":["AAEC"]}`, `{"chain":"x"}`, `{"chain":[null]}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		chain, err := decodePayload(b)
		if err != nil {
			if !errors.Is(err, attest.ErrInvalidEvidence) {
				t.Fatalf("decodePayload error %v is not ErrInvalidEvidence", err)
			}
			return
		}
		if len(chain) == 0 || len(chain) > MaxChainLen {
			t.Fatalf("decodePayload accepted a chain of %d", len(chain))
		}
		for _, c := range chain {
			if c == nil {
				t.Fatal("nil certificate")
			}
		}
	})
}
