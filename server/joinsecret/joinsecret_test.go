package joinsecret

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newLine(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func TestParse(t *testing.T) {
	a, b := newLine(t, 32), newLine(t, 48)
	got, err := Parse([]byte("# rotation in progress\n" + a + "\n\n  " + b + "  \n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID == got[1].ID || len(got[0].ID) != 16 {
		t.Fatalf("Parse = %+v, want two secrets with distinct 16-hex IDs", got)
	}
	if strings.Contains(got[0].ID, a[:8]) {
		t.Fatal("the ID shows the secret")
	}
	bad := map[string]struct {
		content string
		line    int
	}{
		"empty":      {"", 0},
		"comments":   {"# nothing\n\n", 0},
		"short":      {newLine(t, 16) + "\n", 1},
		"not base64": {a + "\n!!!!\n", 2},
		"url base64": {strings.ReplaceAll(strings.ReplaceAll(newLine(t, 33)+"+/", "+", "-"), "/", "_"), 1},
		"twice":      {a + "\n" + a + "\n", 2},
		"too large":  {strings.Repeat("#", maxFileSize+1), 0},
		"too many":   {strings.Repeat(newLine(t, 32)+"\n", 1) + strings.Join(lines(t, MaxSecrets), "\n"), 0},
	}
	for name, c := range bad {
		_, err := Parse([]byte(c.content))
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Line != c.line {
			t.Errorf("Parse(%s) = %v, want a FormatError at line %d", name, err, c.line)
			continue
		}
		if len(a) > 0 && strings.Contains(err.Error(), a) {
			t.Errorf("Parse(%s): the error shows a secret", name)
		}
	}
}

func lines(t *testing.T, n int) []string {
	var out []string
	for range n {
		out = append(out, newLine(t, 32))
	}
	return out
}

func TestLoadRefusesReadableByOthers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	if err := os.WriteFile(path, []byte(newLine(t, 32)+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); !errors.Is(err, ErrPermissions) {
		t.Fatalf("Load of a 0640 file = %v, want ErrPermissions", err)
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if s, err := Load(path); err != nil || len(s) != 1 {
		t.Fatalf("Load of a 0400 file = %v, %v", s, err)
	}
	if _, err := Load(dir); err == nil {
		t.Fatal("Load of a directory succeeded")
	}
}

// tlsPair opens a real TLS 1.3 connection over loopback TCP and returns
// the exported keys of its client and server ends.
func tlsPair(t *testing.T) (client, server []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			got <- nil
			return
		}
		k, _ := ExportedKey(tc.ConnectionState())
		got <- k
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ck, err := ExportedKey(c.ConnectionState())
	if err != nil {
		t.Fatal(err)
	}
	return ck, <-got
}

func TestProofsBindToTheConnection(t *testing.T) {
	secrets, err := Parse([]byte(newLine(t, 32) + "\n" + newLine(t, 32)))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := Parse([]byte(newLine(t, 32)))
	c1, s1 := tlsPair(t)
	if !bytes.Equal(c1, s1) {
		t.Fatal("the two ends of one connection export different keys")
	}
	c2, _ := tlsPair(t)
	if bytes.Equal(c1, c2) {
		t.Fatal("two connections export the same key")
	}
	// A member holding both secrets admits a joiner holding the second.
	proof := secrets[1].JoinerProof(c1)
	s, ok := MatchJoiner(secrets, s1, proof)
	if !ok || s.ID != secrets[1].ID {
		t.Fatalf("MatchJoiner = %v %v, want the second secret", s.ID, ok)
	}
	if !secrets[1].VerifyMember(c1, s.MemberProof(s1)) {
		t.Fatal("the joiner refuses the member's proof")
	}
	// Replayed on another connection, a wrong secret, or a member proof
	// reflected as a joiner's: refused.
	if _, ok := MatchJoiner(secrets, c2, proof); ok {
		t.Fatal("a proof replayed on another connection was accepted")
	}
	if _, ok := MatchJoiner(secrets, s1, other[0].JoinerProof(c1)); ok {
		t.Fatal("a proof of another secret was accepted")
	}
	if _, ok := MatchJoiner(secrets, s1, secrets[1].MemberProof(c1)); ok {
		t.Fatal("a member proof was accepted as a joiner's")
	}
	if secrets[1].VerifyMember(c1, secrets[1].JoinerProof(c1)) {
		t.Fatal("a joiner proof was accepted as the member's")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("# c\n" + newLine(f, 32) + "\n"))
	f.Add([]byte(newLine(f, 16)))
	f.Add([]byte("!!\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse error %T is not a FormatError", err)
			}
			return
		}
		if len(s) == 0 || len(s) > MaxSecrets {
			t.Fatalf("Parse accepted %d secrets", len(s))
		}
		for _, x := range s {
			if len(x.key) < MinSize {
				t.Fatalf("Parse accepted a %d-byte secret", len(x.key))
			}
		}
	})
}
