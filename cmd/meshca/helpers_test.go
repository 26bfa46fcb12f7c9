package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/meshca/meshca/ca"
)

// result is the outcome of one in-process meshca run.
type result struct {
	code           int
	stdout, stderr string
}

// meshca runs the command line args in-process with an environment made
// of env only, so the caller's own MESHCA_* variables cannot leak in.
func meshca(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := runEnv(args, &stdout, &stderr, func(k string) string { return env[k] })
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// mustSucceed runs meshca and fails the test unless it exits 0.
func mustSucceed(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	r := meshca(t, env, args...)
	if r.code != exitOK {
		t.Fatalf("meshca %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// treeSnapshot maps every path under dir to its mode and a hash of its
// content, to compare a directory before and after a command.
func treeSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h := sha256.Sum256(b)
			v += " " + hex.EncodeToString(h[:])
		}
		snap[p] = v
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return snap
}

func diffSnapshots(before, after map[string]string) []string {
	var diffs []string
	for p, v := range before {
		if w, ok := after[p]; !ok {
			diffs = append(diffs, "removed "+p)
		} else if v != w {
			diffs = append(diffs, "changed "+p+": "+v+" -> "+w)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			diffs = append(diffs, "added "+p)
		}
	}
	return diffs
}

// checkMode fails the test unless path has permission bits want.
func checkMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("mode of %s = %04o, want %04o", path, got, want)
	}
}

// splitPEM splits concatenated PEM blocks into their DER contents.
func splitPEM(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var ders [][]byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		ders = append(ders, blk.Bytes)
	}
	if len(bytes.TrimSpace(b)) != 0 {
		t.Fatalf("trailing data after PEM blocks: %q", b)
	}
	return ders
}

// requireOpenSSL returns the path of openssl. Without it the test fails on
// CI (CI set) and is skipped elsewhere.
func requireOpenSSL(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("openssl is required on CI: %v", err)
		}
		t.Skipf("openssl not found: %v", err)
	}
	return p
}

// opensslVerify runs `openssl verify args...` and fails the test unless the
// certificate verifies.
func opensslVerify(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(requireOpenSSL(t), append([]string{"verify"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// writeTestFile writes a file for a test and returns its path.
func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const devOnlyWarning = "for development only"

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLeafAndKey parses a written leaf and key, checks the leaf's SPIFFE
// ID and that the key is the leaf's, and returns the leaf's serial.
func checkLeafAndKey(t *testing.T, profile, svidPath, keyPath, wantID string) *big.Int {
	t.Helper()
	certs := splitPEM(t, readFile(t, svidPath))
	if len(certs) != 2 {
		t.Fatalf("%s holds %d certificates, want leaf and intermediate", svidPath, len(certs))
	}
	keyPEM := splitPEM(t, readFile(t, keyPath))
	if len(keyPEM) != 1 || !bytes.HasPrefix(readFile(t, keyPath), []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Fatalf("%s is not one PKCS#8 PRIVATE KEY block", keyPath)
	}
	var (
		uris   []string
		pub    crypto.PublicKey
		serial *big.Int
		key    any
		err    error
	)
	p, perr := ca.ProfileByName(profile)
	if perr != nil {
		t.Fatal(perr)
	}
	c, perr := p.ParseCertificate(certs[0])
	if perr != nil {
		t.Fatalf("parse %s leaf: %v", profile, perr)
	}
	uris, pub, serial = c.URIs, c.PublicKey, c.SerialNumber
	// smx509 parses PKCS#8 keys of both profiles.
	key, err = smx509.ParsePKCS8PrivateKey(keyPEM[0])
	if err != nil {
		t.Fatalf("parse %s key: %v", profile, err)
	}
	if len(uris) != 1 || uris[0] != wantID {
		t.Errorf("%s leaf URI SANs = %v, want [%s]", profile, uris, wantID)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("%s key is a %T", profile, key)
	}
	if eq, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(pub) {
		t.Errorf("%s key.pem does not hold the leaf's key", profile)
	}
	return serial
}

// background is a meshca command running in a goroutine of the test, such
// as dev or agent, until stop or the end of the test.
type background struct {
	args           []string
	stdout, stderr *syncBuffer
	cancel         context.CancelFunc
	done           chan int // the exit code, when the command returns
	code           int
	exited         bool
	// wantCode is the exit code the test expects (exitOK unless set).
	wantCode int
}

// startBackground runs `meshca args...` in-process under a context that
// stop cancels, as SIGTERM would.
func startBackground(t *testing.T, env map[string]string, args ...string) *background {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &background{args: args, stdout: &syncBuffer{}, stderr: &syncBuffer{}, cancel: cancel, done: make(chan int, 1)}
	go func() {
		b.done <- runContext(ctx, args, b.stdout, b.stderr, func(k string) string { return env[k] })
	}()
	t.Cleanup(func() {
		if code := b.stop(t); code != b.wantCode && !t.Failed() {
			t.Errorf("meshca %s exited %d\nstderr:\n%s", strings.Join(args, " "), code, b.stderr)
		}
	})
	return b
}

// stop cancels the command and returns its exit code.
func (b *background) stop(t *testing.T) int {
	t.Helper()
	b.cancel()
	b.wait(t, 20*time.Second)
	return b.code
}

// wait waits up to timeout for the command to return by itself.
func (b *background) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	if b.exited {
		return b.code
	}
	select {
	case b.code = <-b.done:
		b.exited = true
	case <-time.After(timeout):
		t.Fatalf("meshca %s did not return within %s\nstderr:\n%s", strings.Join(b.args, " "), timeout, b.stderr)
	}
	return b.code
}

// running fails the test if the command has returned.
func (b *background) running(t *testing.T) {
	t.Helper()
	if b.exited {
		t.Fatalf("meshca %s exited %d\nstderr:\n%s", strings.Join(b.args, " "), b.code, b.stderr)
	}
	select {
	case b.code = <-b.done:
		b.exited = true
		t.Fatalf("meshca %s exited %d\nstdout:\n%s\nstderr:\n%s", strings.Join(b.args, " "), b.code, b.stdout, b.stderr)
	default:
	}
}
