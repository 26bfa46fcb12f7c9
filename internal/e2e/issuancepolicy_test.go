package e2e

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// mintPolicy keeps entry matching's decision and refuses mints of
// /blocked/ IDs with its own reason; mints get one-hour certificates.
const mintPolicy = `package meshca.issuance

default allow := false

allow if {
	input.entries.allow
	not startswith(input.request.spiffe_id, "spiffe://example.org/blocked/")
}

ttl := 3600 if input.request.kind == "mint"

reason := "blocked by the mint policy" if startswith(input.request.spiffe_id, "spiffe://example.org/blocked/")

reason := input.entries.reason if not input.entries.allow
`

func mint(t *testing.T, e *env, id string) (*operatorpb.MintX509SVIDResponse, error) {
	t.Helper()
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	return e.op.MintX509SVID(tctx(t, 20*time.Second), &operatorpb.MintX509SVIDRequest{SpiffeId: id, Csr: csr})
}

// An operator's issuance policy decides every issuance after it is set: a
// deny carries its reason as PermissionDenied and is audited; a policy
// that does not compile is refused and the previous one stays; one that
// fails at evaluation denies; removing it restores entry matching.
func TestIssuancePolicy(t *testing.T) {
	e := startServer(t)
	ctx := tctx(t, time.Minute)
	set := func(src string) (*operatorpb.IssuancePolicyResponse, error) {
		var files []*operatorpb.PolicyFile
		if src != "" {
			files = []*operatorpb.PolicyFile{{Path: "issuance.rego", Content: []byte(src)}}
		}
		return e.op.SetIssuancePolicy(ctx, &operatorpb.SetIssuancePolicyRequest{Files: files})
	}
	// Without a policy, entries decide: a blocked/ mint is allowed.
	if _, err := mint(t, e, "spiffe://example.org/blocked/a"); err != nil {
		t.Fatalf("mint without a policy: %v", err)
	}
	resp, err := set(mintPolicy)
	if err != nil || resp.Revision != 1 {
		t.Fatalf("set: %v %v", resp, err)
	}
	got, err := mint(t, e, "spiffe://example.org/web")
	if err != nil {
		t.Fatalf("a mint the policy allows: %v", err)
	}
	leaf, err := x509.ParseCertificate(got.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > time.Hour+2*time.Minute {
		t.Fatalf("the policy's ttl was not applied: the certificate lives %v", life)
	}
	_, err = mint(t, e, "spiffe://example.org/blocked/b")
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "blocked by the mint policy" {
		t.Fatalf("a mint the policy denies: %v", err)
	}
	if _, err := e.events.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
		return ev.Decision == audit.Deny && ev.Action == "x509.mint" && ev.Subject == "spiffe://example.org/blocked/b" && ev.Reason == "blocked by the mint policy"
	}); err != nil {
		t.Fatalf("the deny was not audited: %v", err)
	}
	// Entry matching still refuses what it refused: the policy extends it.
	if _, err := mint(t, e, "spiffe://example.org/meshca/agent/x"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("a reserved ID: %v", err)
	}

	// Refused: nothing stored, revision 1 still decides.
	for _, bad := range []string{
		"package meshca.issuance\nallow if {\n",
		"package meshca.issuance\nallow if input.request.spiffeid == \"x\"\n",
		"package elsewhere\nallow := true\n",
	} {
		if _, err := set(bad); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "issuance.rego") && !strings.Contains(err.Error(), "meshca.issuance") {
			t.Fatalf("an invalid policy: %v, want InvalidArgument naming the file", err)
		}
	}
	show, err := e.op.GetIssuancePolicy(ctx, &operatorpb.GetIssuancePolicyRequest{})
	if err != nil || show.Revision != 1 || string(show.Files[0].Content) != mintPolicy {
		t.Fatalf("show after refused sets: %v %v", show, err)
	}
	if _, err := mint(t, e, "spiffe://example.org/blocked/c"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("revision 1 no longer decides: %v", err)
	}

	// A policy that fails at evaluation on every input is refused when set;
	// one that fails on some inputs denies those (fail closed), with the
	// error as reason, and allows the others.
	if _, err := set("package meshca.issuance\nallow := true\nallow := false if true\n"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "fails at evaluation") {
		t.Fatalf("a policy that always fails at evaluation: %v, want InvalidArgument", err)
	}
	if _, err := set("package meshca.issuance\nallow := true\nallow := false if contains(input.request.spiffe_id, \"conflict\")\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := mint(t, e, "spiffe://example.org/conflict"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "issuance policy") {
		t.Fatalf("a policy that errors on this input: %v, want PermissionDenied", err)
	}
	if _, err := e.events.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
		return ev.Decision == audit.Deny && ev.Subject == "spiffe://example.org/conflict" && strings.Contains(ev.Reason, "issuance policy")
	}); err != nil {
		t.Fatalf("the fail-closed deny was not audited: %v", err)
	}
	if _, err := mint(t, e, "spiffe://example.org/fine"); err != nil {
		t.Fatalf("a mint the erroring policy decides fine: %v", err)
	}

	// Removed: entry matching alone again.
	if resp, err := set(""); err != nil || resp.Revision != 3 {
		t.Fatalf("remove: %v %v", resp, err)
	}
	if _, err := mint(t, e, "spiffe://example.org/blocked/d"); err != nil {
		t.Fatalf("mint after the policy was removed: %v", err)
	}
}
