package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/server"
)

// TestPolicyCommands drives meshca policy and meshca bundle show --opa-key
// against a bootstrapped server: the issuance policy is set, shown,
// tested and cleared; a bundle is pushed, listed, shown, diffed and rolled
// back; bad input is refused with file:line; the stored bundle verifies
// with the published key.
func TestPolicyCommands(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	addr := "unix://" + sock
	ports := freePorts(t, 2)
	startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org")
	waitLeader(t, env, sock, "s1")
	dir := shortTempDir(t)

	// Issuance policy.
	pol := writeTestFile(t, dir, "issuance.rego", []byte("package meshca.issuance\n\ndefault allow := false\n\nallow if input.entries.allow\n\nreason := \"no entry\" if not allow\n"))
	r := mustSucceed(t, env, "policy", "issuance", "set", pol, "--addr", addr)
	if !strings.Contains(r.stdout, "revision  1") {
		t.Fatalf("set:\n%s", r.stdout)
	}
	bad := writeTestFile(t, dir, "bad.rego", []byte("package meshca.issuance\n\nallow if input.node.name == \"x\"\n"))
	if r := meshca(t, env, "policy", "issuance", "set", bad, "--addr", addr); r.code != exitError || !strings.Contains(r.stderr, "bad.rego:3") {
		t.Fatalf("an invalid policy: %d\n%s", r.code, r.stderr)
	}
	if r := mustSucceed(t, env, "policy", "issuance", "show", "--addr", addr); !strings.Contains(r.stdout, "revision  1") || !strings.Contains(r.stdout, "allow if input.entries.allow") {
		t.Fatalf("show:\n%s", r.stdout)
	}
	var st statusReport
	if err := json.Unmarshal([]byte(mustSucceed(t, env, "status", "--addr", addr, "--output", "json").stdout), &st); err != nil || st.IssuancePolicyRevision != 1 {
		t.Errorf("status: issuance policy revision %d (%v), want 1", st.IssuancePolicyRevision, err)
	}
	in := writeTestFile(t, dir, "input.json", []byte(`{"request": {"kind": "mint", "spiffe_id": "spiffe://example.org/x"}, "entries": {"allow": false, "reason": "r"}}`))
	var d struct {
		Allow  bool   `json:"allow"`
		Reason string `json:"reason"`
	}
	decodeJSON(t, mustSucceed(t, env, "policy", "issuance", "test", "--input", in, "--addr", addr, "--output", "json"), &d)
	if d.Allow || d.Reason != "no entry" {
		t.Fatalf("test: %+v", d)
	}
	if r := mustSucceed(t, env, "policy", "issuance", "set", "--clear", "--addr", addr); !strings.Contains(r.stdout, "registration entries decide") {
		t.Fatalf("clear:\n%s", r.stdout)
	}

	// Bundles.
	src := filepath.Join(dir, "authz")
	if err := os.MkdirAll(filepath.Join(src, "authz"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, src, "authz.rego", []byte("package authz\n\ndefault allow := false\n\nallow if input.user in data.authz.users\n"))
	writeTestFile(t, filepath.Join(src, "authz"), "data.json", []byte(`{"users": ["alice"]}`))
	mustSucceed(t, env, "policy", "push", src, "--name", "authz", "--addr", addr)
	writeTestFile(t, filepath.Join(src, "authz"), "data.json", []byte(`{"users": ["bob"]}`))
	mustSucceed(t, env, "policy", "push", src, "--name", "authz", "--addr", addr)
	if r := mustSucceed(t, env, "status", "--addr", addr); !strings.Contains(r.stdout, "authz (revision 2)") {
		t.Errorf("status lacks the bundle's revision:\n%s", r.stdout)
	}
	writeTestFile(t, src, "broken.rego", []byte("package authz\n\nallow if {\n"))
	if r := meshca(t, env, "policy", "push", src, "--name", "authz", "--addr", addr); r.code != exitError || !strings.Contains(r.stderr, "broken.rego:") {
		t.Fatalf("an invalid bundle: %d\n%s", r.code, r.stderr)
	}
	var list []bundleReport
	decodeJSON(t, mustSucceed(t, env, "policy", "list", "--name", "authz", "--addr", addr, "--output", "json"), &list)
	if len(list) != 2 || list[1].Revision != 2 {
		t.Fatalf("list: %+v", list)
	}
	r = mustSucceed(t, env, "policy", "diff", "--name", "authz", "--addr", addr)
	if !strings.Contains(r.stdout, `-{"users": ["alice"]}`) || !strings.Contains(r.stdout, `+{"users": ["bob"]}`) {
		t.Fatalf("diff:\n%s", r.stdout)
	}
	r = mustSucceed(t, env, "policy", "rollback", "--name", "authz", "--revision", "1", "--addr", addr)
	if !strings.Contains(r.stdout, "rollback to 1") {
		t.Fatalf("rollback:\n%s", r.stdout)
	}
	tarball := filepath.Join(dir, "authz.tar.gz")
	r = mustSucceed(t, env, "policy", "show", "--name", "authz", "--out", tarball, "--addr", addr)
	if !strings.Contains(r.stdout, `"alice"`) {
		t.Fatalf("show after the rollback:\n%s", r.stdout)
	}
	var key struct {
		Kid       string `json:"kid"`
		Algorithm string `json:"algorithm"`
		PEM       string `json:"public_key_pem"`
	}
	decodeJSON(t, mustSucceed(t, env, "bundle", "show", "--opa-key", "--addr", addr, "--output", "json"), &key)
	b, err := policy.Verify(bytes.NewReader(readFile(t, tarball)), []byte(key.PEM), key.Kid)
	if err != nil {
		t.Fatal(err)
	}
	if b.Manifest.Revision != "3" || len(*b.Manifest.Roots) != 1 || (*b.Manifest.Roots)[0] != "authz" {
		t.Fatalf("manifest %+v", b.Manifest)
	}
}
