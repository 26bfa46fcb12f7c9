package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var jwtTD = spiffeid.RequireTrustDomainFromString("example.org")

func signJWT(t testing.TB, key *ecdsa.PrivateKey, kid string, claims jwt.Claims) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// JWT-SVIDs are validated at the agent's clock, as go-spiffe validates
// them at the wall clock's.
func TestValidateJWTSVID(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b := jwtbundle.New(jwtTD)
	if err := b.AddJWTAuthority("k1", key.Public()); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2031, 5, 1, 12, 0, 0, 0, time.UTC)
	good := jwt.Claims{Subject: "spiffe://example.org/w", Audience: jwt.Audience{"db"}, Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute)), IssuedAt: jwt.NewNumericDate(now)}
	tok := signJWT(t, key, "k1", good)
	if id, _, err := validateJWTSVID(tok, b, "db", now); err != nil || id.String() != good.Subject {
		t.Fatalf("valid token: %v, %v", id, err)
	}
	expired := good
	expired.Expiry = jwt.NewNumericDate(now.Add(-time.Minute))
	foreign := good
	foreign.Subject = "spiffe://other.org/w"
	noExp := good
	noExp.Expiry = nil
	for name, c := range map[string]struct {
		tok, aud string
		want     string
	}{
		"expired":            {signJWT(t, key, "k1", expired), "db", "expired"},
		"wrong audience":     {tok, "web", "audience"},
		"unknown key":        {signJWT(t, key, "k2", good), "db", "no JWT authority"},
		"forged":             {signJWT(t, other, "k1", good), "db", "claims"},
		"other trust domain": {signJWT(t, key, "k1", foreign), "db", "trust domain"},
		"no exp":             {signJWT(t, key, "k1", noExp), "db", "exp"},
		"garbage":            {"not.a.jwt", "db", "parse"},
		"huge":               {strings.Repeat("a", maxJWTSize+1), "db", "limit"},
	} {
		if _, _, err := validateJWTSVID(c.tok, b, c.aud, now); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, c.want)
		}
	}
	// Issued in the future by the wall clock, fine by the agent's.
	if _, _, err := validateJWTSVID(tok, b, "db", now.Add(time.Minute)); err != nil {
		t.Errorf("at the agent's clock: %v", err)
	}
}

// FuzzValidateJWTSVID checks that validation never panics and never
// accepts a token the bundle's key did not sign.
func FuzzValidateJWTSVID(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b := jwtbundle.New(jwtTD)
	b.AddJWTAuthority("k1", key.Public())
	now := time.Date(2031, 5, 1, 12, 0, 0, 0, time.UTC)
	f.Add("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJhdWQiOlsiZGIiXSwiZXhwIjoxOTUxOTEwNTAwLCJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93In0.sig", "db")
	f.Add("a.b.c", "db")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, tok, aud string) {
		id, _, err := validateJWTSVID(tok, b, aud, now)
		if err == nil {
			t.Fatalf("accepted %q (for %s) without a signature by the bundle's key", tok, id)
		}
	})
}

// FuzzTokenKid checks that reading a JWT-SVID's key ID never panics and
// finds the kid of a well-formed header. Seeds are in
// testdata/fuzz/FuzzTokenKid.
func FuzzTokenKid(f *testing.F) {
	f.Fuzz(func(t *testing.T, tok string) {
		kid := tokenKid(tok)
		if kid != "" && !strings.Contains(tok, ".") {
			t.Fatalf("kid %q from %q, which is no JWS", kid, tok)
		}
	})
}

func TestTokenKid(t *testing.T) {
	for tok, want := range map[string]string{
		"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.sig": "k1",
		"a.b.c": "", "": "", "eyJraWQiOjF9.x.y": "",
	} {
		if got := tokenKid(tok); got != want {
			t.Errorf("tokenKid(%q) = %q, want %q", tok, got, want)
		}
	}
}
