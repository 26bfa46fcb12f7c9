// Package testtool is what tests share for the world outside meshca: the
// external tools they check its output with (openssl, promtool, a stock
// OPA), loopback servers, and ports for child processes. It is imported by
// tests and test helpers only.
package testtool

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// OpenSSL returns the path of the openssl binary. Without one the test
// fails on CI (CI set: `make test` installs it) and is skipped elsewhere.
func OpenSSL(t testing.TB) string {
	t.Helper()
	return Tool(t, "openssl")
}

// Tool returns the path of the external tool name. Without it the test
// fails on CI (CI set: `make test` installs every tool the tests run) and
// is skipped elsewhere.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required on CI (make test installs it): %v", name, err)
		}
		t.Skipf("%s not found (make test installs it): %v", name, err)
	}
	return p
}

// OpenSSLVerify runs `openssl verify args...` and fails the test unless it
// prints OK.
func OpenSSLVerify(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(OpenSSL(t), append([]string{"verify"}, args...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// WriteFile writes data to dir/name (0644) and returns the path.
func WriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
