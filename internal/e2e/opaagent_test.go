package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/testtool"
	meshpolicy "github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/operatorpb"
	"google.golang.org/grpc/codes"
)

// envoyPolicy is an ext_authz policy in OPA-Envoy's shape: the principals
// of data.json may GET /api/...; others get 403 with a body.
const envoyPolicy = `package envoy.authz

default allow := {"allowed": false, "http_status": 403, "body": "not for you"}

allow := {"allowed": true, "headers": {"x-authz-revision": data.envoy.authz.tag}} if {
	input.attributes.source.principal in data.envoy.authz.principals
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "api"
}
`

func envoyFiles(tag string, principals ...string) []*operatorpb.PolicyFile {
	data, _ := json.Marshal(map[string]any{"principals": principals, "tag": tag})
	return []*operatorpb.PolicyFile{{Path: "envoy.rego", Content: []byte(envoyPolicy)}, {Path: "envoy/authz/data.json", Content: data}}
}

// startAgentConfig starts an agent like startAgentWith, tuned.
func (e *env) startAgentConfig(token string, tune func(*agent.Config)) *agent.Agent {
	e.t.Helper()
	dir := tempDir(e.t)
	cfg := agent.Config{Servers: []string{e.srv.APIAddr()}, TrustBundle: e.bundle, DataDir: dir,
		SocketPath: filepath.Join(dir, "agent.sock"), Evidence: jointoken.NewEvidence(token),
		WorkloadAttestors: []attest.WorkloadAttestor{unix.New(unix.Config{})},
		Logger:            slog.New(slog.NewTextHandler(&e.agentLog, nil)), Audit: &e.agentEvents}
	tune(&cfg)
	a, err := agent.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
	return a
}

func checkRequest(principal, method, path string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:  &authv3.AttributeContext_Peer{Principal: principal},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Host: "svc", Headers: map[string]string{"X-Trace": "1"}}},
	}}
}

// TestAgentServesOPABundles: the bundles pushed to the servers reach the
// agent on its Sync stream; the agent serves them as SDS generic secrets
// (a new revision pushed to open SotW and delta streams), over OPA's bundle service to a
// stock OPA sidecar, and evaluates them as Envoy's ext_authz service: a
// principal allowed by one revision is denied by the next and allowed
// again after a rollback, each decision audited.
func TestAgentServesOPABundles(t *testing.T) {
	e := startServer(t)
	ctx := tctx(t, 2*time.Minute)
	const a1, b1 = "spiffe://example.org/a", "spiffe://example.org/b"
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: envoyFiles("one", a1)}); err != nil {
		t.Fatal(err)
	}
	key, err := e.op.GetOPAKey(ctx, &operatorpb.GetOPAKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	token := e.token()
	e.entry(agentIDFor(token), "spiffe://example.org/proxy", time.Hour, "unix:uid:"+strconv.Itoa(os.Getuid()))
	ag := e.startAgentConfig(token, func(c *agent.Config) {
		c.ExtAuthzBundle = "authz"
		c.BundleAddr = "127.0.0.1:0"
	})
	conn := sdsConn(t, ag)

	// SDS: the bundle as a generic secret, signed as the server made it.
	revisionOf := func(raw []byte) string {
		t.Helper()
		b, err := meshpolicy.Verify(bytes.NewReader(raw), []byte(key.PublicKeyPem), key.Kid)
		if err != nil {
			t.Fatalf("the SDS bundle does not verify: %v", err)
		}
		return b.Manifest.Revision
	}
	env := newEnvoy(t, conn, "proxy", "opa-bundle:authz")
	sec := secretsOf(t, env.recvHaving("opa-bundle:authz"))["opa-bundle:authz"]
	if got := revisionOf(sec.GetGenericSecret().GetSecret().GetInlineBytes()); got != "1" {
		t.Fatalf("SDS revision %s, want 1", got)
	}

	delta := newDeltaEnvoy(t, conn, "delta-proxy", nil, "opa-bundle:authz")
	deltaVersion := func(want string) {
		t.Helper()
		for {
			secs, versions, _ := delta.recv()
			if s := secs["opa-bundle:authz"]; s != nil && versions["opa-bundle:authz"] == want {
				if got := revisionOf(s.GetGenericSecret().GetSecret().GetInlineBytes()); got != want {
					t.Fatalf("delta resource version %s holds revision %s", want, got)
				}
				return
			}
		}
	}
	deltaVersion("1")

	// ext_authz with revision 1.
	az := authv3.NewAuthorizationClient(conn)
	check := func(principal, method, path string) *authv3.CheckResponse {
		t.Helper()
		resp, err := az.Check(ctx, checkRequest(principal, method, path))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp
	}
	waitUntil(t, 10*time.Second, "ext_authz allows a with revision 1", func() bool { return check(a1, "GET", "/api/x?y=1").Status.Code == 0 })
	ok := check(a1, "GET", "/api/x")
	if h := ok.GetOkResponse().GetHeaders(); len(h) != 1 || h[0].Header.Key != "x-authz-revision" || h[0].Header.Value != "one" {
		t.Fatalf("allowed response headers %v", h)
	}
	deny := check(b1, "GET", "/api/x")
	if deny.Status.Code != int32(codes.PermissionDenied) || deny.GetDeniedResponse().GetStatus().GetCode() != 403 || deny.GetDeniedResponse().GetBody() != "not for you" {
		t.Fatalf("b with revision 1: %v", deny)
	}
	if check(a1, "POST", "/api/x").Status.Code == 0 || check(a1, "GET", "/admin").Status.Code == 0 {
		t.Fatal("the method and parsed_path are not decided on")
	}
	if _, err := e.agentEvents.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
		return ev.Action == "ext_authz.check" && ev.Decision == audit.Deny && ev.Actor == b1 && ev.Details["revision"] == "1"
	}); err != nil {
		t.Fatalf("the deny was not audited: %v", err)
	}

	// A stock OPA sidecar pulls the agent's cached copy.
	bin := testtool.OPA(t)
	opaDir := tempDir(t)
	sidecar := startOPA(t, bin, opaDir, "http://"+ag.BundleAddr()+"/v1", key)
	waitUntil(t, 60*time.Second, "the OPA sidecar activates revision 1 from the agent", func() bool { return sidecar.revision() == "1" })

	// Revision 2 swaps a and b, everywhere.
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: envoyFiles("two", b1)}); err != nil {
		t.Fatal(err)
	}
	for {
		resp := env.recv()
		env.ack(resp)
		if s := secretsOf(t, resp)["opa-bundle:authz"]; s != nil && revisionOf(s.GetGenericSecret().GetSecret().GetInlineBytes()) == "2" {
			break
		}
	}
	deltaVersion("2")
	waitUntil(t, 10*time.Second, "ext_authz decides by revision 2", func() bool {
		return check(b1, "GET", "/api/x").Status.Code == 0 && check(a1, "GET", "/api/x").Status.Code != 0
	})
	waitUntil(t, 2*time.Second, "the OPA sidecar has revision 2 (long poll on the agent)", func() bool { return sidecar.revision() == "2" })

	// Rollback to revision 1's content: a is allowed again, b denied.
	if _, err := e.op.RollbackBundle(ctx, &operatorpb.RollbackBundleRequest{Name: "authz", Revision: 1}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "ext_authz decides by the rollback", func() bool {
		return check(a1, "GET", "/api/x").Status.Code == 0 && check(b1, "GET", "/api/x").Status.Code != 0
	})
	if h := check(a1, "GET", "/api/x").GetOkResponse().GetHeaders(); len(h) != 1 || h[0].Header.Value != "one" {
		t.Fatalf("after the rollback: headers %v", h)
	}
}

// The agent's bundle service answers 304 when If-None-Match lists the
// current ETag among others, or when a long poll's wait ends without a
// change, and the new revision to a long poll held across a push.
func TestAgentBundleServiceLongPoll(t *testing.T) {
	e := startServer(t)
	ctx := tctx(t, time.Minute)
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: authzFiles("alice")}); err != nil {
		t.Fatal(err)
	}
	ag := e.startAgentConfig(e.token(), func(c *agent.Config) { c.BundleAddr = "127.0.0.1:0" })
	url := "http://" + ag.BundleAddr() + "/v1/bundles/authz"
	var etag string
	waitUntil(t, 10*time.Second, "the agent serves the bundle", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		etag = resp.Header.Get("ETag")
		return resp.StatusCode == 200 && resp.Header.Get("Content-Type") == meshpolicy.BundleContentType
	})
	get := func(prefer string, inm string) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		req.Header.Set("If-None-Match", inm)
		if prefer != "" {
			req.Header.Set("Prefer", prefer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := get("", `"old", `+etag); r.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match with the current ETag among others: %d", r.StatusCode)
	}
	// A long poll with no change ends in 304 when its wait is over.
	if r := get("modes=snapshot,delta;wait=1", etag); r.StatusCode != http.StatusNotModified || r.Header.Get("ETag") != etag {
		t.Fatalf("a long poll without a change: %d %s", r.StatusCode, r.Header.Get("ETag"))
	}
	// One held while a revision is pushed gets it.
	done := make(chan *http.Response, 1)
	go func() { done <- get("modes=snapshot,delta;wait=30", etag) }()
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: authzFiles("bob")}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.StatusCode != 200 || r.Header.Get("ETag") == etag {
			t.Fatalf("the long poll answered %d with ETag %s", r.StatusCode, r.Header.Get("ETag"))
		}
	case <-ctx.Done():
		t.Fatal("the long poll was not answered after a push")
	}
}
