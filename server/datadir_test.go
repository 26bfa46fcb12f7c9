package server

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// A server writes its trust bundle where TrustBundlePath says, and its data
// directory is recognised as one.
func TestNewWritesTrustBundle(t *testing.T) {
	cfg := testConfig(t, "s1", newKEK(t))
	cfg.Bootstrap, cfg.TrustDomain = true, "example.org"
	if is, err := IsDataDir(cfg.DataDir); is || err != nil {
		t.Fatalf("IsDataDir(empty directory) = %v, %v; want false", is, err)
	}
	s := mustStart(t, cfg)
	path := TrustBundlePath(cfg.DataDir)
	if want := filepath.Join(cfg.DataDir, "server", "bundle.pem"); path != want {
		t.Errorf("TrustBundlePath = %s, want %s", path, want)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the trust bundle New wrote: %v", err)
	}
	if !bytes.Equal(b, s.srv.TrustBundle()) {
		t.Error("the trust bundle file is not the server's TrustBundle")
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("trust bundle mode %v (%v), want 0644", fi.Mode().Perm(), err)
	}
	roots, err := LoadTrustBundle(path)
	if err != nil {
		t.Fatalf("LoadTrustBundle(%s): %v", path, err)
	}
	if td, err := ca.TrustDomainOfRoots(roots); err != nil || td != spiffeid.RequireTrustDomainFromString("example.org") {
		t.Errorf("the trust bundle names %v (%v), want example.org", td, err)
	}
	if is, err := IsDataDir(cfg.DataDir); !is || err != nil {
		t.Errorf("IsDataDir(a server's) = %v, %v; want true", is, err)
	}
	if got, want := s.srv.AdminSocket(), DefaultAdminSocket(cfg.DataDir); got != want {
		t.Errorf("admin socket %s, want the default %s", got, want)
	}
}

func TestIsDataDir(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		make string // created in the directory
		want bool
	}{
		{"ok/empty", "", false},
		{"ok/offline-ca", "ca/", false},
		{"ok/raft", "raft/", true},
		{"ok/lock", "server.lock", true},
		{"ok/identity", "server/identity.json", true},
	} {
		dir := t.TempDir()
		if tc.make != "" {
			p := filepath.Join(dir, tc.make)
			if strings.HasSuffix(tc.make, "/") {
				if err := os.MkdirAll(p, 0o700); err != nil {
					t.Fatal(err)
				}
			} else {
				if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("{}"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		if got, err := IsDataDir(dir); got != tc.want || err != nil {
			t.Errorf("%s: IsDataDir = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
}

func TestLockDataDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l, err := LockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockDataDir(dir); err == nil || !strings.Contains(err.Error(), "holds the data directory") {
		t.Errorf("a second LockDataDir = %v, want it refused", err)
	}
	l.Release()
	l, err = LockDataDir(dir)
	if err != nil {
		t.Fatalf("LockDataDir after a release: %v", err)
	}
	l.Release()
}

func TestLoadTrustBundle(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l, err := ca.OpenLocal(ca.LocalConfig{Dir: dir, KEK: newKEK(t), TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	root, err := l.Root(ca.ProfileECDSA)
	if err != nil {
		t.Fatal(err)
	}
	rootPEM := ca.EncodePEM(root.Certificate().Raw)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2}})
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name string
		data []byte
		want string // in the error; "" for success
	}{
		{"ok/one-root", rootPEM, ""},
		{"ok/text-around", cat([]byte("subject=example.org\n"), rootPEM, []byte("\n")), ""},
		{"fail/empty", nil, "holds no certificate: give the first server's <data-dir>/server/bundle.pem"},
		{"fail/not-pem", []byte("hello"), "holds no certificate"},
		{"fail/key", cat(rootPEM, keyPEM), `a "EC PRIVATE KEY" PEM block`},
		{"fail/damaged", cat(rootPEM, []byte("-----BEGIN CERTIFICATE-----\nAA")), "damaged"},
		{"fail/no-trust-domain", ca.EncodePEM(selfSigned(t)), "name no trust domain"},
		{"fail/too-large", bytes.Repeat([]byte("x"), ca.MaxPEMBundleSize+1), "limit"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, "/", "-")+".pem")
		if err := os.WriteFile(path, tc.data, 0o644); err != nil {
			t.Fatal(err)
		}
		roots, err := LoadTrustBundle(path)
		if tc.want == "" {
			if err != nil || len(roots) != 1 || !bytes.Equal(roots[0].Raw, root.Certificate().Raw) {
				t.Errorf("%s: LoadTrustBundle = %d roots, %v; want the root", tc.name, len(roots), err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: LoadTrustBundle = %v; want an error naming %s and saying %q", tc.name, err, path, tc.want)
		}
	}
	if _, err := LoadTrustBundle(filepath.Join(dir, "missing.pem")); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadTrustBundle(missing) = %v, want a not-exist error", err)
	}
}

// selfSigned returns a DER self-signed ECDSA certificate naming no SPIFFE ID.
func selfSigned(t *testing.T) []byte {
	t.Helper()
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not spiffe"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
