package testtool

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var opaOnce struct {
	sync.Mutex
	path string
}

// OPA returns the path of a stock OPA binary built from the Go module
// github.com/open-policy-agent/opa at the version go.mod requires (go.mod
// lists it as a tool, so go.sum pins it). It is built once and cached
// under os.UserCacheDir()/meshca-test/opa-VERSION, so later runs reuse it;
// a build takes a minute or more of CPU. A failure to build fails the test:
// the Go toolchain that runs the test can always build it.
func OPA(t testing.TB) string {
	t.Helper()
	opaOnce.Lock()
	defer opaOnce.Unlock()
	if opaOnce.path != "" {
		return opaOnce.path
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/open-policy-agent/opa").Output()
	if err != nil {
		t.Fatalf("the OPA version of go.mod: %v", err)
	}
	version := strings.TrimSpace(string(out))
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatalf("a cache directory for the OPA build: %v", err)
	}
	dir := filepath.Join(cache, "meshca-test", "opa-"+version)
	bin := filepath.Join(dir, "opa")
	if _, err := os.Stat(bin); err == nil {
		opaOnce.path = bin
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.CreateTemp(dir, "opa-build-*")
	if err != nil {
		t.Fatal(err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	t.Logf("building OPA %s into %s (once; later runs reuse it)", version, dir)
	cmd := exec.Command("go", "build", "-o", tmp.Name(), "github.com/open-policy-agent/opa")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build github.com/open-policy-agent/opa@%s: %v\n%s", version, err, b)
	}
	if err := os.Rename(tmp.Name(), bin); err != nil {
		t.Fatal(err)
	}
	opaOnce.path = bin
	return bin
}
