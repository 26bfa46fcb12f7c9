package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/server"
)

// TestPolicyTokenCommands drives meshca policy token create, list and
// revoke against a bootstrapped server: the token is printed once (--quiet
// bare), list shows its ID, name, bundles and expiry but not its secret,
// revoke by name and by ID removes it, and bad flags are refused.
func TestPolicyTokenCommands(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	addr := "unix://" + sock
	ports := freePorts(t, 2)
	startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org")
	waitLeader(t, env, sock, "s1")

	var created bundleTokenReport
	decodeJSON(t, mustSucceed(t, env, "policy", "token", "create", "--name", "opa-edge", "--bundle", "authz", "--ttl", "24h", "--addr", addr, "--output", "json"), &created)
	if _, _, err := policy.ParseBundleToken(created.Token); err != nil || created.Name != "opa-edge" || created.Expires == nil ||
		strings.Join(created.Bundles, ",") != "authz" || !strings.HasPrefix(created.Token, policy.BundleTokenPrefix+created.ID+".") {
		t.Fatalf("create: %+v (%v)", created, err)
	}
	quiet := strings.TrimSpace(mustSucceed(t, env, "policy", "token", "create", "--name", "opa-all", "--quiet", "--addr", addr).stdout)
	if _, _, err := policy.ParseBundleToken(quiet); err != nil {
		t.Fatalf("create --quiet printed %q: %v", quiet, err)
	}
	r := mustSucceed(t, env, "policy", "token", "list", "--addr", addr)
	secret := created.Token[strings.LastIndex(created.Token, ".")+1:]
	if !strings.Contains(r.stdout, created.ID) || !strings.Contains(r.stdout, "(every bundle)") || strings.Contains(r.stdout, secret) {
		t.Fatalf("list:\n%s", r.stdout)
	}
	var listed []bundleTokenReport
	if err := json.Unmarshal([]byte(mustSucceed(t, env, "policy", "token", "list", "--addr", addr, "--output", "json").stdout), &listed); err != nil || len(listed) != 2 || listed[0].Token != "" {
		t.Fatalf("list --output json: %+v %v", listed, err)
	}
	if r := meshca(t, env, "policy", "token", "create", "--name", "opa-edge", "--addr", addr); r.code == 0 || !strings.Contains(r.stderr, "exists already") {
		t.Fatalf("a name taken: %d\n%s", r.code, r.stderr)
	}
	if r := meshca(t, env, "policy", "token", "create", "--name", "x", "--ttl", "1.5s", "--addr", addr); r.code != exitUsage {
		t.Fatalf("a fractional TTL: %d\n%s", r.code, r.stderr)
	}
	if r := meshca(t, env, "policy", "token", "create", "--name", "Bad Name", "--addr", addr); r.code == 0 {
		t.Fatalf("an invalid name: %d\n%s", r.code, r.stderr)
	}
	if r := mustSucceed(t, env, "policy", "token", "revoke", "--name", "opa-all", "--addr", addr); !strings.Contains(r.stdout, "revoked bundle token") {
		t.Fatalf("revoke --name:\n%s", r.stdout)
	}
	mustSucceed(t, env, "policy", "token", "revoke", created.ID, "--addr", addr)
	if r := meshca(t, env, "policy", "token", "revoke", created.ID, "--addr", addr); r.code == 0 || !strings.Contains(r.stderr, "no bundle token") {
		t.Fatalf("revoke twice: %d\n%s", r.code, r.stderr)
	}
	if err := json.Unmarshal([]byte(mustSucceed(t, env, "policy", "token", "list", "--addr", addr, "--output", "json").stdout), &listed); err != nil || len(listed) != 0 {
		t.Fatalf("list after revoking both: %+v %v", listed, err)
	}
}
