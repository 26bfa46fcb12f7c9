package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/server"
)

// The meshca binary, built once for the tests that run it as a process.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// meshcaBinary builds ./cmd/meshca once per test run and returns its path.
func meshcaBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			binErr = fmt.Errorf("the go tool is needed to build meshca: %w", err)
			return
		}
		if binDir, binErr = os.MkdirTemp("", "meshca-bin"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "meshca")
		out, err := exec.Command(goTool, "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// freePorts returns n distinct loopback addresses for server processes,
// from outside the ephemeral range so nothing else takes them first.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	return testtool.FreePorts(t, n)
}

// processEnv is the test's environment without MESHCA_* variables.
func processEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHCA_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// serverProc is one `meshca server` process of a test cluster.
type serverProc struct {
	name, dataDir, sock, raftAddr, apiAddr string
	logPath                                string
	cmd                                    *exec.Cmd
	done                                   chan struct{} // closed when the process has exited
	exitErr                                error         // cmd.Wait's result, once done is closed
}

// start runs the server with its common flags plus extra, logging to its
// log file (appended to across restarts).
func (p *serverProc) start(t *testing.T, bin, kek string, extra ...string) {
	t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the child has its own descriptor
	args := append([]string{"server", "--data-dir", p.dataDir, "--node-id", p.name, "--raft-addr", p.raftAddr,
		"--api-addr", p.apiAddr, "--kek-file", kek}, extra...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = processEnv("HOME=" + p.dataDir)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		p.exitErr = cmd.Wait()
		close(done)
	}(p.cmd, p.done)
}

// kill stops the process with SIGKILL and reaps it.
func (p *serverProc) kill() {
	if p.cmd != nil {
		p.cmd.Process.Kill()
		<-p.done
	}
}

// mustBeRunning fails the test, with the server's log, if it has exited.
func (p *serverProc) mustBeRunning(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		b, _ := os.ReadFile(p.logPath)
		t.Fatalf("server %s exited: %v\nlog:\n%s", p.name, p.exitErr, b)
	default:
	}
}

func (p *serverProc) addr() string { return "unix://" + p.sock }

// binResult is the outcome of running the meshca binary.
type binResult struct {
	code           int
	stdout, stderr string
}

// runBin runs the meshca binary with args, bounded by 30 s.
func runBin(t *testing.T, bin string, args ...string) binResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = processEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return binResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// mustRunBin runs the binary and fails the test unless it exits 0.
func mustRunBin(t *testing.T, bin string, args ...string) binResult {
	t.Helper()
	r := runBin(t, bin, args...)
	if r.code != 0 {
		t.Fatalf("meshca %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// binStatus runs `meshca status --output json` against p.
func binStatus(t *testing.T, bin string, p *serverProc) (statusReport, bool, string) {
	t.Helper()
	p.mustBeRunning(t)
	r := runBin(t, bin, "status", "--output", "json", "--timeout", "3s", "--addr", p.addr())
	if r.code != 0 {
		return statusReport{}, false, r.stderr
	}
	var st statusReport
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status of %s: %v\n%s", p.name, err, r.stdout)
	}
	return st, true, r.stdout
}

// binPeers runs `meshca operator raft list-peers --output json` against p.
func binPeers(t *testing.T, bin string, p *serverProc) ([]peerReport, string) {
	t.Helper()
	p.mustBeRunning(t)
	r := runBin(t, bin, "operator", "raft", "list-peers", "--output", "json", "--timeout", "3s", "--addr", p.addr())
	if r.code != 0 {
		return nil, r.stderr
	}
	var out struct {
		Peers []peerReport `json:"peers"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("list-peers of %s: %v\n%s", p.name, err, r.stdout)
	}
	return out.Peers, r.stdout
}

// voters counts the voters in peers.
func voters(peers []peerReport) int {
	n := 0
	for _, p := range peers {
		if p.Suffrage == "Voter" {
			n++
		}
	}
	return n
}

// waitSameState waits until every server in procs reports a known leader
// and the same state hash and applied index, and returns that hash.
func waitSameState(t *testing.T, bin string, timeout time.Duration, procs ...*serverProc) string {
	t.Helper()
	var hash string
	waitFor(t, timeout, "servers agree on the state", func() (bool, string) {
		var sts []string
		var first statusReport
		for i, p := range procs {
			st, ok, msg := binStatus(t, bin, p)
			if !ok {
				return false, p.name + ": " + msg
			}
			sts = append(sts, fmt.Sprintf("%s: leader %q applied %d hash %.12s", p.name, st.LeaderID, st.AppliedIndex, st.StateHash))
			if st.LeaderID == "" {
				return false, strings.Join(sts, "; ")
			}
			if i == 0 {
				first = st
			} else if st.StateHash != first.StateHash || st.AppliedIndex != first.AppliedIndex || st.LeaderID != first.LeaderID {
				return false, strings.Join(sts, "; ")
			}
		}
		hash = first.StateHash
		return true, ""
	})
	return hash
}

// TestClusterOfProcesses runs three meshca server processes on loopback:
// bootstrap and joins, writes, a leader killed with SIGKILL, a new election
// and writes among the survivors, and the killed server's return.
func TestClusterOfProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three server processes")
	}
	t.Parallel()
	testStart := time.Now()
	bin := meshcaBinary(t)
	base := shortTempDir(t)
	kek := filepath.Join(base, "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	procs := map[string]*serverProc{}
	var order []*serverProc
	ports := freePorts(t, 6)
	for i, name := range []string{"s1", "s2", "s3"} {
		p := &serverProc{name: name, dataDir: filepath.Join(base, name), raftAddr: ports[2*i], apiAddr: ports[2*i+1],
			logPath: filepath.Join(base, name+".log")}
		p.sock = filepath.Join(p.dataDir, server.AdminSocketName)
		procs[name] = p
		order = append(order, p)
	}
	t.Cleanup(func() {
		for _, p := range order {
			p.kill()
		}
		if t.Failed() {
			for _, p := range order {
				if b, err := os.ReadFile(p.logPath); err == nil {
					t.Logf("log of %s:\n%s", p.name, b)
				}
			}
		}
	})

	// s1 bootstraps the cluster.
	s1 := procs["s1"]
	s1.start(t, bin, kek, "--bootstrap", "--trust-domain", "example.org")
	waitFor(t, 15*time.Second, "s1 leads", func() (bool, string) {
		st, ok, msg := binStatus(t, bin, s1)
		return ok && st.RaftState == "Leader", msg
	})
	waitFor(t, 10*time.Second, "s1 writes the bootstrap state", func() (bool, string) {
		b, _ := os.ReadFile(s1.logPath)
		return bytes.Contains(b, []byte(bootstrappedLog)), "no " + bootstrappedLog + " in s1's log"
	})
	bundle := filepath.Join(s1.dataDir, "server", "bundle.pem")
	if _, err := server.LoadTrustBundle(bundle); err != nil {
		t.Fatalf("s1's trust bundle: %v", err)
	}

	// s2 and s3 join with server tokens, the bundle and the shared KEK.
	for _, name := range []string{"s2", "s3"} {
		r := mustRunBin(t, bin, "token", "create", "--kind", "server", "--output", "json", "--addr", s1.addr())
		var tok tokenReport
		if err := json.Unmarshal([]byte(r.stdout), &tok); err != nil || tok.Token == "" {
			t.Fatalf("token create: %v\n%s", err, r.stdout)
		}
		procs[name].start(t, bin, kek, "--join", s1.apiAddr, "--join-token", tok.Token, "--trust-bundle", bundle)
	}
	d := waitFor(t, 20*time.Second, "three voters", func() (bool, string) {
		peers, msg := binPeers(t, bin, s1)
		return voters(peers) == 3, msg
	})
	t.Logf("cluster of 3 formed %s after the joins started", d.Round(time.Millisecond))
	// s3 is a voter as soon as the leader adds it, which may be before its
	// own operator socket is up.
	waitFor(t, 20*time.Second, "s3's operator API", func() (bool, string) {
		r := runBin(t, bin, "status", "--addr", procs["s3"].addr(), "--timeout", "5s")
		return r.code == exitOK, r.stderr
	})
	table := mustRunBin(t, bin, "operator", "raft", "list-peers", "--addr", procs["s3"].addr())
	t.Logf("list-peers from s3:\n%s", table.stdout)

	// Writes, through every server (followers forward to the leader).
	for i := range 20 {
		p := order[i%3]
		mustRunBin(t, bin, "token", "create", "--kind", "agent", "--addr", p.addr())
	}
	waitSameState(t, bin, 10*time.Second, order...)

	// status through a follower shows the whole cluster: 3 members, all
	// reachable, one leader, and the trust domain's authorities.
	for _, p := range order {
		var st statusReport
		var out string
		// On a loaded machine an election may be under way: wait for the
		// view every status settles on.
		waitFor(t, 20*time.Second, "status of "+p.name+" shows 3 reachable members and one leader", func() (bool, string) {
			st, _, out = binStatus(t, bin, p)
			leaders, reachable := 0, 0
			for _, m := range st.Members {
				if m.Leader {
					leaders++
				}
				if m.Reachable {
					reachable++
				}
			}
			return len(st.Members) == 3 && reachable == 3 && leaders == 1, out
		})
		if st.RaftState == "Leader" {
			continue
		}
		if len(st.Authorities) < 8 { // 2 roots, 2 intermediates per server
			t.Errorf("status of %s lists %d authorities, want the 2 roots and 6 intermediates:\n%s", p.name, len(st.Authorities), out)
		}
		text := mustRunBin(t, bin, "status", "--addr", p.addr()).stdout
		for _, want := range []string{"members (3)", "Leader", "Follower", "LAG", "authorities (", "DAYS LEFT", "intermediate"} {
			if !strings.Contains(text, want) {
				t.Errorf("status table of %s lacks %q:\n%s", p.name, want, text)
			}
		}
		t.Logf("status of %s:\n%s", p.name, text)
		break
	}

	// Kill the leader with SIGKILL.
	st, ok, msg := binStatus(t, bin, s1)
	if !ok || st.LeaderID == "" {
		t.Fatalf("no leader known: %s", msg)
	}
	victim := procs[st.LeaderID]
	var survivors []*serverProc
	for _, p := range order {
		if p != victim {
			survivors = append(survivors, p)
		}
	}
	victim.kill()
	elected := waitFor(t, 15*time.Second, "a survivor leads", func() (bool, string) {
		for _, p := range survivors {
			st, ok, msg := binStatus(t, bin, p)
			if !ok {
				return false, p.name + ": " + msg
			}
			if st.RaftState == "Leader" && st.LeaderID == p.name {
				return true, ""
			}
		}
		return false, "no survivor is leader yet"
	})
	t.Logf("killed leader %s with SIGKILL; %s leads %s later", victim.name, survivorsLeader(t, bin, survivors), elected.Round(time.Millisecond))

	hash := waitSameState(t, bin, 10*time.Second, survivors...)
	// A write through a survivor, preferably a follower (it forwards).
	writer := survivors[0]
	if s, _, _ := binStatus(t, bin, writer); s.RaftState == "Leader" {
		writer = survivors[1]
	}
	mustRunBin(t, bin, "token", "create", "--kind", "agent", "--addr", writer.addr())
	if h := waitSameState(t, bin, 10*time.Second, survivors...); h == hash {
		t.Errorf("the state hash did not change after a write through %s", writer.name)
	}

	// The killed server restarts from its data directory and catches up.
	restarted := time.Now()
	victim.start(t, bin, kek)
	waitFor(t, 20*time.Second, victim.name+" rejoins", func() (bool, string) {
		peers, msg := binPeers(t, bin, victim)
		return voters(peers) == 3, msg
	})
	waitSameState(t, bin, 20*time.Second, order...)
	t.Logf("%s rejoined and caught up after %s", victim.name, time.Since(restarted).Round(time.Millisecond))

	// Membership by hand: remove a follower, then add it back as a voter.
	st, _, _ = binStatus(t, bin, victim)
	leader := procs[st.LeaderID]
	var follower *serverProc
	for _, p := range order {
		if p != leader {
			follower = p
			break
		}
	}
	r := mustRunBin(t, bin, "operator", "raft", "remove-peer", follower.name, "--addr", leader.addr())
	if !strings.Contains(r.stdout, "removed "+follower.name) {
		t.Errorf("remove-peer: %s", r.stdout)
	}
	waitFor(t, 10*time.Second, "two voters", func() (bool, string) {
		peers, msg := binPeers(t, bin, leader)
		return voters(peers) == 2, msg
	})
	mustRunBin(t, bin, "operator", "raft", "add-voter", follower.name, follower.raftAddr, "--addr", leader.addr())
	waitFor(t, 10*time.Second, "three voters again", func() (bool, string) {
		peers, msg := binPeers(t, bin, leader)
		return voters(peers) == 3, msg
	})
	mustRunBin(t, bin, "token", "create", "--addr", leader.addr())
	waitSameState(t, bin, 10*time.Second, order...)

	// SIGTERM stops each server cleanly: exit 0, admin socket removed.
	for _, p := range order {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM %s: %v", p.name, err)
		}
		select {
		case <-p.done:
			if p.exitErr != nil {
				t.Errorf("%s after SIGTERM: %v", p.name, p.exitErr)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("%s did not stop within 15 s of SIGTERM", p.name)
		}
		if _, err := os.Stat(p.sock); !os.IsNotExist(err) {
			t.Errorf("%s left its admin socket: %v", p.name, err)
		}
	}
	t.Logf("whole cluster test: %s", time.Since(testStart).Round(time.Millisecond))
}

// survivorsLeader names the leader the survivors report.
func survivorsLeader(t *testing.T, bin string, survivors []*serverProc) string {
	for _, p := range survivors {
		if st, ok, _ := binStatus(t, bin, p); ok && st.LeaderID != "" {
			return st.LeaderID
		}
	}
	return "?"
}
