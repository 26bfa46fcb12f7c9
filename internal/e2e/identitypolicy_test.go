package e2e

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/k8s"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/proto/operatorpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// identityPolicy derives spiffe://example.org/ns/<ns>/sa/<sa> from a
// workload's k8s selectors, for the namespaces data.json lists, and keeps
// registration entries working.
const identityPolicy = `package meshca.issuance

default allow := false

identity_selector_types := {"k8s"}

k8s(name) := v if {
	some s in input.workload.selectors
	s.type == "k8s"
	startswith(s.value, concat("", [name, ":"]))
	v := substring(s.value, count(name) + 1, -1)
}

allow if input.entries.allow

allow if {
	input.request.kind == "workload_svid"
	not input.entry
	k8s("ns") in data.meshca.namespaces
}

spiffe_id := sprintf("spiffe://example.org/ns/%s/sa/%s", [k8s("ns"), k8s("sa")]) if {
	input.request.kind == "workload_svid"
	not input.entry
	allow
}

reason := "the identity policy gives no identity in this namespace" if not allow
`

// fakeKubelet serves /pods with one pod holding this test process, in ns
// with service account sa, and returns a k8s attestor pointed at it with a
// procfs root where this process is in that pod's container. (The kubelet
// cannot run here; the attestor, its TLS and the agent are real.)
func fakeKubelet(t *testing.T, ns, sa string) *k8s.Attestor {
	t.Helper()
	podUID := "2b1e3f4a-5c6d-4e7f-8a9b-0c1d2e3f4a5b"
	cid := strings.Repeat("c", 64)
	pods, _ := json.Marshal(map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{}, "items": []any{map[string]any{
		"metadata": map[string]any{"name": "api-0", "namespace": ns, "uid": podUID},
		"spec":     map[string]any{"serviceAccountName": sa, "nodeName": "worker-1", "containers": []any{map[string]any{"name": "app", "image": "api:1"}}},
		"status": map[string]any{"phase": "Running", "containerStatuses": []any{
			map[string]any{"name": "app", "containerID": "containerd://" + cid, "ready": true}}},
	}}})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(pods)
	}))
	t.Cleanup(srv.Close)
	dir := tempDir(t)
	caFile := filepath.Join(dir, "kubelet-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "proc")
	pidDir := filepath.Join(root, fmt.Sprint(os.Getpid()))
	if err := os.MkdirAll(pidDir, 0o755); err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile("/proc/self/stat") // the real start time: the peer check compares it
	if err != nil {
		t.Fatal(err)
	}
	cgroup := "0::/kubepods/besteffort/pod" + podUID + "/" + cid + "\n"
	if err := os.WriteFile(filepath.Join(pidDir, "stat"), stat, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pidDir, "cgroup"), []byte(cgroup), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := k8s.New(k8s.Config{KubeletURL: srv.URL, CAFile: caFile, ProcRoot: root, CacheTTL: -1})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Identity as policy: with a policy deriving IDs from k8s selectors, a
// k8s-attested workload gets its derived SPIFFE ID with no registration
// entry; a workload in a namespace outside the policy gets nothing, and
// the deny is audited with the policy's reason.
func TestIdentityAsPolicy(t *testing.T) {
	e := startServer(t)
	ctx := tctx(t, time.Minute)
	if _, err := e.op.SetIssuancePolicy(ctx, &operatorpb.SetIssuancePolicyRequest{Files: []*operatorpb.PolicyFile{
		{Path: "identity.rego", Content: []byte(identityPolicy)},
		{Path: "meshca/data.json", Content: []byte(`{"namespaces": ["payments"]}`)},
	}}); err != nil {
		t.Fatal(err)
	}
	start := func(ns string) *agent.Agent {
		kub := fakeKubelet(t, ns, "api")
		return e.startAgentConfig(e.token(), func(c *agent.Config) {
			c.WorkloadAttestors = []attest.WorkloadAttestor{unix.New(unix.Config{}), kub}
		})
	}
	inPolicy, outside := start("payments"), start("default")

	const want = "spiffe://example.org/ns/payments/sa/api"
	c := client(t, inPolicy)
	waitUntil(t, 30*time.Second, "the workload in payments gets its derived identity", func() bool {
		x, err := c.FetchX509SVID(tctx(t, 10*time.Second))
		return err == nil && x.ID.String() == want
	})
	list, err := e.op.ListEntries(ctx, &operatorpb.ListEntriesRequest{})
	if err != nil || len(list.Entries) != 0 {
		t.Fatalf("entries %v %v: the identity came from no entry", list, err)
	}
	if _, err := e.events.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
		return ev.Action == "x509.sign" && ev.Decision == audit.Allow && ev.Subject == want
	}); err != nil {
		t.Fatalf("the issuance was not audited: %v", err)
	}

	const reason = "the identity policy gives no identity in this namespace"
	c2 := client(t, outside)
	waitUntil(t, 30*time.Second, "the server refuses the workload in default with the policy's reason", func() bool {
		c2.FetchX509SVID(tctx(t, 5*time.Second))
		_, err := e.events.Wait(tctx(t, 100*time.Millisecond), func(ev audit.Event) bool {
			return ev.Action == "x509.sign" && ev.Decision == audit.Deny && ev.Reason == reason
		})
		return err == nil
	})
	_, err = c2.FetchX509SVID(tctx(t, 10*time.Second))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the workload outside the policy: %v, want PermissionDenied", err)
	}
}
