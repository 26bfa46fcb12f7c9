package ca

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// A data directory reopened with the right KEK issues under the same roots;
// with a wrong KEK it refuses and changes nothing.
func TestReopenWithRightAndWrongKEK(t *testing.T) {
	dir := t.TempDir()
	kek, err := CreateKEKFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLocal(LocalConfig{Dir: dir, KEK: kek, TrustDomain: td("example.org")})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Created() {
		t.Error("first open did not report creating the hierarchy")
	}
	before := map[string][]byte{}
	for _, p := range Profiles() {
		r, _ := l.Root(p.Name())
		before[p.Name()] = r.Certificate().Raw
	}
	l.Close()
	state, err := os.ReadFile(filepath.Join(dir, "ca", "state.json"))
	if err != nil {
		t.Fatal(err)
	}

	// Right KEK, loaded from its file.
	kek2, err := LoadKEKFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	l, err = OpenLocal(LocalConfig{Dir: dir, KEK: kek2})
	if err != nil {
		t.Fatal(err)
	}
	if l.Created() {
		t.Error("reopen reported creating the hierarchy")
	}
	for _, p := range Profiles() {
		r, _ := l.Root(p.Name())
		if !bytes.Equal(r.Certificate().Raw, before[p.Name()]) {
			t.Errorf("%s root changed across reopen", p.Name())
		}
		svid, _ := issue(t, l, p.Name(), "spiffe://example.org/after-reopen")
		inter, _ := p.ParseCertificate(svid.Certificates[1])
		if err := CheckSignedBy(inter, r.Certificate()); err != nil {
			t.Errorf("%s: intermediate does not chain to the original root: %v", p.Name(), err)
		}
	}
	l.Close()

	// Wrong KEK.
	wrong, err := CreateKEKFile(filepath.Join(t.TempDir(), "other-kek"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLocal(LocalConfig{Dir: dir, KEK: wrong}); !errors.Is(err, ErrWrongKEK) {
		t.Fatalf("wrong KEK: error %v, want ErrWrongKEK", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca", "state.json"))
	if !bytes.Equal(state, after) {
		t.Error("a refused open changed the state file")
	}
}

func TestKEKFileRules(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek")
	if _, err := CreateKEKFile(path); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("new KEK file mode %04o, want 0600", fi.Mode().Perm())
	}
	if _, err := CreateKEKFile(path); err == nil {
		t.Error("CreateKEKFile overwrote an existing KEK")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKEKFile(path); !errors.Is(err, ErrKEKPermissions) {
		t.Errorf("world-readable KEK: error %v, want ErrKEKPermissions", err)
	}
	for name, content := range map[string]string{
		"short":     base64.StdEncoding.EncodeToString(make([]byte, 16)),
		"not-b64":   "this is not base64!!",
		"empty":     "",
		"too-long":  base64.StdEncoding.EncodeToString(make([]byte, 33)),
		"raw-bytes": string(make([]byte, 32)),
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKEKFile(p)
		if err == nil {
			t.Errorf("%s KEK file accepted", name)
			continue
		}
		// The hint never suggests overwriting the file keys may be sealed
		// under, and writes a new one with its mode set before any byte.
		if strings.Contains(err.Error(), "> "+p) || !strings.Contains(err.Error(), "(umask 077; head -c 32 /dev/urandom | base64 > new-kek)") {
			t.Errorf("%s KEK file: the hint %q overwrites the file or lacks the umask recipe", name, err)
		}
	}
	if _, err := LoadKEKFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing KEK file accepted")
	}
	// Surrounding whitespace is fine.
	p := filepath.Join(dir, "spaced")
	if err := os.WriteFile(p, []byte("  "+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKEKFile(p); err != nil {
		t.Errorf("KEK with whitespace: %v", err)
	}
}

// Sealed keys never leak into errors, and tampering or swapping is detected.
func TestSealedKeys(t *testing.T) {
	dir := t.TempDir()
	kek, _ := CreateKEKFile(filepath.Join(dir, "kek"))
	kekText, _ := os.ReadFile(filepath.Join(dir, "kek"))
	for _, p := range Profiles() {
		key, _ := p.GenerateKey()
		sk, err := SealKey(kek, p, p.Name()+"/test", key)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := p.MarshalPrivateKey(key)
		if bytes.Contains(sk.Ciphertext, der[len(der)-32:]) {
			t.Fatalf("%s: sealed key contains private key bytes", p.Name())
		}
		got, err := sk.Open(kek)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Public().(*ecdsa.PublicKey).Equal(key.Public()) {
			t.Errorf("%s: opened key differs", p.Name())
		}

		tampered := *sk
		tampered.Ciphertext = bytes.Clone(sk.Ciphertext)
		tampered.Ciphertext[len(tampered.Ciphertext)-1] ^= 1
		_, err = tampered.Open(kek)
		if !errors.Is(err, ErrWrongKEK) {
			t.Errorf("%s: tampered key: error %v", p.Name(), err)
		}
		relabeled := *sk
		relabeled.Label = p.Name() + "/root"
		if _, err := relabeled.Open(kek); err == nil {
			t.Errorf("%s: a key sealed for one purpose opened for another", p.Name())
		}
		other, _ := NewKEK(bytes.Repeat([]byte{7}, KEKSize))
		_, err = sk.Open(other)
		if !errors.Is(err, ErrWrongKEK) {
			t.Errorf("%s: wrong KEK: error %v", p.Name(), err)
		}
		for _, secret := range []string{strings.TrimSpace(string(kekText)), base64.StdEncoding.EncodeToString(der)} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: error message contains secret material", p.Name())
			}
		}
	}
}

// An intermediate past half of its lifetime is replaced on open; the root stays.
func TestIntermediateRotatesAtHalfLife(t *testing.T) {
	dir := t.TempDir()
	kek, _ := CreateKEKFile(filepath.Join(dir, "kek"))
	now := time.Now()
	open := func(at time.Time) *LocalCA {
		l, err := OpenLocal(LocalConfig{Dir: dir, KEK: kek, TrustDomain: td("example.org"), Clock: clockwork.NewFakeClockAt(at)})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open(now)
	first, _ := l.Issuer(ProfileSM2)
	firstRoot, _ := l.Root(ProfileSM2)
	l.Close()

	l = open(now.Add(10 * 24 * time.Hour))
	if len(l.Rotations()) != 0 {
		t.Errorf("rotated before half-life: %v", l.Rotations())
	}
	l.Close()

	l = open(now.Add(16 * 24 * time.Hour))
	defer l.Close()
	second, _ := l.Issuer(ProfileSM2)
	root, _ := l.Root(ProfileSM2)
	if len(l.Rotations()) != len(Profiles()) {
		t.Errorf("rotations %v, want one per profile", l.Rotations())
	}
	if bytes.Equal(first.Certificate().Raw, second.Certificate().Raw) {
		t.Error("intermediate not replaced after half-life")
	}
	if !bytes.Equal(firstRoot.Certificate().Raw, root.Certificate().Raw) {
		t.Error("root changed with the intermediate")
	}
	if err := CheckSignedBy(second.Certificate(), root.Certificate()); err != nil {
		t.Errorf("new intermediate not signed by the root: %v", err)
	}
}

func TestDataDirIsLocked(t *testing.T) {
	dir := t.TempDir()
	kek, _ := CreateKEKFile(filepath.Join(dir, "kek"))
	l, err := OpenLocal(LocalConfig{Dir: dir, KEK: kek, TrustDomain: td("example.org")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLocal(LocalConfig{Dir: dir, KEK: kek}); !errors.Is(err, ErrDataDirLocked) {
		t.Errorf("second open: error %v, want ErrDataDirLocked", err)
	}
	l.Close()
	l, err = OpenLocal(LocalConfig{Dir: dir, KEK: kek, TrustDomain: td("other.org")})
	if err == nil {
		l.Close()
		t.Error("reopened a data directory under another trust domain")
	}
}
