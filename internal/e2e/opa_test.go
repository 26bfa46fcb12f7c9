package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testtool"
	meshpolicy "github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// authzPolicy admits the users data.json lists.
const authzPolicy = `package authz

default allow := false

allow if input.user in data.authz.users
`

func authzFiles(users ...string) []*operatorpb.PolicyFile {
	data, _ := json.Marshal(map[string]any{"users": users})
	return []*operatorpb.PolicyFile{{Path: "authz.rego", Content: []byte(authzPolicy)}, {Path: "authz/data.json", Content: data}}
}

// mintFiles mints an X509-SVID for id through the operator API and writes
// svid.pem, key.pem and bundle.pem to dir.
func mintFiles(t *testing.T, e *env, id, dir string) {
	t.Helper()
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.op.MintX509SVID(tctx(t, 20*time.Second), &operatorpb.MintX509SVIDRequest{SpiffeId: id, Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	testtool.WriteFile(t, dir, "svid.pem", ca.EncodePEM(resp.Chain...))
	testtool.WriteFile(t, dir, "key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	testtool.WriteFile(t, dir, "bundle.pem", e.srv.TrustBundle())
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return testtool.FreePort(t)
}

// opaProc is a stock OPA started as a process.
type opaProc struct {
	addr string
	log  *syncBuffer
}

// startOPA runs `opa run --server` with a configuration of one service
// (url, and its TLS files in dir when the URL is https) serving bundle
// authz, our OPA key, and signatures enforced (a signing block); polling
// is slow (30-60 s) so that only long polling can deliver quickly.
func startOPA(t *testing.T, bin, dir, url string, key *operatorpb.GetOPAKeyResponse) *opaProc {
	t.Helper()
	return startOPAWith(t, bin, dir, url, key, map[string]any{"client_tls": map[string]any{"cert": filepath.Join(dir, "svid.pem"), "private_key": filepath.Join(dir, "key.pem")}})
}

// startOPAWith is startOPA with the service's credentials (OPA's
// services.<name>.credentials) given, used when the URL is https.
func startOPAWith(t *testing.T, bin, dir, url string, key *operatorpb.GetOPAKeyResponse, creds map[string]any) *opaProc {
	t.Helper()
	svc := map[string]any{"url": url}
	if strings.HasPrefix(url, "https:") {
		svc["tls"] = map[string]any{"ca_cert": filepath.Join(dir, "bundle.pem")}
		svc["credentials"] = creds
	}
	cfg := map[string]any{
		"services": map[string]any{"meshca": svc},
		"bundles": map[string]any{"authz": map[string]any{
			"service": "meshca", "resource": "bundles/authz",
			"polling": map[string]any{"min_delay_seconds": 30, "max_delay_seconds": 60, "long_polling_timeout_seconds": 20},
			"signing": map[string]any{"keyid": key.Kid},
		}},
		"keys":          map[string]any{key.Kid: map[string]any{"algorithm": key.Algorithm, "key": key.PublicKeyPem}},
		"decision_logs": map[string]any{"console": false},
	}
	b, _ := json.Marshal(cfg)
	cfgPath := testtool.WriteFile(t, dir, fmt.Sprintf("opa-%d.json", time.Now().UnixNano()), b)
	p := &opaProc{addr: freeAddr(t), log: &syncBuffer{}}
	cmd := exec.Command(bin, "run", "--server", "--addr", p.addr, "--config-file", cfgPath, "--log-level", "debug", "--disable-telemetry")
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("OPA's log:\n%s", p.log.String())
		}
	})
	return p
}

// query asks OPA for a document with an input; undefined is nil.
func (p *opaProc) query(path string, input any) (any, error) {
	body, _ := json.Marshal(map[string]any{"input": input})
	resp, err := http.Post("http://"+p.addr+"/v1/data/"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Result any `json:"result"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("OPA: %s: %s", resp.Status, b)
	}
	return out.Result, json.NewDecoder(resp.Body).Decode(&out)
}

// revision is the revision of bundle authz OPA has activated ("" if none).
func (p *opaProc) revision() string {
	v, err := p.query("system/bundles/authz/manifest/revision", nil)
	if err != nil {
		return ""
	}
	s, _ := v.(string)
	return s
}

func (p *opaProc) allowed(user string) bool {
	v, _ := p.query("authz/allow", map[string]any{"user": user})
	return v == true
}

// TestStockOPAPullsSignedBundles: a stock OPA, built from its Go module,
// uses the server as its bundle service over mTLS with an X509-SVID,
// enforces our signature, answers with the pushed policy, gets each new
// revision by long poll (its periodic polling is 30-60 s), and refuses a
// bundle tampered on the way.
func TestStockOPAPullsSignedBundles(t *testing.T) {
	bin := testtool.OPA(t)
	e := startServerWith(t, func(c *server.Config) { c.BundleAddr = "127.0.0.1:0" })
	ctx := tctx(t, 2*time.Minute)
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: authzFiles("alice")}); err != nil {
		t.Fatal(err)
	}
	key, err := e.op.GetOPAKey(ctx, &operatorpb.GetOPAKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	dir := tempDir(t)
	mintFiles(t, e, "spiffe://example.org/opa", dir)
	_, port, _ := net.SplitHostPort(e.srv.BundleAddr())
	opa := startOPA(t, bin, dir, "https://localhost:"+port+"/v1", key)

	waitUntil(t, 60*time.Second, "OPA activates revision 1", func() bool { return opa.revision() == "1" })
	if !opa.allowed("alice") || opa.allowed("bob") {
		t.Fatal("OPA does not decide by revision 1 (alice allowed, bob not)")
	}

	// A new revision reaches OPA by long poll, well before a periodic poll.
	// (The long poll is already held: the revision it has is 1.)
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: authzFiles("bob")}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Second, "OPA activates revision 2 within 2 s of the push", func() bool { return opa.revision() == "2" })
	if opa.allowed("alice") || !opa.allowed("bob") {
		t.Fatal("OPA does not decide by revision 2")
	}

	// Rollback republishes revision 1's content as revision 3.
	rb, err := e.op.RollbackBundle(ctx, &operatorpb.RollbackBundleRequest{Name: "authz", Revision: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rb.Info.Revision != 3 || rb.Info.RollbackOf != 1 {
		t.Fatalf("rollback made %+v", rb.Info)
	}
	waitUntil(t, 2*time.Second, "OPA activates revision 3 (the rollback)", func() bool { return opa.revision() == "3" })
	if !opa.allowed("alice") || opa.allowed("bob") {
		t.Fatal("after the rollback OPA does not decide by revision 1's content")
	}

	// A proxy that changes the policy inside the bundle (signatures kept):
	// a second OPA refuses it.
	tampered := &tamperProxy{t: t, upstream: "https://" + e.srv.BundleAddr() + "/v1/bundles/authz", dir: dir}
	ts := &http.Server{Handler: tampered, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ts.Serve(ln)
	t.Cleanup(func() { ts.Close() })
	opa2 := startOPA(t, bin, dir, "http://"+ln.Addr().String()+"/v1", key)
	waitUntil(t, 60*time.Second, "the second OPA refuses the tampered bundle", func() bool {
		return tampered.served() && strings.Contains(opa2.log.String(), "digest mismatch")
	})
	if opa2.revision() != "" || opa2.allowed("mallory") {
		t.Fatal("the second OPA activated the tampered bundle")
	}
}

// tamperProxy fetches the real bundle with the SVID in dir and serves it
// with its policy changed to allow everyone, signatures unchanged.
type tamperProxy struct {
	t        *testing.T
	upstream string
	dir      string
	n        syncBuffer
}

func (p *tamperProxy) served() bool { return p.n.String() != "" }

func (p *tamperProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(p.dir, "svid.pem"), filepath.Join(p.dir, "key.pem"))
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	roots := x509.NewCertPool()
	b, _ := os.ReadFile(filepath.Join(p.dir, "bundle.pem"))
	roots.AppendCertsFromPEM(b)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}}}}
	resp, err := c.Get(p.upstream)
	if err != nil {
		http.Error(w, err.Error(), 502)
		return
	}
	defer resp.Body.Close()
	orig, _ := io.ReadAll(resp.Body)
	out, err := rewriteBundle(orig, func(name string, data []byte) []byte {
		if strings.HasSuffix(name, ".rego") {
			return bytes.Replace(data, []byte("default allow := false"), []byte("default allow := true"), 1)
		}
		return data
	})
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	p.n.Write([]byte("x"))
	w.Header().Set("Content-Type", meshpolicy.BundleContentType)
	w.Write(out)
}

// rewriteBundle rewrites each file of a .tar.gz through f.
func rewriteBundle(b []byte, f func(name string, data []byte) []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(zr)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		data = f(h.Name, data)
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		tw.Write(data)
	}
	tw.Close()
	zw.Close()
	return buf.Bytes(), nil
}

// TestPushRefusesBadBundles: invalid Rego, a data.json that is not an
// object and a bundle over the size bound are refused with clear errors;
// nothing is stored and the previous revision is still served.
func TestPushRefusesBadBundles(t *testing.T) {
	e := startServerWith(t, func(c *server.Config) { c.BundleAddr = "127.0.0.1:0"; c.BundleMaxSize = 64 << 10 })
	ctx := tctx(t, time.Minute)
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: authzFiles("alice")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		files []*operatorpb.PolicyFile
		want  string
	}{
		{"invalid rego", []*operatorpb.PolicyFile{{Path: "authz.rego", Content: []byte("package authz\n\nallow if {\n  input.user ==\n")}}, "authz.rego:"},
		{"compile error", []*operatorpb.PolicyFile{{Path: "authz.rego", Content: []byte("package authz\n\nallow if unknown_fn(input.user)\n")}}, "authz.rego:3"},
		{"data not an object", append(authzFiles("x")[:1], &operatorpb.PolicyFile{Path: "authz/data.json", Content: []byte(`["alice"]`)}), "authz/data.json: data must be a JSON object"},
		{"too big", append(authzFiles("x")[:1], &operatorpb.PolicyFile{Path: "big/data.json", Content: []byte(`{"x":"` + strings.Repeat("a", 70<<10) + `"}`)}), "over the bound"},
		{"bad name", nil, "bundle name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "authz"
			if tc.files == nil {
				name, tc.files = "Bad/Name", authzFiles("x")
			}
			_, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: name, Files: tc.files})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Fatalf("push: %v, want InvalidArgument with %q", err, tc.want)
			}
			list, err := e.op.ListBundles(ctx, &operatorpb.ListBundlesRequest{Name: "authz"})
			if err != nil || len(list.Bundles) != 1 || list.Bundles[0].Revision != 1 {
				t.Fatalf("after a refused push: %v %v", list, err)
			}
		})
	}
	got, err := e.op.GetBundle(ctx, &operatorpb.GetBundleRequest{Name: "authz"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.op.GetOPAKey(ctx, &operatorpb.GetOPAKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := meshpolicy.Verify(bytes.NewReader(got.Bundle), []byte(key.PublicKeyPem), key.Kid); err != nil {
		t.Fatalf("the stored revision does not verify: %v", err)
	}
}
