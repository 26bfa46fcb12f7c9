package main

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

// TestJoinTokens: token create --quiet prints the bare token for scripts;
// a malformed token is refused before any server is asked, saying so; a
// token of the wrong kind is refused by the server with a message that
// names the possibility without telling whether the token exists.
func TestJoinTokens(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	addr := "unix://" + sock
	ports := freePorts(t, 2)
	kek := filepath.Join(t.TempDir(), "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org", "--kek-file", kek)
	waitLeader(t, env, sock, "s1")
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})
	bundle := filepath.Join(dataDir, "server", "bundle.pem")

	quiet := func(kind string) string {
		t.Helper()
		r := mustSucceed(t, env, "token", "create", "--kind", kind, "--quiet", "--addr", addr)
		tok := strings.TrimSuffix(r.stdout, "\n")
		if strings.ContainsAny(tok, " \t\n") || server.CheckJoinToken(tok) != nil || r.stderr != "" {
			t.Fatalf("token create --quiet printed %q (stderr %q), want the bare token and a newline", r.stdout, r.stderr)
		}
		return tok
	}
	agentTok, serverTok := quiet("agent"), quiet("server")
	if r := meshca(t, env, "token", "create", "--quiet", "--output", "json", "--addr", addr); r.code != exitUsage || !strings.Contains(r.stderr, "--quiet and --output json exclude each other") {
		t.Errorf("--quiet --output json: exit %d, stderr %q", r.code, r.stderr)
	}

	// A malformed token: refused before the server is asked.
	agentDir := shortTempDir(t)
	agentArgs := []string{"agent", "--server", ports[1], "--trust-bundle", bundle, "--data-dir", agentDir, "--socket", filepath.Join(agentDir, "w.sock")}
	r := meshca(t, map[string]string{"HOME": env["HOME"], envJoinToken: agentTok[:20]}, agentArgs...)
	if r.code != exitUsage || !strings.Contains(r.stderr, "malformed join token") || !strings.Contains(r.stderr, "this one is 20") || strings.Contains(r.stderr, agentTok[:20]) {
		t.Errorf("agent with a truncated token: exit %d, stderr %q", r.code, r.stderr)
	}

	// A server token given to an agent.
	ag := startBackground(t, map[string]string{"HOME": env["HOME"], envJoinToken: serverTok}, agentArgs...)
	ag.wantCode = exitError
	if code := ag.wait(t, 30*time.Second); code != exitError || !strings.Contains(ag.stderr.String(), "unknown, already used, expired, or not an agent token") {
		t.Errorf("agent with a server token: exit %d, stderr:\n%s", code, ag.stderr)
	}
	if strings.Contains(ag.stderr.String(), serverTok) || strings.Contains(srv.stderr.String(), serverTok) {
		t.Error("the server token was logged")
	}

	// An agent token given to a joining server.
	s2 := shortTempDir(t)
	ports2 := freePorts(t, 2)
	r = meshca(t, env, "server", "--data-dir", s2, "--node-id", "s2", "--raft-addr", ports2[0], "--api-addr", ports2[1],
		"--join", ports[1], "--join-token", agentTok, "--trust-bundle", bundle, "--kek-file", kek)
	if r.code != exitError || !strings.Contains(r.stderr, "unknown, already used, expired, or not a server token") || strings.Contains(r.stderr, agentTok) {
		t.Errorf("join with an agent token: exit %d, stderr %q", r.code, r.stderr)
	}

	// Both tokens are still good for their own kind: a refusal of the
	// wrong kind consumes nothing.
	ag = startBackground(t, map[string]string{"HOME": env["HOME"], envJoinToken: agentTok}, agentArgs...)
	waitFor(t, 20*time.Second, "the agent attests with its own token", func() (bool, string) {
		ag.running(t)
		r := meshca(t, env, "node", "list", "--addr", addr)
		return strings.Contains(r.stdout, "join_token"), r.stdout + r.stderr
	})
}

// A connection to the Raft port without a server certificate is refused
// and logged as such, not as a Raft decoding error.
func TestRaftPortRefusalIsLogged(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	ports := freePorts(t, 2)
	srv := startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org")
	waitLeader(t, env, sock, "s1")
	c, err := tls.Dial("tcp", ports[0], &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err == nil {
		// TLS 1.3: the server's refusal of a client without a
		// certificate arrives after the client's side of the handshake.
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	}
	waitFor(t, 10*time.Second, "the refusal is logged", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), "refused a Raft connection: TLS handshake failed"), srv.stderr.String()
	})
	if strings.Contains(srv.stderr.String(), "failed to decode incoming command") {
		t.Errorf("the refusal is logged as a Raft decoding error:\n%s", srv.stderr)
	}
}
