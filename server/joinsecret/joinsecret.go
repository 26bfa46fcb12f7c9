// Package joinsecret holds the pre-shared server-join secrets with which
// servers started together (a StatefulSet, three systemd units) form a
// cluster with no operator in between, and the proofs that show a peer
// holds one without ever sending it.
//
// A secret file holds one secret per line: at least MinSize random bytes
// in standard base64, e.g. (umask 077; head -c 32 /dev/urandom | base64).
// Blank lines and lines starting with '#' are ignored. A joining server
// presents the first secret; a member admits a server that proves any of
// them, so a secret is rotated by adding the new one on every server,
// moving it first, then deleting the old one, and revoked by deleting it.
// Members read the file at every join, so an edit takes effect at once.
//
// The proofs are HMAC-SHA256 values keyed by the secret over keying
// material exported from the TLS 1.3 connection they travel on (RFC 8446
// section 7.5): both ends of one connection compute the same value, a
// man in the middle has two connections with different values, so a proof
// is worth nothing anywhere else, and the joining server can authenticate
// the cluster before it has a trust bundle. The joining server's proof and
// the member's differ by label, so neither can be reflected as the other.
package joinsecret

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// MinSize is the least number of bytes a secret holds: a secret must not
// be guessable, since a captured proof can be checked offline against
// guesses.
const MinSize = 32

// MaxSecrets bounds the secrets of one file (during a rotation it holds
// two).
const MaxSecrets = 16

// maxFileSize bounds a secret file.
const maxFileSize = 64 << 10

// exporterLabel is the TLS exporter label of the proofs' keying material.
const exporterLabel = "EXPORTER-meshca-server-join-v1"

// Labels of the two proofs.
const (
	joinerLabel = "meshca server-join v1: joining server"
	memberLabel = "meshca server-join v1: member"
)

// ErrPermissions reports a secret file that others than its owner may
// read.
var ErrPermissions = errors.New("joinsecret: secret file permissions")

// FormatError reports a secret file that cannot be read as secrets. It
// never holds the file's content.
type FormatError struct {
	// Line is the 1-based line of the problem, 0 for the whole file.
	Line   int
	Reason string
}

func (e *FormatError) Error() string {
	if e.Line == 0 {
		return "server-join secret file: " + e.Reason
	}
	return fmt.Sprintf("server-join secret file, line %d: %s", e.Line, e.Reason)
}

// Secret is one pre-shared server-join secret.
type Secret struct {
	key []byte
	// ID names the secret in logs and audit events: a fingerprint from
	// which the secret cannot be found.
	ID string
}

// Parse reads the secrets of a secret file's content, in order: the first
// is the one a joining server presents.
func Parse(b []byte) ([]Secret, error) {
	if len(b) > maxFileSize {
		return nil, &FormatError{Reason: fmt.Sprintf("larger than %d bytes", maxFileSize)}
	}
	var out []Secret
	seen := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, err := base64.StdEncoding.DecodeString(line)
		switch {
		case err != nil:
			return nil, &FormatError{Line: i + 1, Reason: "not standard base64"}
		case len(key) < MinSize:
			return nil, &FormatError{Line: i + 1, Reason: fmt.Sprintf("%d bytes; a secret needs at least %d random bytes: (umask 077; head -c 32 /dev/urandom | base64)", len(key), MinSize)}
		case len(out) == MaxSecrets:
			return nil, &FormatError{Reason: fmt.Sprintf("more than %d secrets", MaxSecrets)}
		}
		s := newSecret(key)
		if seen[s.ID] {
			return nil, &FormatError{Line: i + 1, Reason: "the same secret twice"}
		}
		seen[s.ID] = true
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, &FormatError{Reason: "no secret in it"}
	}
	return out, nil
}

func newSecret(key []byte) Secret {
	h := sha256.Sum256(append([]byte("meshca server-join secret id\x00"), key...))
	return Secret{key: key, ID: hex.EncodeToString(h[:8])}
}

// Load reads a secret file, which must be a regular file readable by its
// owner only, as a KEK file.
func Load(path string) ([]Secret, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("server-join secret file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("server-join secret file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, &FormatError{Reason: path + " is not a regular file"}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; it must be readable by its owner only (chmod 600 %s)", ErrPermissions, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("server-join secret file %s: %w", path, err)
	}
	defer clear(b)
	s, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// ExportedKey is the keying material of a TLS connection that proofs are
// bound to. It needs TLS 1.3.
func ExportedKey(cs tls.ConnectionState) ([]byte, error) {
	if cs.Version != tls.VersionTLS13 {
		return nil, errors.New("joinsecret: the connection is not TLS 1.3")
	}
	return cs.ExportKeyingMaterial(exporterLabel, nil, 32)
}

// JoinerProof is what a joining server sends to show it holds s, on the
// connection whose exported key is ekm.
func (s Secret) JoinerProof(ekm []byte) []byte { return s.mac(joinerLabel, ekm) }

// MemberProof is what a member answers to show it holds s too.
func (s Secret) MemberProof(ekm []byte) []byte { return s.mac(memberLabel, ekm) }

func (s Secret) mac(label string, ekm []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write(ekm)
	return m.Sum(nil)
}

// MatchJoiner returns the secret among secrets whose joining-server proof
// over ekm is proof.
func MatchJoiner(secrets []Secret, ekm, proof []byte) (Secret, bool) {
	for _, s := range secrets {
		if hmac.Equal(s.JoinerProof(ekm), proof) {
			return s, true
		}
	}
	return Secret{}, false
}

// VerifyMember reports whether proof is s's member proof over ekm.
func (s Secret) VerifyMember(ekm, proof []byte) bool {
	return hmac.Equal(s.MemberProof(ekm), proof)
}
