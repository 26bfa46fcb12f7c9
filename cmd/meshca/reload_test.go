package main

import (
	"bytes"
	"encoding/json"
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

// SIGHUP reloads the node attestors' trust material without a restart: a
// server process started with one Kubernetes issuer key refuses an agent
// whose token the cluster's next key signed; the JWKS file is replaced by
// one with the new key, the server gets SIGHUP, and an agent with that
// token attests. A config that does not load changes nothing, and a
// setting that needs a restart is named.
func TestSIGHUPReloadsJWKS(t *testing.T) {
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
	oldIssuer, newIssuer := newTestIssuer(t, t.TempDir()), newTestIssuer(t, t.TempDir())
	jwks := filepath.Join(base, "jwks.json")
	if err := os.WriteFile(jwks, readFile(t, oldIssuer.jwksFile), 0o600); err != nil {
		t.Fatal(err)
	}
	config := writeTestFile(t, base, "server.json", []byte(`{"k8s_psat_clusters": [{"name": "c1", "issuer": "`+oldIssuer.url+
		`", "jwks_file": "jwks.json", "allowed_service_accounts": ["meshca:meshca-agent"]}], "log_level": "info"}`))
	ports := freePorts(t, 2)
	s := &serverProc{name: "s1", dataDir: filepath.Join(base, "s1"), raftAddr: ports[0], apiAddr: ports[1], logPath: filepath.Join(base, "s1.log")}
	s.sock = filepath.Join(s.dataDir, server.AdminSocketName)
	t.Cleanup(s.kill)
	s.start(t, bin, kek, "--bootstrap", "--trust-domain", "example.org", "--config", config)
	waitFor(t, 20*time.Second, "s1 ready", func() (bool, string) {
		st, ok, msg := binStatus(t, bin, s)
		return ok && st.Ready, msg
	})
	bundle := filepath.Join(s.dataDir, "server", "bundle.pem")
	logHas := func(what string) func() (bool, string) {
		return func() (bool, string) {
			b, _ := os.ReadFile(s.logPath)
			return bytes.Contains(b, []byte(what)), "no " + what + " in the log"
		}
	}
	// agent runs an agent whose token the issuer signed for node nodeUID
	// until it attests (exit code -1: still running, then stopped) or
	// exits by itself within the bound.
	agent := func(is testIssuer, nodeUID string) (code int, stderr string) {
		dir := shortTempDir(t)
		tokenFile := writeTestFile(t, dir, "token", []byte(is.token(t, nodeUID)))
		cmd := exec.Command(bin, "agent", "--server", s.apiAddr, "--trust-bundle", bundle, "--data-dir", dir,
			"--socket", filepath.Join(dir, "w.sock"), "--k8s-psat-cluster", "c1", "--k8s-psat-token-path", tokenFile)
		var errb syncBuffer
		cmd.Env, cmd.Stderr = processEnv(), &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan int, 1)
		go func() { cmd.Wait(); done <- cmd.ProcessState.ExitCode() }()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case c := <-done:
				return c, errb.String()
			case <-deadline:
				cmd.Process.Kill()
				<-done
				t.Fatalf("the agent neither attested nor exited in 30 s:\n%s", errb.String())
			case <-time.After(50 * time.Millisecond):
			}
			r := runBin(t, bin, "node", "list", "--output", "json", "--addr", s.addr())
			if strings.Contains(r.stdout, "k8s_psat/c1/"+nodeUID) {
				cmd.Process.Signal(syscall.SIGTERM)
				<-done
				return -1, errb.String()
			}
		}
	}

	if code, stderr := agent(oldIssuer, "node-a"); code != -1 {
		t.Fatalf("an agent with the old key's token: exit %d, want it attested\n%s", code, stderr)
	}
	if code, stderr := agent(newIssuer, "node-b"); code == -1 || !strings.Contains(stderr, "refused") {
		t.Fatalf("before the reload, an agent with the new key's token: exit %d, want refused\n%s", code, stderr)
	}

	// A broken config file changes nothing.
	good := readFile(t, config)
	if err := os.WriteFile(config, []byte(`{"k8s_psat_clusters": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	s.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the refused reload is logged", logHas("the configuration was not reloaded"))
	s.mustBeRunning(t)

	// The cluster's key rotates: the JWKS file now holds the new key, and
	// the log level and an address change in the file.
	if err := os.WriteFile(jwks, readFile(t, newIssuer.jwksFile), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(good, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["log_level"], cfg["admin_addr"] = "debug", "127.0.0.1:1"
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(config, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "the reload is logged", logHas("configuration reloaded"))
	waitFor(t, 10*time.Second, "the restart-only setting is named", logHas("admin_addr"))
	if code, stderr := agent(newIssuer, "node-c"); code != -1 {
		t.Fatalf("after the reload, an agent with the new key's token: exit %d, want it attested\n%s", code, stderr)
	}
	if code, stderr := agent(oldIssuer, "node-d"); code == -1 {
		t.Fatalf("after the reload, an agent with the old key's token attested:\n%s", stderr)
	}
	s.mustBeRunning(t)
}
