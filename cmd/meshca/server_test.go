package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writers of a
// running server (its logger, Raft's logger).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// shortTempDir makes a directory with a short path, for data directories
// that hold Unix sockets (at most ~104 bytes), removed when the test ends.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "m")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// inProcessServer is a `meshca server` running in a goroutine of the test.
type inProcessServer struct {
	sock   string
	stderr *syncBuffer
	cancel context.CancelFunc
	done   chan int // the exit code, when the command returns
}

// startServer runs `meshca server args...` in-process until stop or the
// end of the test.
func startServer(t *testing.T, env map[string]string, sock string, args ...string) *inProcessServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &inProcessServer{sock: sock, stderr: &syncBuffer{}, cancel: cancel, done: make(chan int, 1)}
	go func() {
		var stdout syncBuffer
		s.done <- runContext(ctx, append([]string{"server"}, args...), &stdout, s.stderr, func(k string) string { return env[k] })
	}()
	t.Cleanup(func() {
		if code, ok := s.stop(t); ok && code != exitOK && !t.Failed() {
			t.Errorf("meshca server exited %d\nstderr:\n%s", code, s.stderr)
		}
	})
	return s
}

// stop cancels the server and waits for its exit code; ok is false if it
// had already been collected.
func (s *inProcessServer) stop(t *testing.T) (code int, ok bool) {
	t.Helper()
	s.cancel()
	select {
	case code, ok = <-s.done:
		if ok {
			close(s.done)
		}
		return code, ok
	case <-time.After(15 * time.Second):
		t.Fatalf("meshca server did not stop within 15 s of its context ending\nstderr:\n%s", s.stderr)
	}
	return 0, false
}

// waitFor polls cond every 50 ms until it holds or timeout passes, then
// fails the test with what cond last said.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for {
		ok, msg := cond()
		if ok {
			return time.Since(start)
		}
		last = msg
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s; last: %s", what, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// statusOf runs `meshca status --output json` in-process.
func statusOf(t *testing.T, env map[string]string, sock string) (statusReport, result) {
	t.Helper()
	r := meshca(t, env, "status", "--output", "json", "--addr", "unix://"+sock, "--timeout", "5s")
	var st statusReport
	if r.code == exitOK {
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("status --output json: %v\n%s", err, r.stdout)
		}
	}
	return st, r
}

// waitLeader waits until the server on sock leads and returns its status.
func waitLeader(t *testing.T, env map[string]string, sock, nodeID string) statusReport {
	t.Helper()
	var st statusReport
	waitFor(t, 15*time.Second, "server "+nodeID+" leads", func() (bool, string) {
		var r result
		st, r = statusOf(t, env, sock)
		return r.code == exitOK && st.RaftState == "Leader" && st.LeaderID == nodeID, r.stdout + r.stderr
	})
	return st
}

// bootstrappedLog is what a bootstrapping server logs once the new
// cluster's trust domain and authorities are in the replicated state.
const bootstrappedLog = "cluster bootstrapped"

// testEnv is an environment for in-process commands in which the default
// data directory is a temporary one, never the user's.
func testEnv(t *testing.T) map[string]string {
	return map[string]string{"HOME": t.TempDir()}
}

func TestServerBootstrapOperateAndSnapshot(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	addr := "unix://" + sock
	// The configuration file gives everything; the --node-id flag overrides it.
	cfg := writeTestFile(t, t.TempDir(), "server.json", []byte(`{
  "data_dir": "`+dataDir+`",
  "node_id": "from-file",
  "raft_addr": "127.0.0.1:0",
  "api_addr": "127.0.0.1:0",
  "bootstrap": true,
  "trust_domain": "example.org",
  "log_level": "debug"
}`))
	srv := startServer(t, env, sock, "--config", cfg, "--node-id", "s1")
	st := waitLeader(t, env, sock, "s1")
	// The new leader writes the trust domain and its authorities into the
	// replicated state; wait until it has, so that the state hash is stable.
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})
	st, _ = statusOf(t, env, sock)
	if st.NodeID != "s1" || st.TrustDomain != "example.org" || st.StateHash == "" {
		t.Errorf("status = %+v, want node s1 of example.org with a state hash", st)
	}

	// Startup: the KEK warning, the addresses and the trust bundle.
	logs := srv.stderr.String()
	for _, want := range []string{devOnlyWarning, filepath.Join(dataDir, "kek"), "meshca server started", sock, "raft_addr=127.0.0.1:", "api_addr=127.0.0.1:"} {
		if !strings.Contains(logs, want) {
			t.Errorf("server log does not mention %q:\n%s", want, logs)
		}
	}
	checkMode(t, filepath.Join(dataDir, "kek"), modePrivate)
	checkMode(t, sock, modePrivate)
	bundlePath := filepath.Join(dataDir, "server", "bundle.pem")
	checkMode(t, bundlePath, modePublic)
	roots, err := server.LoadTrustBundle(bundlePath)
	if err != nil || len(roots) != 1 || len(roots[0].URIs) != 1 || roots[0].URIs[0].String() != "spiffe://example.org" {
		t.Errorf("bundle.pem: %v, %d roots", err, len(roots))
	}

	// A server token, as JSON; the token is a secret that never reaches the logs.
	r := mustSucceed(t, env, "token", "create", "--kind", "server", "--addr", addr, "--output", "json")
	var tok tokenReport
	if err := json.Unmarshal([]byte(r.stdout), &tok); err != nil {
		t.Fatalf("token create --output json: %v\n%s", err, r.stdout)
	}
	if len(tok.Token) < 40 || tok.Kind != "server" || time.Until(tok.Expires) < 9*time.Minute || time.Until(tok.Expires) > 11*time.Minute {
		t.Errorf("token = %+v, want a server token expiring in 10 minutes", tok)
	}
	if strings.Contains(srv.stderr.String(), tok.Token) {
		t.Errorf("the server logged the join token")
	}
	// The table form, with MESHCA_ADDR instead of --addr.
	envAddr := map[string]string{"HOME": env["HOME"], envAddr: addr}
	r = mustSucceed(t, envAddr, "token", "create", "--ttl", "90s")
	if !strings.Contains(r.stdout, "agent") || !strings.Contains(r.stdout, "single use") {
		t.Errorf("token create:\n%s", r.stdout)
	}

	st, _ = statusOf(t, env, sock)
	r = mustSucceed(t, env, "status", "--addr", addr)
	for _, want := range []string{"s1", "example.org", "Leader", "(this server)", st.StateHash, "sign queue", "CSRs admitted, not yet signed"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status does not show %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(mustSucceed(t, env, "status", "--addr", addr, "--output", "json").stdout, `"sign_queue_depth": 0`) {
		t.Error("status --output json has no sign_queue_depth")
	}
	r = mustSucceed(t, env, "operator", "raft", "list-peers", "--addr", addr)
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 ||
		strings.Join(strings.Fields(lines[0]), " ") != "ID ADDRESS SUFFRAGE LEADER" ||
		!strings.HasPrefix(lines[1], "s1 ") || !strings.Contains(lines[1], "Voter") || !strings.HasSuffix(lines[1], "yes") {
		t.Errorf("list-peers:\n%s", r.stdout)
	}

	// Membership changes the server refuses, with its reason.
	r = meshca(t, env, "operator", "raft", "remove-peer", "nope", "--addr", addr)
	if r.code != exitError || !strings.Contains(r.stderr, `remove peer nope: no peer "nope" in the Raft configuration`) {
		t.Errorf("remove-peer of an unknown peer: exit %d, stderr %q", r.code, r.stderr)
	}
	r = meshca(t, env, "operator", "raft", "remove-peer", "s1", "--addr", addr)
	if r.code != exitError || !strings.Contains(r.stderr, "remove peer s1: s1 is the only voter of the cluster") || strings.Contains(r.stderr, "{[]}") {
		t.Errorf("remove-peer of the last voter: exit %d, stderr %q", r.code, r.stderr)
	}
	if st, _ := statusOf(t, env, sock); st.RaftState != "Leader" {
		t.Errorf("after a refused remove-peer of the last voter, s1 is %s, want still Leader", st.RaftState)
	}
	r = meshca(t, env, "operator", "raft", "add-voter", "s9", "no-port", "--addr", addr)
	if r.code != exitError || !strings.Contains(r.stderr, "add voter s9: ") || !strings.Contains(r.stderr, "host:port") {
		t.Errorf("add-voter with a bad address: exit %d, stderr %q", r.code, r.stderr)
	}

	// Snapshot save, then restore of the same file: the same state.
	snapDir := t.TempDir()
	snap := filepath.Join(snapDir, "state.snap")
	before, _ := statusOf(t, env, sock)
	r = mustSucceed(t, env, "operator", "raft", "snapshot", "save", snap, "--addr", addr)
	checkMode(t, snap, modePrivate)
	data := readFile(t, snap)
	if !strings.Contains(r.stdout, snap) || !strings.Contains(r.stdout, "bytes") {
		t.Errorf("snapshot save:\n%s", r.stdout)
	}
	if entries, _ := os.ReadDir(snapDir); len(entries) != 1 {
		t.Errorf("snapshot save left %d files, want only the snapshot", len(entries))
	}
	r = mustSucceed(t, env, "operator", "raft", "snapshot", "restore", snap, "--addr", addr, "--output", "json")
	var restored snapshotReport
	if err := json.Unmarshal([]byte(r.stdout), &restored); err != nil {
		t.Fatalf("snapshot restore --output json: %v\n%s", err, r.stdout)
	}
	if restored.StateHash != before.StateHash || restored.Bytes != int64(len(data)) {
		t.Errorf("restore reports hash %s (%d bytes), want %s (%d bytes)", restored.StateHash, restored.Bytes, before.StateHash, len(data))
	}
	after, _ := statusOf(t, env, sock)
	if after.StateHash != before.StateHash {
		t.Errorf("state hash after restoring the same snapshot = %s, want %s", after.StateHash, before.StateHash)
	}

	// A corrupt copy is refused whole and changes nothing.
	bad := append([]byte(nil), data...)
	bad[len(bad)/2] ^= 0x01
	badFile := writeTestFile(t, snapDir, "bad.snap", bad)
	r = meshca(t, env, "operator", "raft", "snapshot", "restore", badFile, "--addr", addr)
	if r.code != exitError || !strings.HasPrefix(r.stderr, "meshca: restore snapshot "+badFile+": ") {
		t.Errorf("restore of a corrupt snapshot: exit %d, stderr %q; want exit 1 with the server's reason", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "rpc error") || strings.Contains(r.stderr, "desc =") {
		t.Errorf("the error shows gRPC's wrapping: %q", r.stderr)
	}
	t.Logf("corrupt snapshot: %s", strings.TrimSpace(r.stderr))
	if st, _ := statusOf(t, env, sock); st.StateHash != before.StateHash {
		t.Errorf("state hash after a refused restore = %s, want %s", st.StateHash, before.StateHash)
	}

	// Cancelling the context (as SIGTERM would) stops the server cleanly.
	if code, _ := srv.stop(t); code != exitOK {
		t.Errorf("meshca server exited %d, want 0\nstderr:\n%s", code, srv.stderr)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("admin socket still there after shutdown: %v", err)
	}

	// Another KEK does not open it, and says so.
	otherKEK := filepath.Join(t.TempDir(), "other-kek")
	if _, err := ca.CreateKEKFile(otherKEK); err != nil {
		t.Fatal(err)
	}
	r = meshca(t, env, "server", "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--kek-file", otherKEK)
	if r.code != exitError || !strings.Contains(r.stderr, "does not open the server identity in "+dataDir) {
		t.Errorf("restart with another KEK: exit %d, stderr %q", r.code, r.stderr)
	}

	// It restarts from its data directory with neither --bootstrap nor --join.
	srv = startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0")
	if st := waitLeader(t, env, sock, "s1"); st.StateHash != before.StateHash {
		t.Errorf("state hash after restart = %s, want %s", st.StateHash, before.StateHash)
	}
	if !strings.Contains(srv.stderr.String(), "using the key-encryption key") {
		t.Errorf("restart does not warn about the KEK in the data directory:\n%s", srv.stderr)
	}
}

// selfSignedBundle writes a PEM bundle with one CA certificate naming
// spiffe://example.org, as a --trust-bundle that parses.
func selfSignedBundle(t *testing.T, dir string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org"}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return writeTestFile(t, dir, "bundle.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// wellFormedToken has the form of a join token and is no server's.
var wellFormedToken = strings.Repeat("A", server.JoinTokenLen)

func TestServerBadInput(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	kek := filepath.Join(tmp, "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	bundle := selfSignedBundle(t, tmp)
	unknownKey := writeTestFile(t, tmp, "unknown.json", []byte(`{"node_id": "s1", "bogus_key": 1}`))
	notJSON := writeTestFile(t, tmp, "bad.json", []byte(`node_id: s1`))
	trailing := writeTestFile(t, tmp, "trailing.json", []byte(`{"node_id": "s1"} {}`))
	addrs := []string{"--raft-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"}
	secret := filepath.Join(tmp, "secret")
	writeJoinSecret(t, secret, newJoinSecret(t))
	openSecret := writeTestFile(t, tmp, "open-secret", []byte(newJoinSecret(t)+"\n"))
	if err := os.Chmod(openSecret, 0o644); err != nil {
		t.Fatal(err)
	}
	shortSecret := filepath.Join(tmp, "short-secret")
	writeJoinSecret(t, shortSecret, "c2hvcnQ=")

	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"fail/no-identity", append([]string{"--node-id", "s1", "--kek-file", kek}, addrs...), exitError,
			[]string{"no identity yet", "--bootstrap", "--join"}},
		{"fail/no-identity-no-kek", append([]string{"--node-id", "s1"}, addrs...), exitError,
			[]string{"no identity yet", "--bootstrap", "--join", "--kek-file"}},
		{"fail/bootstrap-and-join", append([]string{"--node-id", "s1", "--bootstrap", "--trust-domain", "example.org",
			"--join", "127.0.0.1:1", "--join-token", wellFormedToken, "--trust-bundle", bundle}, addrs...), exitUsage,
			[]string{"--bootstrap and --join exclude each other"}},
		{"fail/bootstrap-without-trust-domain", append([]string{"--node-id", "s1", "--bootstrap"}, addrs...), exitUsage,
			[]string{"--bootstrap needs --trust-domain"}},
		{"fail/bad-trust-domain", append([]string{"--node-id", "s1", "--bootstrap", "--trust-domain", "Bad Domain"}, addrs...), exitUsage,
			[]string{"--trust-domain"}},
		{"fail/join-without-token", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--trust-bundle", bundle}, addrs...), exitUsage,
			[]string{"--join needs --join-token", "meshca token create --kind server"}},
		{"fail/join-without-bundle", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--join-token", wellFormedToken}, addrs...), exitUsage,
			[]string{"--join with a token needs --trust-bundle", "bundle.pem"}},
		{"fail/join-without-token-or-secret", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1"}, addrs...), exitUsage,
			[]string{"--join needs --join-token", "--server-join-secret-file"}},
		{"fail/secret-join-without-trust-domain", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--server-join-secret-file", secret}, addrs...), exitUsage,
			[]string{"needs --trust-domain"}},
		{"fail/secret-readable-by-others", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--trust-domain", "example.org", "--server-join-secret-file", openSecret, "--kek-file", kek}, addrs...), exitUsage,
			[]string{"--server-join-secret-file", "readable by its owner only"}},
		{"fail/secret-too-short", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--trust-domain", "example.org", "--server-join-secret-file", shortSecret, "--kek-file", kek}, addrs...), exitUsage,
			[]string{"line 1", "at least 32 random bytes"}},
		{"fail/bootstrap-node-and-bootstrap", append([]string{"--node-id", "s1", "--bootstrap", "--bootstrap-node", "s1", "--trust-domain", "example.org"}, addrs...), exitUsage,
			[]string{"--bootstrap and --bootstrap-node exclude each other"}},
		{"fail/bootstrap-node-others-without-join", append([]string{"--node-id", "s2", "--bootstrap-node", "s1", "--trust-domain", "example.org"}, addrs...), exitUsage,
			[]string{"--bootstrap-node s1", "--join"}},
		{"fail/bad-raft-bind", append([]string{"--node-id", "s1", "--bootstrap", "--trust-domain", "example.org", "--raft-bind", "8300"}, addrs...), exitUsage,
			[]string{"--raft-bind \"8300\""}},
		{"fail/join-without-kek", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--join-token", wellFormedToken, "--trust-bundle", bundle}, addrs...), exitError,
			[]string{"joining server needs the cluster's key-encryption key", "--kek-file"}},
		{"fail/malformed-token", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--join-token", "abc", "--trust-bundle", bundle}, addrs...), exitUsage,
			[]string{"the server join token (--join-token or $MESHCA_JOIN_TOKEN): malformed join token: a meshca join token is 43 characters of base64url", "this one is 3"}},
		{"fail/token-without-join", append([]string{"--node-id", "s2", "--join-token", wellFormedToken}, addrs...), exitUsage,
			[]string{"only used with --join"}},
		{"fail/join-timeout-zero", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--join-token", wellFormedToken, "--trust-bundle", bundle, "--join-timeout", "0s"}, addrs...), exitUsage,
			[]string{"--join-timeout \"0s\"", "1s to 24h"}},
		{"fail/join-timeout-not-a-duration", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--join-token", wellFormedToken, "--trust-bundle", bundle, "--join-timeout", "forever"}, addrs...), exitUsage,
			[]string{"join-timeout"}},
		{"fail/join-timeout-without-join", append([]string{"--node-id", "s2", "--join-timeout", "1m"}, addrs...), exitUsage,
			[]string{"only used with --join"}},
		{"fail/bad-bundle", append([]string{"--node-id", "s2", "--join", "127.0.0.1:1", "--join-token", wellFormedToken, "--trust-bundle", kek, "--kek-file", kek}, addrs...), exitError,
			[]string{"trust bundle", "no certificate"}},
		{"fail/missing-node-id", addrs, exitUsage, []string{"--node-id is required"}},
		{"fail/bad-node-id", append([]string{"--node-id", "a/b"}, addrs...), exitUsage, []string{"--node-id \"a/b\""}},
		{"fail/missing-raft-addr", []string{"--node-id", "s1", "--api-addr", "127.0.0.1:0"}, exitUsage, []string{"--raft-addr is required"}},
		{"fail/wildcard-addr", []string{"--node-id", "s1", "--raft-addr", "0.0.0.0:8300", "--api-addr", "127.0.0.1:0"}, exitUsage, []string{"not a wildcard"}},
		{"fail/bad-log-level", append([]string{"--node-id", "s1", "--log-level", "loud"}, addrs...), exitUsage, []string{"--log-level \"loud\""}},
		{"fail/config-unknown-key", []string{"--config", unknownKey}, exitUsage, []string{"unknown key \"bogus_key\"", unknownKey, "node_id"}},
		{"fail/negative-node-rate", []string{"--node-id", "n1", "--raft-addr", "127.0.0.1:1", "--api-addr", "127.0.0.1:2", "--bootstrap", "--trust-domain", "example.org", "--node-sign-rate", "-1"}, exitUsage, []string{"--node-sign-rate"}},
		{"fail/admission-wait-too-long", []string{"--node-id", "n1", "--raft-addr", "127.0.0.1:1", "--api-addr", "127.0.0.1:2", "--bootstrap", "--trust-domain", "example.org", "--admission-wait", "2h"}, exitUsage, []string{"--admission-wait"}},
		{"fail/pprof-not-loopback", []string{"--node-id", "n1", "--raft-addr", "127.0.0.1:1", "--api-addr", "127.0.0.1:2", "--bootstrap", "--trust-domain", "example.org", "--pprof-addr", "0.0.0.0:6060"}, exitUsage, []string{"loopback"}},
		{"fail/config-not-json", []string{"--config", notJSON}, exitUsage, []string{"not a valid JSON object"}},
		{"fail/config-trailing-data", []string{"--config", trailing}, exitUsage, []string{"after the JSON object"}},
		{"fail/config-missing", []string{"--config", filepath.Join(tmp, "nope.json")}, exitError, []string{"config file", "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dataDir := shortTempDir(t)
			env := testEnv(t)
			before := treeSnapshot(t, dataDir)
			r := meshca(t, env, append([]string{"server", "--data-dir", dataDir}, tc.args...)...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "meshca: ") && !strings.Contains(r.stderr, "\nmeshca: ") {
				t.Errorf("stderr has no \"meshca: \" error line: %q", r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr = %q, want it to contain %q", r.stderr, w)
				}
			}
			if tc.code == exitUsage {
				if d := diffSnapshots(before, treeSnapshot(t, dataDir)); len(d) != 0 {
					t.Errorf("a usage error changed the data directory: %v", d)
				}
			}
		})
	}
}

func TestServerConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := writeTestFile(t, dir, "c.json", []byte(`{"data_dir": "data", "kek_file": "/etc/kek", "trust_bundle": "b.pem",
		"admin_socket": "a.sock", "node_id": "n1", "log_level": "warn", "bootstrap": true,
		"node_sign_rate": 50, "node_sign_burst": 300, "operator_mint_rate": 1000, "admission_wait": "250ms"}`))
	c, err := loadServerConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	want := serverConfig{DataDir: filepath.Join(dir, "data"), KEKFile: "/etc/kek", TrustBundle: filepath.Join(dir, "b.pem"),
		AdminSocket: filepath.Join(dir, "a.sock"), NodeID: "n1", LogLevel: "warn", Bootstrap: true,
		NodeSignRate: 50, NodeSignBurst: 300, OperatorMintRate: 1000, AdmissionWait: "250ms"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("loadServerConfig = %+v, want %+v", c, want)
	}
	if d, err := admissionWait(&c); err != nil || d != 250*time.Millisecond {
		t.Errorf("admissionWait = %v, %v; want 250ms", d, err)
	}
	// Flags given on the command line win; the others keep the file's values.
	cmd := (&app{}).newServerCommand()
	if err := cmd.Flags().Parse([]string{"--node-id", "n2", "--bootstrap=false", "--node-sign-rate", "inf", "--operator-mint-burst", "7"}); err != nil {
		t.Fatal(err)
	}
	flags := serverConfig{NodeID: "n2", NodeSignRate: math.Inf(1), OperatorMintBurst: 7}
	c.override(cmd.Flags(), &flags)
	want.NodeID, want.Bootstrap, want.NodeSignRate, want.OperatorMintBurst = "n2", false, math.Inf(1), 7
	if !reflect.DeepEqual(c, want) {
		t.Errorf("after flags: %+v, want %+v", c, want)
	}
	if keys := strings.Join(configKeys(), ","); keys != "data_dir,node_id,raft_addr,api_addr,bootstrap,trust_domain,join,join_token,trust_bundle,join_timeout,"+
		"bootstrap_node,server_join_secret_file,raft_bind,api_bind,admin_socket,admin_addr,admin_ids,http_addr,crl_addr,kek_file,log_level,log_format,bundle_addr,bundle_dns_names,"+
		"x509pop_ca,k8s_psat_cluster,k8s_psat_issuer,k8s_psat_jwks,k8s_psat_audience,k8s_psat_allowed_sa,k8s_psat_clusters,"+
		"node_sign_rate,node_sign_burst,operator_mint_rate,operator_mint_burst,admission_wait,sign_queue,issuance_decision_cache,pprof_addr,ledger_grace,"+
		"postgres_dsn,postgres_ca_file,history_retention,export_hold" {
		t.Errorf("configKeys = %s", keys)
	}
}

func TestOperatorBadInput(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	// A stale socket: a file nobody listens on, as a crashed server leaves.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	missing := filepath.Join(dir, "missing.sock")
	notSocket := writeTestFile(t, dir, "file", []byte("x"))
	home := t.TempDir()

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want []string
	}{
		{"fail/token-bad-kind", nil, []string{"token", "create", "--kind", "bogus", "--addr", "unix://" + stale}, exitUsage, []string{`--kind "bogus"`, "agent", "server"}},
		{"fail/token-zero-ttl", nil, []string{"token", "create", "--ttl", "0", "--addr", "unix://" + stale}, exitUsage, []string{"--ttl 0s", "at least 1s"}},
		{"fail/token-negative-ttl", nil, []string{"token", "create", "--ttl=-5m", "--addr", "unix://" + stale}, exitUsage, []string{"--ttl -5m0s"}},
		{"fail/token-long-ttl", nil, []string{"token", "create", "--ttl", "200h", "--addr", "unix://" + stale}, exitUsage, []string{"at most"}},
		{"fail/token-fractional-ttl", nil, []string{"token", "create", "--ttl", "1500ms", "--addr", "unix://" + stale}, exitUsage, []string{"whole seconds"}},
		{"fail/stale-socket", nil, []string{"status", "--addr", "unix://" + stale}, exitError,
			[]string{"cannot reach the server's admin socket at " + stale, "nothing is listening", "is `meshca server` running?"}},
		{"fail/stale-socket-env", map[string]string{envAddr: "unix://" + stale}, []string{"token", "create"}, exitError,
			[]string{"cannot reach the server's admin socket at " + stale}},
		{"fail/missing-socket", nil, []string{"operator", "raft", "list-peers", "--addr", "unix://" + missing}, exitError,
			[]string{"cannot reach the server's admin socket at " + missing, "does not exist", "is `meshca server` running?"}},
		{"fail/default-socket", map[string]string{"HOME": home}, []string{"status"}, exitError,
			[]string{"cannot reach the server's admin socket at " + filepath.Join(home, ".local", "share", "meshca", "admin.sock")}},
		{"fail/not-a-socket", nil, []string{"status", "--addr", notSocket}, exitError, []string{"is not a Unix socket"}},
		{"fail/tcp-addr-no-creds", nil, []string{"status", "--addr", "127.0.0.1:8443"}, exitUsage, []string{"TCP address", "--admin-cert", "--trust-bundle"}},
		{"fail/tcp-addr-env-no-creds", map[string]string{envAddr: "10.0.0.1:8443"}, []string{"operator", "raft", "list-peers"}, exitUsage, []string{"10.0.0.1:8443", "--admin-key"}},
		{"fail/bad-addr", nil, []string{"status", "--addr", "http://x"}, exitUsage, []string{`--addr "http://x"`}},
		{"fail/relative-unix-url", nil, []string{"status", "--addr", "unix://rel/admin.sock"}, exitUsage, []string{"three slashes"}},
		{"fail/add-voter-args", nil, []string{"operator", "raft", "add-voter", "s4"}, exitUsage, []string{"accepts 2 arg(s)"}},
		{"fail/remove-peer-args", nil, []string{"operator", "raft", "remove-peer"}, exitUsage, []string{"accepts 1 arg(s)"}},
		{"fail/restore-missing-file", nil, []string{"operator", "raft", "snapshot", "restore", filepath.Join(dir, "nope.snap"), "--addr", "unix://" + stale}, exitError, []string{"snapshot file", "no such file"}},
		{"fail/save-unreachable", nil, []string{"operator", "raft", "snapshot", "save", filepath.Join(dir, "s.snap"), "--addr", "unix://" + stale}, exitError, []string{"cannot reach the server's admin socket"}},
		{"fail/bad-timeout", nil, []string{"status", "--timeout", "0s", "--addr", "unix://" + stale}, exitUsage, []string{"--timeout 0s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := meshca(t, tc.env, tc.args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "meshca: ") {
				t.Errorf("stderr = %q, want it to start with \"meshca: \"", r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr = %q, want it to contain %q", r.stderr, w)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "s.snap")); !os.IsNotExist(err) {
		t.Errorf("a failed snapshot save left a file: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("directory holds %d entries after the failures, want the stale socket and the file", len(entries))
	}
}

func TestOperatorHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"server", "--help"}, []string{"--bootstrap", "--join", "same KEK", "meshca token create --kind server",
			"<data-dir>/server/bundle.pem", "--config", "unknown key is an error", "admin.sock", "SIGTERM", "MESHCA_JOIN_TOKEN", "development only"}},
		{[]string{"token", "create", "--help"}, []string{"--kind", "--ttl", "single-use", "never logged", "MESHCA_ADDR"}},
		{[]string{"status", "--help"}, []string{"state hash", "--addr", "MESHCA_ADDR", "signing", "mutual TLS", "--admin-cert"}},
		{[]string{"operator", "raft", "--help"}, []string{"list-peers", "add-voter", "remove-peer", "snapshot"}},
		{[]string{"operator", "raft", "snapshot", "save", "--help"}, []string{"0600", "renamed", "KEK"}},
		{[]string{"operator", "raft", "snapshot", "restore", "--help"}, []string{"corrupt", "state hash"}},
		{[]string{"--help"}, []string{"meshca server", "meshca status", "meshca token create", "meshca operator raft"}},
	} {
		r := meshca(t, nil, tc.args...)
		if r.code != exitOK {
			t.Errorf("meshca %s: exit %d, stderr %q", strings.Join(tc.args, " "), r.code, r.stderr)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("meshca %s does not mention %q", strings.Join(tc.args, " "), w)
			}
		}
		if strings.Contains(r.stdout, "\t") {
			t.Errorf("meshca %s: help contains tabs", strings.Join(tc.args, " "))
		}
	}
}

// TestOperatorOverMutualTLS serves the operator API on --admin-addr to one
// admin SPIFFE ID: an admin SVID minted through the admin socket reaches it
// with --admin-cert/--admin-key/--trust-bundle; another SVID is refused.
func TestOperatorOverMutualTLS(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	ports := freePorts(t, 3)
	srv := startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org", "--admin-addr", ports[2], "--admin-id", "spiffe://example.org/ops/alice")
	waitLeader(t, env, sock, "s1")
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})
	mintDir := func(id string) string {
		out := filepath.Join(t.TempDir(), "svid")
		mustSucceed(t, env, "x509", "mint", "--spiffe-id", id, "--addr", "unix://"+sock, "--out", out)
		return out
	}
	bundle := filepath.Join(dataDir, "server", "bundle.pem")
	status := func(dir string) result {
		return meshca(t, env, "status", "--addr", ports[2], "--admin-cert", filepath.Join(dir, "svid.pem"),
			"--admin-key", filepath.Join(dir, "key.pem"), "--trust-bundle", bundle, "--output", "json")
	}
	if r := status(mintDir("spiffe://example.org/ops/alice")); r.code != exitOK || !strings.Contains(r.stdout, `"node_id": "s1"`) {
		t.Errorf("admin over mTLS: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	mallory := mintDir("spiffe://example.org/ops/mallory")
	if r := status(mallory); r.code != exitError || !strings.Contains(r.stderr, "not an admin") {
		t.Errorf("non-admin over mTLS: exit %d\n%s", r.code, r.stderr)
	}

	// meshca admin: the list is the seeded alice; mallory is added, and
	// may operate.
	var admins struct{ Admins []adminReport }
	waitFor(t, 10*time.Second, "alice seeded", func() (bool, string) {
		r := mustSucceed(t, env, "admin", "list", "--addr", "unix://"+sock, "--output", "json")
		decodeJSON(t, r, &admins)
		return len(admins.Admins) == 1 && admins.Admins[0].SPIFFEID == "spiffe://example.org/ops/alice" && admins.Admins[0].AddedBy == "admin_ids of s1", r.stdout
	})
	mustSucceed(t, env, "admin", "add", "spiffe://example.org/ops/mallory", "--addr", "unix://"+sock)
	if r := status(mallory); r.code != exitOK {
		t.Errorf("mallory after admin add: exit %d\n%s", r.code, r.stderr)
	}
	if r := meshca(t, env, "admin", "remove", "spiffe://example.org/ops/nobody", "--addr", "unix://"+sock); r.code != exitError || !strings.Contains(r.stderr, "is not an admin") {
		t.Errorf("admin remove of a non-admin: exit %d, stderr %q", r.code, r.stderr)
	}
	mustSucceed(t, env, "admin", "remove", "spiffe://example.org/ops/mallory", "--addr", "unix://"+sock)
	if r := status(mallory); r.code != exitError || !strings.Contains(r.stderr, "not an admin") {
		t.Errorf("mallory after admin remove: exit %d\n%s", r.code, r.stderr)
	}
	if table := mustSucceed(t, env, "admin", "list", "--addr", "unix://"+sock).stdout; !strings.Contains(table, "ADDED BY") || !strings.Contains(table, "ops/alice") || strings.Contains(table, "mallory") {
		t.Errorf("admin list:\n%s", table)
	}

	// The cluster API port given where the operator API is expected.
	alice := mintDir("spiffe://example.org/ops/alice")
	r0 := meshca(t, env, "status", "--addr", ports[1], "--admin-cert", filepath.Join(alice, "svid.pem"),
		"--admin-key", filepath.Join(alice, "key.pem"), "--trust-bundle", bundle)
	if r0.code != exitError || !strings.Contains(r0.stderr, ports[1]+" does not serve the operator API: is it the server's --api-addr") || strings.Contains(r0.stderr, "older meshca") {
		t.Errorf("status --addr <the API address>: exit %d, stderr %q", r0.code, r0.stderr)
	}

	// x509 mint reaches the server over mutual TLS with the same flags,
	// and names the server by the address it used.
	out := filepath.Join(t.TempDir(), "tool")
	r := meshca(t, env, "x509", "mint", "--spiffe-id", "spiffe://example.org/ops/tool", "--addr", ports[2], "--out", out,
		"--admin-cert", filepath.Join(alice, "svid.pem"), "--admin-key", filepath.Join(alice, "key.pem"), "--trust-bundle", bundle, "--output", "json")
	var rep serverMintReport
	if r.code != exitOK {
		t.Fatalf("x509 mint over mTLS: exit %d\n%s", r.code, r.stderr)
	}
	decodeJSON(t, r, &rep)
	if rep.Server != ports[2] || rep.SPIFFEID != "spiffe://example.org/ops/tool" {
		t.Errorf("x509 mint over mTLS = %+v, want server %s", rep, ports[2])
	}
	checkLeafAndKey(t, ca.ProfileECDSA, filepath.Join(out, "svid.pem"), filepath.Join(out, "key.pem"), "spiffe://example.org/ops/tool")
	if r := meshca(t, env, "x509", "mint", "--spiffe-id", "spiffe://example.org/ops/tool", "--addr", ports[2], "--out", out); r.code != exitUsage ||
		!strings.Contains(r.stderr, "needs --admin-cert, --admin-key and --trust-bundle") {
		t.Errorf("x509 mint over mTLS without credentials: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := meshca(t, env, "x509", "mint", "--spiffe-id", "spiffe://example.org/ops/tool", "--data-dir", t.TempDir(), "--profile", "ecdsa",
		"--out", out, "--admin-cert", "x.pem"); r.code != exitUsage || !strings.Contains(r.stderr, "--admin-cert is only used with --addr") {
		t.Errorf("x509 mint offline with --admin-cert: exit %d, stderr %q", r.code, r.stderr)
	}
}
