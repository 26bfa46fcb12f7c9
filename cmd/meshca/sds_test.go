package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startDev runs `meshca dev` (the built binary) on fresh directories and
// returns its socket once the Workload API serves.
func startDev(t *testing.T) (socket, home string) {
	t.Helper()
	bin := meshcaBinary(t)
	home = t.TempDir()
	socket = filepath.Join(shortTempDir(t), "w.sock")
	dev := exec.Command(bin, "dev", "--data-dir", filepath.Join(shortTempDir(t), "data"), "--socket", socket)
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
		<-done
		if t.Failed() {
			t.Logf("meshca dev stdout:\n%s\nstderr:\n%s", &stdout, &stderr)
		}
	})
	waitFor(t, 90*time.Second, "dev serves", func() (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("meshca dev exited: %v", err)
		default:
		}
		return strings.Contains(stdout.String(), "meshca workload fetch --socket "+socket), "no hint yet"
	})
	return socket, home
}

// `meshca sds fetch` against `meshca dev` writes default and ROOTCA as
// PEM files with the right modes, and the openssl command it prints
// verifies the certificate against the served roots with -crl_check_all
// and the served CRLs; --fetch gets the same; a name this process may not
// have is a clear error.
func TestSDSFetch(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	socket, home := startDev(t)
	env := map[string]string{"HOME": home}
	out := filepath.Join(t.TempDir(), "sds")

	var rep sdsFetchReport
	r := mustSucceed(t, env, "--output", "json", "sds", "fetch", "--socket", socket, "--out", out)
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("output %q: %v", r.stdout, err)
	}
	if len(rep.Secrets) != 2 || rep.Secrets[0].Name != "default" || rep.Secrets[1].Name != "ROOTCA" {
		t.Fatalf("secrets %+v, want default then ROOTCA", rep.Secrets)
	}
	if s := rep.Secrets[0]; s.Type != "tls_certificate" || !strings.HasPrefix(s.SPIFFEID, "spiffe://meshca.local/dev/uid/") || s.Profile != "ecdsa" {
		t.Errorf("default: %+v", s)
	}
	if s := rep.Secrets[1]; s.Type != "validation_context" || s.Roots != 1 || s.CRLs < 2 {
		t.Errorf("ROOTCA: %+v, want one root and the CRLs of the root and the intermediate", s)
	}
	checkMode(t, filepath.Join(out, "default.cert.pem"), modePublic)
	checkMode(t, filepath.Join(out, "default.key.pem"), modePrivate)
	checkMode(t, filepath.Join(out, "ROOTCA.bundle.pem"), modePublic)
	checkMode(t, filepath.Join(out, "ROOTCA.crl.pem"), modePublic)
	if len(rep.Verify) != 1 || !strings.Contains(rep.Verify[0], "-crl_check_all") {
		t.Fatalf("verify commands %q, want one with -crl_check_all", rep.Verify)
	}
	if o, err := exec.Command("sh", "-c", rep.Verify[0]).CombinedOutput(); err != nil || !strings.Contains(string(o), ": OK") {
		t.Fatalf("the printed %q: %v\n%s", rep.Verify[0], err, o)
	}

	// The text output lists the secrets and the command.
	r = mustSucceed(t, env, "sds", "fetch", "--socket", socket, "--out", out, "--fetch")
	for _, want := range []string{"name", "default", "ROOTCA", "crls", "openssl verify"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("text output lacks %q:\n%s", want, r.stdout)
		}
	}

	// A name this process may not have.
	start := time.Now()
	r = meshca(t, env, "sds", "fetch", "--socket", socket, "--out", out, "--name", "spiffe://meshca.local/not/mine", "--timeout", "1s")
	if r.code == exitOK || !strings.Contains(r.stderr, "spiffe://meshca.local/not/mine") || !strings.Contains(r.stderr, "registration entry") {
		t.Errorf("refused name: exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "spiffe___meshca.local_not_mine.cert.pem")); err == nil {
		t.Error("files written for a refused name")
	}
	t.Logf("refused after %s", time.Since(start).Round(time.Millisecond))

	// No agent.
	r = meshca(t, env, "sds", "fetch", "--socket", filepath.Join(t.TempDir(), "none.sock"), "--out", out)
	if r.code == exitOK || !strings.Contains(r.stderr, "no agent socket") {
		t.Errorf("no socket: exit %d, stderr %q", r.code, r.stderr)
	}
}
