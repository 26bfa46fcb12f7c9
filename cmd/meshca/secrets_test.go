package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

// No secret ever reaches a log: two server processes (bootstrap, and a join
// with a server token) and an agent (attested with an agent token), all at
// debug level, in text and in JSON, issue the agent's and a workload's SVIDs;
// then every line they logged is searched for the join tokens, the KEK (as
// its file holds it, and its raw bytes in hex and base64), any private key
// PEM, and the bodies of the agent's and the workload's private keys.
func TestNoSecretsInLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server and agent processes")
	}
	t.Parallel()
	bin := meshcaBinary(t)
	base := shortTempDir(t)
	kek := filepath.Join(base, "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 4)
	procs := []*serverProc{}
	for i, name := range []string{"s1", "s2"} {
		p := &serverProc{name: name, dataDir: filepath.Join(base, name), raftAddr: ports[2*i], apiAddr: ports[2*i+1],
			logPath: filepath.Join(base, name+".log")}
		p.sock = filepath.Join(p.dataDir, server.AdminSocketName)
		procs = append(procs, p)
	}
	s1, s2 := procs[0], procs[1]
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
	})
	s1.start(t, bin, kek, "--bootstrap", "--trust-domain", "example.org", "--log-level", "debug")
	waitFor(t, 20*time.Second, "s1 leads", func() (bool, string) {
		st, ok, msg := binStatus(t, bin, s1)
		return ok && st.Ready, msg
	})
	bundle := filepath.Join(s1.dataDir, "server", "bundle.pem")

	var secrets []string
	tokenOf := func(kind string) string {
		r := mustRunBin(t, bin, "token", "create", "--kind", kind, "--output", "json", "--addr", s1.addr())
		var tok tokenReport
		if err := json.Unmarshal([]byte(r.stdout), &tok); err != nil || tok.Token == "" {
			t.Fatalf("token create: %v\n%s", err, r.stdout)
		}
		secrets = append(secrets, tok.Token)
		return tok.Token
	}
	s2.start(t, bin, kek, "--join", s1.apiAddr, "--join-token", tokenOf("server"), "--trust-bundle", bundle,
		"--log-level", "debug", "--log-format", "json")
	waitFor(t, 30*time.Second, "s2 joins", func() (bool, string) {
		st, ok, msg := binStatus(t, bin, s2)
		return ok && st.Ready, msg
	})

	// An agent, attested with a join token, and a workload entry for us.
	agentToken := tokenOf("agent")
	sum := sha256.Sum256([]byte(agentToken))
	agentID := "spiffe://example.org/meshca/agent/join_token/" + hex.EncodeToString(sum[:16])
	workloadID := "spiffe://example.org/secrets/test"
	mustRunBin(t, bin, "entry", "create", "--addr", s1.addr(), "--parent-id", agentID, "--spiffe-id", workloadID,
		"--selector", "unix:uid:"+strconv.Itoa(os.Getuid()))
	agentDir := filepath.Join(base, "agent")
	socket := filepath.Join(base, "agent.sock")
	agentLog := filepath.Join(base, "agent.log")
	logf, err := os.Create(agentLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ag := exec.Command(bin, "agent", "--server", s1.apiAddr, "--server", s2.apiAddr, "--trust-bundle", bundle,
		"--data-dir", agentDir, "--socket", socket, "--join-token", agentToken, "--log-level", "debug")
	ag.Env, ag.Stdout, ag.Stderr = processEnv(), logf, logf
	if err := ag.Start(); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan struct{})
	go func() { ag.Wait(); close(agentDone) }()
	t.Cleanup(func() { ag.Process.Kill(); <-agentDone })

	waitFor(t, 30*time.Second, "the agent's socket", func() (bool, string) {
		_, err := os.Stat(socket)
		return err == nil, "no socket yet"
	})
	out := filepath.Join(base, "svid")
	r := runBin(t, bin, "workload", "fetch", "--socket", socket, "--out", out, "--timeout", "30s")
	if r.code != 0 {
		b, _ := os.ReadFile(agentLog)
		t.Fatalf("workload fetch: exit %d\n%s\nagent log:\n%s", r.code, r.stderr, b)
	}

	// Stop everything the way an operator does, so every log is complete.
	ag.Process.Signal(syscall.SIGTERM)
	<-agentDone
	for _, p := range procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
		<-p.done
	}

	kekText, err := os.ReadFile(kek)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(kekText)))
	if err != nil {
		t.Fatalf("KEK file: %v", err)
	}
	secrets = append(secrets, strings.TrimSpace(string(kekText)), hex.EncodeToString(raw), base64.RawStdEncoding.EncodeToString(raw),
		base64.URLEncoding.EncodeToString(raw), "PRIVATE KEY")
	for _, keyFile := range []string{filepath.Join(agentDir, "agent", "key.pem"), filepath.Join(out, "key.pem")} {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			t.Fatalf("%s holds no PEM key", keyFile)
		}
		body := base64.StdEncoding.EncodeToString(block.Bytes)
		// Any 24 characters of the key's base64, and its bytes in hex.
		secrets = append(secrets, body[len(body)/2:len(body)/2+24], hex.EncodeToString(block.Bytes)[40:80])
	}

	lines := 0
	for _, file := range []string{s1.logPath, s2.logPath, agentLog} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Fatalf("%s is empty: nothing was checked", file)
		}
		for _, line := range bytes.Split(b, []byte("\n")) {
			lines++
			for _, s := range secrets {
				if bytes.Contains(line, []byte(s)) {
					t.Errorf("%s logs a secret (%.8s...): %s", filepath.Base(file), s, line)
				}
			}
		}
	}
	t.Logf("%d log lines at debug level searched for %d secrets", lines, len(secrets))
}
