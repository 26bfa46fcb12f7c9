package tunnel_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies fences the tunnel endpoint: it is a client of the
// agent's socket like any Envoy, so it links neither the agent nor the
// server side (the server, Raft and its stores, the replicated state
// machine, the CA hierarchy's key custody) nor the CLI.
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	banned := []string{
		"github.com/meshca/meshca/agent", "github.com/meshca/meshca/server", "github.com/meshca/meshca/raftfsm",
		"github.com/meshca/meshca/store", "github.com/meshca/meshca/cmd", "github.com/meshca/meshca/ca",
		"github.com/meshca/meshca/attest", "github.com/hashicorp/raft", "github.com/smallstep/certificates/cas",
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, dep := range deps {
		for _, b := range banned {
			if dep == b || strings.HasPrefix(dep, b+"/") {
				t.Errorf("the tunnel depends on %s", dep)
			}
		}
	}
}
