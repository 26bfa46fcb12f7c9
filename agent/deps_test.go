package agent_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies fences the node agent: it holds no CA keys and creates
// no CA, so it must not link smallstep's certificate authority service and
// key manager (which package ca reaches only through ca/stepcas, imported
// by servers), nor the server side: the server, Raft and its stores, the
// replicated state machine, or the CLI.
func TestDependencies(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	banned := []string{
		"github.com/smallstep/certificates/cas", "go.step.sm/crypto/kms", "github.com/meshca/meshca/ca/stepcas",
		"github.com/meshca/meshca/server", "github.com/meshca/meshca/raftfsm", "github.com/meshca/meshca/store",
		"github.com/meshca/meshca/cmd", "github.com/hashicorp/raft",
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list -deps listed nothing")
	}
	for _, dep := range deps {
		for _, b := range banned {
			if dep == b || strings.HasPrefix(dep, b+"/") {
				t.Errorf("the agent depends on %s", dep)
			}
		}
	}
}
