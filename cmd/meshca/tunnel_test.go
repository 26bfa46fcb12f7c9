package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/server"
)

// childProc is a meshca process of a test, logging to a file.
type childProc struct {
	name, logPath string
	cmd           *exec.Cmd
	done          chan struct{}
}

func startChild(t *testing.T, bin, dir, name string, extraEnv []string, args ...string) *childProc {
	t.Helper()
	p := &childProc{name: name, logPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = processEnv(append([]string{"HOME=" + dir}, extraEnv...)...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("log of %s:\n%s", p.name, b)
		}
	})
	return p
}

func (p *childProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// plainEcho is a plain TCP service of the test: it sends back what it
// reads.
func plainEcho(t *testing.T) string {
	t.Helper()
	return testtool.ServeTCP(t, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		_ = c.(*net.TCPConn).CloseWrite()
	})
}

// echoThrough sends data through addr and returns what came back, or an
// error if the connection closed before the echo.
func echoThrough(addr string, data []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		_, _ = c.Write(data)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err == nil && len(got) == 0 {
		err = io.EOF
	}
	return got, err
}

// TestTunnelProcesses: a server, two agents and two tunnels, each its own
// meshca process, and two plain TCP services. Service A calls service B
// through A's outbound and B's inbound tunnel: bytes arrive intact both
// ways and B's tunnel logs A's SPIFFE ID; after meshca policy push denying
// A, A's next connection is refused within 2 s; after meshca policy
// rollback it works again.
func TestTunnelProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five processes")
	}
	t.Parallel()
	bin := meshcaBinary(t)
	base := shortTempDir(t)
	kek := filepath.Join(base, "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 6)
	srvDir := filepath.Join(base, "s1")
	adminSock := filepath.Join(srvDir, server.AdminSocketName)
	addr := "unix://" + adminSock
	srv := startChild(t, bin, base, "server", nil, "server", "--data-dir", srvDir, "--node-id", "s1", "--raft-addr", ports[0],
		"--api-addr", ports[1], "--kek-file", kek, "--bootstrap", "--trust-domain", "example.org")
	waitFor(t, 20*time.Second, "the server bootstraps", func() (bool, string) {
		return strings.Contains(srv.log(), bootstrappedLog), "no " + bootstrappedLog
	})

	const idA, idB = "spiffe://example.org/ns/a/sa/client", "spiffe://example.org/ns/b/sa/server"
	policyDir := filepath.Join(base, "policy")
	writePolicy := func(allowed ...string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(policyDir, "envoy", "authz"), 0o755); err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, policyDir, "mesh.rego", []byte("package envoy.authz\n\ndefault allow := false\n\nallow if input.attributes.source.principal in data.envoy.authz.allowed\n"))
		data, _ := json.Marshal(map[string]any{"allowed": append([]string{}, allowed...)})
		writeTestFile(t, filepath.Join(policyDir, "envoy", "authz"), "data.json", data)
	}
	writePolicy(idA)
	mustRunBin(t, bin, "policy", "push", policyDir, "--name", "mesh", "--addr", addr)
	keyFile := filepath.Join(base, "opa-key.pem")
	r := mustRunBin(t, bin, "bundle", "show", "--opa-key", "--addr", addr)
	writeTestFile(t, base, "opa-key.pem", []byte(r.stdout))

	bundle := filepath.Join(srvDir, "server", "bundle.pem")
	agentSock := map[string]string{}
	for _, w := range []struct{ name, id string }{{"a", idA}, {"b", idB}} {
		var tok tokenReport
		if err := json.Unmarshal([]byte(mustRunBin(t, bin, "token", "create", "--addr", addr, "--output", "json").stdout), &tok); err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256([]byte(tok.Token))
		agentID := "spiffe://example.org/meshca/agent/join_token/" + hex.EncodeToString(h[:16])
		mustRunBin(t, bin, "entry", "create", "--spiffe-id", w.id, "--parent-id", agentID, "--selector", "unix:uid:"+strconv.Itoa(os.Getuid()), "--addr", addr)
		dir := filepath.Join(base, "agent-"+w.name)
		agentSock[w.name] = filepath.Join(dir, "a.sock")
		startChild(t, bin, base, "agent-"+w.name, []string{envJoinToken + "=" + tok.Token}, "agent", "--server", ports[1],
			"--trust-bundle", bundle, "--data-dir", dir, "--socket", agentSock[w.name])
	}

	serviceB := plainEcho(t)
	inB, outA, httpB, httpA := ports[2], ports[3], ports[4], ports[5]
	tunB := startChild(t, bin, base, "tunnel-b", nil, "tunnel", "--socket", agentSock["b"], "--policy-bundle", "mesh",
		"--policy-key-file", keyFile, "--inbound", inB+"="+serviceB, "--http-addr", httpB, "--handshake-timeout", "2s")
	// A's tunnel from a config file.
	cfgA := writeTestFile(t, base, "tunnel-a.json", []byte(`{
  "socket": "`+agentSock["a"]+`",
  "outbound": [{"name": "to-b", "listen": "`+outA+`", "remote": "`+inB+`", "expect_ids": ["`+idB+`"]}],
  "http_addr": "`+httpA+`"
}`))
	startChild(t, bin, base, "tunnel-a", nil, "tunnel", "--config", cfgA)
	for _, h := range []string{httpB, httpA} {
		waitFor(t, 30*time.Second, "tunnel on "+h+" ready", func() (bool, string) {
			resp, err := http.Get("http://" + h + "/readyz")
			if err != nil {
				return false, err.Error()
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode == 200, string(b)
		})
	}

	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	got, err := echoThrough(outA, data)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("A→B: %d of %d bytes back: %v", len(got), len(data), err)
	}
	waitFor(t, 10*time.Second, "B's tunnel logs A's ID", func() (bool, string) {
		l := tunB.log()
		return strings.Contains(l, "audit=true") && strings.Contains(l, "actor="+idA) && strings.Contains(l, "peer_id="+idA), ""
	})

	writePolicy()
	mustRunBin(t, bin, "policy", "push", policyDir, "--name", "mesh", "--addr", addr)
	pushed := time.Now()
	for {
		if _, err := echoThrough(outA, []byte("hi")); err != nil {
			break
		}
		if time.Since(pushed) > 2*time.Second {
			t.Fatal("A still reaches B 2 s after the push that denies it")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("refused %s after meshca policy push returned", time.Since(pushed))
	mustRunBin(t, bin, "policy", "rollback", "--name", "mesh", "--revision", "1", "--addr", addr)
	waitFor(t, 10*time.Second, "A reaches B after the rollback", func() (bool, string) {
		got, err := echoThrough(outA, []byte("again"))
		return err == nil && string(got) == "again", ""
	})
}

// TestTunnelBadInput: bad flags and config files are refused as usage
// errors naming the problem, before anything listens.
func TestTunnelBadInput(t *testing.T) {
	env := testEnv(t)
	dir := t.TempDir()
	unknown := writeTestFile(t, dir, "unknown.json", []byte(`{"socket": "/tmp/x.sock", "inbound": [{"listen": "127.0.0.1:0", "target": "127.0.0.1:1", "colour": "blue"}]}`))
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no listener", []string{"tunnel", "--socket", "/tmp/x.sock"}, "no listener"},
		{"no socket", []string{"tunnel", "--outbound", "127.0.0.1:0=127.0.0.1:1,expect=spiffe://example.org/b"}, "socket"},
		{"bad inbound", []string{"tunnel", "--socket", "/tmp/x.sock", "--inbound", "127.0.0.1:0"}, "LISTEN=TARGET"},
		{"bad mode", []string{"tunnel", "--socket", "/tmp/x.sock", "--inbound", "127.0.0.1:0=127.0.0.1:1,mode=LAX"}, "STRICT or PERMISSIVE"},
		{"no policy", []string{"tunnel", "--socket", "/tmp/x.sock", "--inbound", "127.0.0.1:0=127.0.0.1:1"}, "--policy-bundle"},
		{"outbound without expected ID", []string{"tunnel", "--socket", "/tmp/x.sock", "--outbound", "127.0.0.1:0=127.0.0.1:1"}, "expect=ID"},
		{"bad expected ID", []string{"tunnel", "--socket", "/tmp/x.sock", "--outbound", "127.0.0.1:0=127.0.0.1:1,expect=http://x"}, "expected ID"},
		{"bad timeout", []string{"tunnel", "--socket", "/tmp/x.sock", "--outbound", "127.0.0.1:0=127.0.0.1:1,expect=spiffe://example.org/b", "--handshake-timeout", "-1s"}, "positive duration"},
		{"key file without key", []string{"tunnel", "--socket", "/tmp/x.sock", "--inbound", "127.0.0.1:0=127.0.0.1:1", "--policy-bundle", "mesh", "--policy-key-file", unknown}, "PUBLIC KEY"},
		{"unknown config key", []string{"tunnel", "--config", unknown}, "unknown key"},
	} {
		r := meshca(t, env, c.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want usage error with %q", c.name, r.code, r.stderr, c.want)
		}
	}
}

// FuzzTunnelListenerFlag: any --inbound or --outbound value parses into a
// listener with both addresses or is refused, never a panic.
func FuzzTunnelListenerFlag(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8443=127.0.0.1:8080", "0.0.0.0:1=h:2,mode=PERMISSIVE,name=x", ":9=b:8443,expect=spiffe://example.org/b,policy", "=", ",", "a=b,c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if in, err := parseInboundFlag(s); err == nil && (in.Listen == "" || in.Target == "") {
			t.Fatalf("parseInboundFlag(%q) = %+v", s, in)
		}
		if o, err := parseOutboundFlag(s); err == nil && (o.Listen == "" || o.Remote == "") {
			t.Fatalf("parseOutboundFlag(%q) = %+v", s, o)
		}
	})
}

// TestTunnelExamples: every tunnel configuration in deploy/examples loads
// and passes the checks (with a real OPA key beside it), and every example
// policy builds into a signed bundle.
func TestTunnelExamples(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	configs, _ := filepath.Glob("../../deploy/examples/tunnel/*/*.json")
	if len(configs) < 2 {
		t.Fatalf("example configurations: %v", configs)
	}
	a := &app{getenv: func(string) string { return "" }}
	for _, path := range configs {
		dir := t.TempDir()
		cfgPath := filepath.Join(dir, filepath.Base(path))
		writeTestFile(t, dir, filepath.Base(path), readFile(t, path))
		writeTestFile(t, dir, "opa-key.pem", append([]byte("# kid: k1\n# algorithm: ES256\n"), policy.PublicKeyPEM(pub)...))
		var c tunnelConfig
		if err := loadConfigFile(cfgPath, &c); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		resolveConfigPaths(cfgPath, &c.Socket, &c.PolicyKeyFile, &c.AuditDir)
		c.LogLevel, c.HandshakeTimeout, c.DialTimeout = "info", "10s", "5s"
		if _, err := a.tunnelSettings(c); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	for _, dir := range []string{"../../deploy/examples/tunnel/tenant-isolation", "../../deploy/examples/tunnel/egress-gateway/policy"} {
		files, err := policy.ReadFiles(dir, policy.DefaultMaxSize)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := policy.Build(files, policy.BuildOptions{Revision: 1, Key: key, KeyID: "k1"}); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
	}
}

// TestTunnelDemoScript runs deploy/examples/tunnel/demo.sh with the binary
// of this checkout: one call is allowed (the service's page comes back),
// one is denied, and both decisions are in the tunnel's audit lines. It
// uses the script's fixed ports, so it does not run in parallel.
func TestTunnelDemoScript(t *testing.T) {
	if testing.Short() {
		t.Skip("starts meshca dev, a tunnel and a python3 HTTP server")
	}
	for _, tool := range []string{"python3", "curl", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required on CI: %v", tool, err)
			}
			t.Skipf("%s not found: %v", tool, err)
		}
	}
	bin := meshcaBinary(t)
	cmd := exec.Command("sh", "../../deploy/examples/tunnel/demo.sh")
	cmd.Env = processEnv("MESHCA="+bin, "HOME="+t.TempDir())
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("demo.sh did not finish within 2 minutes:\n%s", out)
	}
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	s := string(out)
	allowed := strings.Index(s, "hello from the orders service")
	denied := strings.Index(s, "(refused)")
	if allowed < 0 || denied < allowed || !strings.Contains(s, "decision=allow") || !strings.Contains(s, `reason="denied by the policy"`) {
		t.Fatalf("demo.sh output:\n%s", s)
	}
}
