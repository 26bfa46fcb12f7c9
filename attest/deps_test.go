package attest_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies fences the package: attestation must not be able to
// issue (ca), write replicated state (raftfsm, hashicorp/raft, store), or
// depend on the server, the agent or the CLI, which depend on it.
func TestDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	banned := []string{
		"github.com/meshca/meshca/ca", "github.com/meshca/meshca/raftfsm", "github.com/meshca/meshca/store",
		"github.com/meshca/meshca/server", "github.com/meshca/meshca/agent", "github.com/meshca/meshca/cmd",
		"github.com/meshca/meshca/proto", "github.com/hashicorp/raft", "google.golang.org/grpc", "k8s.io/",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, b := range banned {
			if dep == b || strings.HasPrefix(dep, b+"/") || (strings.HasSuffix(b, "/") && strings.HasPrefix(dep, b)) {
				t.Errorf("attest depends on %s", dep)
			}
		}
	}
}
