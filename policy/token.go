package policy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// issue 12 tokens: bearer tokens of the OPA bundle service, for clients
// without an X509-SVID (a stock OPA configured with credentials.bearer).
//
// A token reads "mbt.<id>.<secret>": id is 16 hex digits, public (it is
// how operators list and revoke the token, and what the audit trail
// names); secret is 32 random bytes, base64url without padding. Servers
// keep the SHA-256 of the secret only, so the replicated state, its
// snapshots and backups hold nothing a client could present; a secret of
// 256 random bits needs no slow hash.

// BundleTokenPrefix starts every bundle token.
const BundleTokenPrefix = "mbt."

const (
	tokenIDBytes     = 8
	tokenSecretBytes = 32
)

// ErrMalformedToken is a bearer token that is not a bundle token.
var ErrMalformedToken = errors.New("not a meshca bundle token (mbt.<16 hex digits>.<43 base64url characters>)")

// NewBundleToken draws a new token from rand: its ID, the token string to
// hand to the client, and the SHA-256 of its secret, to store.
func NewBundleToken(rand io.Reader) (id, token string, secretSHA256 []byte, err error) {
	b := make([]byte, tokenIDBytes+tokenSecretBytes)
	if _, err := io.ReadFull(rand, b); err != nil {
		return "", "", nil, fmt.Errorf("policy: draw a bundle token: %w", err)
	}
	id = hex.EncodeToString(b[:tokenIDBytes])
	secret := b[tokenIDBytes:]
	sum := sha256.Sum256(secret)
	return id, BundleTokenPrefix + id + "." + base64.RawURLEncoding.EncodeToString(secret), sum[:], nil
}

// ParseBundleToken splits a bundle token into its ID and the SHA-256 of
// its secret, refusing anything not shaped as NewBundleToken makes them.
func ParseBundleToken(token string) (id string, secretSHA256 []byte, err error) {
	rest, ok := strings.CutPrefix(token, BundleTokenPrefix)
	if !ok {
		return "", nil, ErrMalformedToken
	}
	id, enc, ok := strings.Cut(rest, ".")
	if !ok || len(id) != 2*tokenIDBytes || len(enc) != base64.RawURLEncoding.EncodedLen(tokenSecretBytes) {
		return "", nil, ErrMalformedToken
	}
	if _, err := hex.DecodeString(id); err != nil || strings.ToLower(id) != id {
		return "", nil, ErrMalformedToken
	}
	secret, err := base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil || len(secret) != tokenSecretBytes {
		return "", nil, ErrMalformedToken
	}
	sum := sha256.Sum256(secret)
	return id, sum[:], nil
}

// TokenHashEqual compares two secret hashes in constant time.
func TokenHashEqual(a, b []byte) bool {
	return len(a) == sha256.Size && subtle.ConstantTimeCompare(a, b) == 1
}

// BearerToken returns the credentials of an Authorization header of the
// Bearer scheme (RFC 6750; the scheme is case-insensitive); ok is false
// for any other header.
func BearerToken(authorization string) (token string, ok bool) {
	scheme, cred, found := strings.Cut(strings.TrimSpace(authorization), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	cred = strings.TrimSpace(cred)
	return cred, cred != "" && !strings.ContainsAny(cred, " \t")
}

// AuthError refuses a bundle service request: Status is 401 (who asks is
// not known: no credentials, or wrong, expired or revoked ones) or 403
// (known, but not allowed this bundle).
type AuthError struct {
	Status int
	Reason string
}

func (e *AuthError) Error() string { return e.Reason }

// Unauthenticated is a 401 refusal.
func Unauthenticated(format string, args ...any) *AuthError {
	return &AuthError{Status: http.StatusUnauthorized, Reason: fmt.Sprintf(format, args...)}
}

// Forbidden is a 403 refusal.
func Forbidden(format string, args ...any) *AuthError {
	return &AuthError{Status: http.StatusForbidden, Reason: fmt.Sprintf(format, args...)}
}
