package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
