package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

// devReportOf waits until the dev command b (run with --output json) has
// printed its report, and decodes it.
func devReportOf(t *testing.T, b *background) devReport {
	t.Helper()
	var rep devReport
	waitFor(t, 90*time.Second, "dev prints its report", func() (bool, string) {
		b.running(t)
		dec := json.NewDecoder(strings.NewReader(b.stdout.String()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			return false, fmt.Sprintf("%v; stderr:\n%s", err, b.stderr)
		}
		return true, ""
	})
	return rep
}

// TestDevRunsServerAndAgent runs dev in-process: a first start that
// bootstraps, attests the agent with a join token and creates the caller's
// entry; operator commands and workload fetch against it; a restart that
// reuses all of it; and the refusals of a wrong trust domain and KEK.
func TestDevRunsServerAndAgent(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	socket := filepath.Join(dataDir, agentSocketName)
	admin := "unix://" + filepath.Join(dataDir, server.AdminSocketName)
	start := time.Now()
	dev := startBackground(t, env, "dev", "--data-dir", dataDir, "--output", "json", "--log-level", "info")
	rep := devReportOf(t, dev)
	t.Logf("first start: dev served the caller's SVID after %s", time.Since(start).Round(time.Millisecond))

	uid := os.Getuid()
	wantID := fmt.Sprintf("spiffe://meshca.local/dev/uid/%d", uid)
	if rep.DataDir != dataDir || rep.TrustDomain != defaultTrustDomain || !rep.Bootstrapped {
		t.Errorf("report: data dir %q, trust domain %q, bootstrapped %v; want %s, %s, true", rep.DataDir, rep.TrustDomain, rep.Bootstrapped, dataDir, defaultTrustDomain)
	}
	if rep.KEK.Source != "data-dir" || !rep.KEK.Created || rep.KEK.File != server.KEKPath(dataDir) {
		t.Errorf("report KEK = %+v, want one created in the data directory", rep.KEK)
	}
	// A second dev on the same data directory says which process holds it.
	if r := meshca(t, env, "dev", "--data-dir", dataDir, "--socket", filepath.Join(dataDir, "other.sock")); r.code != exitError ||
		!strings.Contains(r.stderr, fmt.Sprintf("another meshca (pid %d) holds the data directory %s", os.Getpid(), dataDir)) ||
		strings.Contains(r.stderr, "LOCK") {
		t.Errorf("second dev on one data directory: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := meshca(t, env, "server", "--data-dir", dataDir, "--node-id", "dev", "--raft-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"); r.code != exitError ||
		!strings.Contains(r.stderr, "another meshca (pid ") {
		t.Errorf("server on dev's data directory: exit %d, stderr %q", r.code, r.stderr)
	}
	// Offline mint refuses dev's data directory rather than create a
	// second CA there.
	if r := meshca(t, env, "x509", "mint", "--data-dir", dataDir, "--profile", "ecdsa", "--spiffe-id", "spiffe://meshca.local/x",
		"--out", filepath.Join(t.TempDir(), "x")); r.code != exitUsage || !strings.Contains(r.stderr, "is the data directory of a meshca server") ||
		!strings.Contains(r.stderr, "--addr unix://"+filepath.Join(dataDir, server.AdminSocketName)) {
		t.Errorf("x509 mint --data-dir <dev's>: exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "ca")); !os.IsNotExist(err) {
		t.Errorf("x509 mint created a CA in dev's data directory: %v", err)
	}
	if strings.Contains(dev.stderr.String(), "every server of the cluster") {
		t.Errorf("dev's KEK warning speaks of a cluster:\n%s", dev.stderr)
	}
	if !strings.Contains(dev.stderr.String(), devOnlyWarning) {
		t.Errorf("dev does not warn about the KEK in the data directory:\n%s", dev.stderr)
	}
	agentID := rep.Agent.SPIFFEID
	if !strings.HasPrefix(agentID, "spiffe://meshca.local/meshca/agent/join_token/") || len(agentID) != len("spiffe://meshca.local/meshca/agent/join_token/")+32 ||
		rep.Agent.Attestation != "join_token" || rep.Agent.Socket != socket {
		t.Errorf("report agent = %+v, want a join_token agent on %s", rep.Agent, socket)
	}
	e := rep.Entry
	if e.SPIFFEID != wantID || e.ParentID != agentID || joinSelectors(e.Selectors) != fmt.Sprintf("unix:uid:%d", uid) ||
		e.Profile != ca.ProfileECDSA || !rep.EntryCreated || e.ID == "" {
		t.Errorf("report entry = %+v (created %v), want %s under the agent for unix:uid:%d, ecdsa", e, rep.EntryCreated, wantID, uid)
	}
	if rep.SVID.SPIFFEID != wantID || rep.SVID.Serial == "" || time.Until(rep.SVID.NotAfter) < 23*time.Hour {
		t.Errorf("report SVID = %+v, want a 24-hour SVID for %s", rep.SVID, wantID)
	}
	wantNext := "meshca workload fetch --socket " + socket + " --out ./svid"
	if len(rep.Next) == 0 || rep.Next[0] != wantNext {
		t.Errorf("report next = %q, want first %q", rep.Next, wantNext)
	}
	checkMode(t, server.KEKPath(dataDir), modePrivate)
	checkMode(t, filepath.Join(dataDir, server.AdminSocketName), modePrivate)
	checkMode(t, filepath.Join(dataDir, "agent", "key.pem"), modePrivate)
	if _, err := server.LoadTrustBundle(rep.Server.TrustBundle); err != nil {
		t.Errorf("the trust bundle dev wrote: %v", err)
	}

	// Operator commands reach dev's server through its admin socket.
	r := mustSucceed(t, env, "entry", "list", "--addr", admin, "--output", "json")
	var list struct{ Entries []entryReport }
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.Entries) != 1 || list.Entries[0].ID != e.ID {
		t.Errorf("entry list: %v\n%s", err, r.stdout)
	}
	r = mustSucceed(t, env, "node", "list", "--addr", admin)
	if !strings.Contains(r.stdout, agentID) || !strings.Contains(r.stdout, "join_token") {
		t.Errorf("node list does not show the agent %s:\n%s", agentID, r.stdout)
	}

	// The caller fetches its SVID through the Workload API.
	out := filepath.Join(t.TempDir(), "svid")
	r = mustSucceed(t, env, "workload", "fetch", "--socket", socket, "--out", out)
	checkLeafAndKey(t, ca.ProfileECDSA, filepath.Join(out, "svid.pem"), filepath.Join(out, "key.pem"), wantID)
	checkMode(t, filepath.Join(out, "key.pem"), modePrivate)
	if !strings.Contains(r.stdout, wantID) || !strings.Contains(r.stdout, "openssl verify") {
		t.Errorf("workload fetch:\n%s", r.stdout)
	}
	for _, s := range []string{dev.stdout.String(), dev.stderr.String(), r.stdout} {
		if strings.Contains(s, "PRIVATE KEY") {
			t.Error("key material printed")
		}
	}

	// Stopping (as SIGTERM would) exits 0 and removes the sockets.
	if code := dev.stop(t); code != exitOK {
		t.Fatalf("dev exited %d\nstderr:\n%s", code, dev.stderr)
	}
	for _, s := range []string{socket, filepath.Join(dataDir, server.AdminSocketName)} {
		if _, err := os.Stat(s); !os.IsNotExist(err) {
			t.Errorf("socket %s still there after dev stopped: %v", s, err)
		}
	}

	// A restart reuses the trust domain, the agent's identity and the entry.
	start = time.Now()
	dev = startBackground(t, env, "dev", "--data-dir", dataDir, "--output", "json")
	again := devReportOf(t, dev)
	t.Logf("restart: dev served the caller's SVID after %s", time.Since(start).Round(time.Millisecond))
	if again.Bootstrapped || again.KEK.Created || again.Agent.SPIFFEID != agentID || again.Agent.Attestation != "stored" ||
		again.Entry.ID != e.ID || again.EntryCreated || again.SVID.SPIFFEID != wantID {
		t.Errorf("restart report = %+v, want the same agent (stored identity) and entry", again)
	}
	if code := dev.stop(t); code != exitOK {
		t.Fatalf("dev exited %d after the restart\nstderr:\n%s", code, dev.stderr)
	}

	// The agent's identity is gone (as when it expired while dev was
	// stopped): dev attests a new agent and moves the entry to it.
	if err := os.Remove(filepath.Join(dataDir, "agent", "svid.pem")); err != nil {
		t.Fatal(err)
	}
	dev = startBackground(t, env, "dev", "--data-dir", dataDir, "--output", "json")
	third := devReportOf(t, dev)
	if third.Agent.SPIFFEID == agentID || third.Agent.Attestation != "join_token" || third.Entry.ID != e.ID ||
		third.Entry.ParentID != third.Agent.SPIFFEID || third.EntryCreated || third.SVID.SPIFFEID != wantID {
		t.Errorf("after a new attestation: report = %+v, want a new agent owning the same entry", third)
	}
	r = mustSucceed(t, env, "entry", "list", "--addr", admin, "--output", "json")
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.Entries) != 1 {
		t.Errorf("entries after a new attestation: %v\n%s", err, r.stdout)
	}
	if code := dev.stop(t); code != exitOK {
		t.Fatalf("dev exited %d after the new attestation\nstderr:\n%s", code, dev.stderr)
	}

	// Another trust domain or another KEK is refused.
	r = meshca(t, env, "dev", "--data-dir", dataDir, "--trust-domain", "other.org")
	if r.code != exitError || !strings.Contains(r.stderr, `belongs to trust domain "meshca.local", not "other.org"`) {
		t.Errorf("dev with another trust domain: exit %d, stderr %q", r.code, r.stderr)
	}
	otherKEK := filepath.Join(t.TempDir(), "kek")
	if _, err := ca.CreateKEKFile(otherKEK); err != nil {
		t.Fatal(err)
	}
	r = meshca(t, env, "dev", "--data-dir", dataDir, "--kek-file", otherKEK)
	if r.code != exitError || !strings.Contains(r.stderr, "does not open the data directory "+dataDir) {
		t.Errorf("dev with another KEK: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestDevTrustDomain: --trust-domain names the trust domain of a new data
// directory, which later runs reopen without it.
func TestDevTrustDomain(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	dev := startBackground(t, env, "dev", "--data-dir", dataDir, "--trust-domain", "example.org", "--output", "json")
	rep := devReportOf(t, dev)
	want := fmt.Sprintf("spiffe://example.org/dev/uid/%d", os.Getuid())
	if rep.TrustDomain != "example.org" || rep.SVID.SPIFFEID != want || !strings.HasPrefix(rep.Agent.SPIFFEID, "spiffe://example.org/meshca/agent/") {
		t.Errorf("report = %+v, want trust domain example.org and SVID %s", rep, want)
	}
	if code := dev.stop(t); code != exitOK {
		t.Fatalf("dev exited %d\nstderr:\n%s", code, dev.stderr)
	}
	dev = startBackground(t, env, "dev", "--data-dir", dataDir, "--output", "json")
	if rep := devReportOf(t, dev); rep.TrustDomain != "example.org" || rep.Bootstrapped || rep.SVID.SPIFFEID != want {
		t.Errorf("reopen without --trust-domain: report = %+v, want example.org reopened", rep)
	}
}

func TestDevBadInput(t *testing.T) {
	t.Parallel()
	long := "/tmp/" + strings.Repeat("s", maxSocketPath) + ".sock"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"fail/socket-too-long", []string{"--socket", long}, "the Workload API socket path " + long},
		{"fail/admin-socket-too-long", []string{"--admin-socket", long}, "the admin socket path " + long},
		{"fail/bad-raft-addr", []string{"--raft-addr", "nope"}, `--raft-addr "nope": want host:port`},
		{"fail/bad-api-addr", []string{"--api-addr", ":0"}, `--api-addr ":0"`},
		{"fail/bad-trust-domain", []string{"--trust-domain", "Not A Domain"}, "--trust-domain"},
		{"fail/bad-log-level", []string{"--log-level", "loud"}, `--log-level "loud"`},
		{"fail/extra-argument", []string{"extra"}, `unknown command "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dataDir := filepath.Join(shortTempDir(t), "d")
			r := meshca(t, testEnv(t), append([]string{"dev", "--data-dir", dataDir}, tc.args...)...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", r.code, r.stderr, exitUsage, tc.want)
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("a usage error created the data directory: %v", err)
			}
		})
	}

	// A long data directory: both sockets are named at once, with the
	// flags that shorten them.
	dataDir := filepath.Join(shortTempDir(t), strings.Repeat("d", 90))
	r := meshca(t, testEnv(t), "dev", "--data-dir", dataDir)
	if r.code != exitUsage || !strings.Contains(r.stderr, "Workload API socket path "+filepath.Join(dataDir, agentSocketName)) ||
		!strings.Contains(r.stderr, "admin socket path "+filepath.Join(dataDir, server.AdminSocketName)) ||
		!strings.Contains(r.stderr, "--socket") || !strings.Contains(r.stderr, "--admin-socket") {
		t.Errorf("dev with a long data directory: exit %d, stderr %q; want both sockets named at once", r.code, r.stderr)
	}
}

// TestDevThenWorkloadFetchVerifiesWithOpenSSL is the acceptance test: on a
// fresh data directory, `meshca dev` and then the commands it prints
// (`meshca workload fetch` and `openssl verify`) work as a new user would
// run them, and the files verify with the real openssl.
func TestDevThenWorkloadFetchVerifiesWithOpenSSL(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	bin := meshcaBinary(t)
	home := t.TempDir()
	dataDir := filepath.Join(shortTempDir(t), "data")
	socket := filepath.Join(shortTempDir(t), "w.sock")

	started := time.Now()
	dev := exec.Command(bin, "dev", "--data-dir", dataDir, "--socket", socket)
	dev.Env = processEnv("HOME=" + home)
	var stdout, stderr syncBuffer
	dev.Stdout, dev.Stderr = &stdout, &stderr
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- dev.Wait() }()
	t.Cleanup(func() {
		dev.Process.Kill()
		if t.Failed() {
			t.Logf("meshca dev stdout:\n%s\nstderr:\n%s", &stdout, &stderr)
		}
	})

	// dev prints the next commands once the Workload API serves the SVID.
	fetchHint := "meshca workload fetch --socket " + socket + " --out ./svid"
	waitFor(t, 90*time.Second, "dev prints its hint", func() (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("meshca dev exited: %v", err)
		default:
		}
		_, err := os.Stat(socket)
		return err == nil && strings.Contains(stdout.String(), fetchHint), "no hint yet"
	})
	t.Logf("meshca dev printed its hint %s after it started", time.Since(started).Round(time.Millisecond))
	var next []string
	for _, line := range strings.Split(stdout.String(), "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "meshca workload fetch") || strings.HasPrefix(l, "openssl verify") {
			next = append(next, l)
		}
	}
	if len(next) != 2 {
		t.Fatalf("dev's hint holds %d of the fetch and openssl commands, want both:\n%s", len(next), &stdout)
	}

	// Run the printed commands from a fresh directory, as printed (meshca
	// being the built binary), retrying the fetch while the SVID is issued.
	work := t.TempDir()
	shell := func(line string) ([]byte, error) {
		if rest, ok := strings.CutPrefix(line, "meshca "); ok {
			line = shellQuote(bin) + " " + rest
		}
		cmd := exec.Command("sh", "-c", line)
		cmd.Dir, cmd.Env = work, processEnv("HOME="+home)
		return cmd.CombinedOutput()
	}
	fetchStart := time.Now()
	var fetchOut []byte
	waitFor(t, 20*time.Second, "workload fetch succeeds", func() (bool, string) {
		var err error
		fetchOut, err = shell(next[0])
		return err == nil, fmt.Sprintf("%v: %s", err, fetchOut)
	})
	t.Logf("workload fetch took %s:\n%s", time.Since(fetchStart).Round(time.Millisecond), fetchOut)
	if out, err := shell(next[1]); err != nil || !strings.Contains(string(out), ": OK") {
		t.Errorf("the printed openssl command %q failed: %v\n%s", next[1], err, out)
	}

	// Verify again with the chain split, as a relying party would.
	svid := filepath.Join(work, "svid")
	chain := splitPEM(t, readFile(t, filepath.Join(svid, "svid.pem")))
	if len(chain) < 2 {
		t.Fatalf("svid.pem holds %d certificates, want the leaf and its intermediate", len(chain))
	}
	leafPath := writeTestFile(t, work, "leaf.pem", ca.EncodePEM(chain[0]))
	inter := writeTestFile(t, work, "intermediates.pem", ca.EncodePEM(chain[1:]...))
	opensslVerify(t, "-x509_strict", "-CAfile", filepath.Join(svid, "bundle.pem"), "-untrusted", inter, leafPath)
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("spiffe://meshca.local/dev/uid/%d", os.Getuid())
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Errorf("leaf URI SANs = %v, want [%s]", leaf.URIs, want)
	}
	checkLeafAndKey(t, ca.ProfileECDSA, filepath.Join(svid, "svid.pem"), filepath.Join(svid, "key.pem"), want)
	checkMode(t, filepath.Join(svid, "key.pem"), modePrivate)
	if bytes.Contains([]byte(stdout.String()+stderr.String()), []byte("PRIVATE KEY")) {
		t.Error("meshca dev printed key material")
	}

	// SIGTERM stops dev cleanly.
	if err := dev.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("meshca dev after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("meshca dev did not stop within 20 s of SIGTERM")
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("the Workload API socket is still there after SIGTERM: %v", err)
	}
	t.Logf("acceptance test: %s", time.Since(started).Round(time.Millisecond))
}

func TestDefaultDataDir(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"ok/meshca-data-dir", map[string]string{envDataDir: "/m", "XDG_DATA_HOME": "/x", "HOME": "/h"}, "/m"},
		{"ok/xdg", map[string]string{"XDG_DATA_HOME": "/x", "HOME": "/h"}, "/x/meshca"},
		{"ok/relative-xdg-ignored", map[string]string{"XDG_DATA_HOME": "x", "HOME": "/h"}, "/h/.local/share/meshca"},
		{"ok/home", map[string]string{"HOME": "/h"}, "/h/.local/share/meshca"},
		{"fail/nothing", nil, ""},
	} {
		got, err := defaultDataDir(func(k string) string { return tc.env[k] })
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("%s: defaultDataDir() = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}
