package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/server"
)

// authority show lists the roots, the server's intermediates and the JWT
// key, active, with when the next ones are prepared and activated.
func TestAuthorityShow(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	srv := startServer(t, env, sock, "--bootstrap", "--trust-domain", "example.org", "--data-dir", dataDir, "--node-id", "s1",
		"--raft-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0")
	waitLeader(t, env, sock, "s1")
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})
	res := mustSucceed(t, env, "authority", "show", "--addr", "unix://"+sock, "--output", "json")
	var out struct {
		Authorities []authorityReport `json:"authorities"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
		t.Fatalf("authority show --output json: %v\n%s", err, res.stdout)
	}
	kinds := map[string]int{}
	for _, a := range out.Authorities {
		if a.State != "ACTIVE" {
			t.Errorf("%s is %s, want ACTIVE in a new cluster", a.ID, a.State)
		}
		kinds[a.Kind+"/"+a.Profile]++
		if a.Kind != "root" && (a.PrepareAt == nil || a.ActivateAt == nil || !a.PrepareAt.Before(*a.ActivateAt) || !a.ActivateAt.Before(a.NotAfter)) {
			t.Errorf("%s: next prepared %v, next active %v, not after %v: want prepared < active < expiry", a.ID, a.PrepareAt, a.ActivateAt, a.NotAfter)
		}
		if a.Kind == "intermediate" && a.ServerID != "s1" {
			t.Errorf("%s: held by %q, want s1", a.ID, a.ServerID)
		}
	}
	for _, k := range []string{"root/ecdsa", "root/sm2", "intermediate/ecdsa", "intermediate/sm2", "jwt/ecdsa"} {
		if kinds[k] != 1 {
			t.Errorf("%d %s authorities, want 1: %v", kinds[k], k, kinds)
		}
	}
	table := mustSucceed(t, env, "authority", "show", "--addr", "unix://"+sock).stdout
	for _, want := range []string{"KIND", "NEXT ACTIVE", "intermediate", "ACTIVE", "s1"} {
		if !strings.Contains(table, want) {
			t.Errorf("authority show table lacks %q:\n%s", want, table)
		}
	}
}

// Root rotation through the CLI: --root --profile names the root, a dry
// run changes nothing, prepare prints the new root (in JSON too), show
// lists it PREPARED with its next step, activate with nothing prepared is
// refused, and activate makes it ACTIVE and the previous root OLD.
func TestAuthorityRootRotationCLI(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	srv := startServer(t, env, sock, "--bootstrap", "--trust-domain", "example.org", "--data-dir", dataDir, "--node-id", "s1",
		"--raft-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0")
	waitLeader(t, env, sock, "s1")
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})
	addr := "unix://" + sock
	roots := func() map[string]authorityReport {
		var out struct {
			Authorities []authorityReport `json:"authorities"`
		}
		res := mustSucceed(t, env, "authority", "show", "--addr", addr, "--output", "json")
		if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
			t.Fatal(err)
		}
		m := map[string]authorityReport{}
		for _, a := range out.Authorities {
			if a.Kind == "root" && a.Profile == "ecdsa" {
				m[a.State] = a
			}
		}
		return m
	}
	old := roots()["ACTIVE"]
	if r := meshca(t, env, "authority", "activate", "--root", "--profile", "ecdsa", "--addr", addr); r.code == exitOK || !strings.Contains(r.stderr, "no prepared ecdsa root") {
		t.Errorf("activate with nothing prepared: exit %d, %s", r.code, r.stderr)
	}
	if r := meshca(t, env, "authority", "prepare", old.ID, "--root", "--profile", "ecdsa", "--addr", addr); r.code == exitOK {
		t.Error("an ID and --root were accepted together")
	}
	dry := mustSucceed(t, env, "authority", "prepare", "--root", "--profile", "ecdsa", "--dry-run", "--addr", addr).stdout
	if !strings.Contains(dry, "dry run") || !strings.Contains(dry, "successor") {
		t.Errorf("dry-run prepare prints:\n%s", dry)
	}
	if len(roots()) != 1 {
		t.Fatal("a dry run prepared a root")
	}
	var rep authorityStepReport
	res := mustSucceed(t, env, "authority", "prepare", "--root", "--profile", "ecdsa", "--output", "json", "--addr", addr)
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil || rep.Successor == nil || rep.Successor.State != "PREPARED" || rep.Authority.ID != old.ID {
		t.Fatalf("prepare: %v\n%s", err, res.stdout)
	}
	p := roots()["PREPARED"]
	if p.ID != rep.Successor.ID || !strings.Contains(p.NextStep, "activate") {
		t.Errorf("show lists the prepared root as %+v", p)
	}
	table := mustSucceed(t, env, "authority", "show", "--addr", addr).stdout
	if !strings.Contains(table, p.ID) || !strings.Contains(table, "PREPARED") {
		t.Errorf("the table lacks the prepared root:\n%s", table)
	}
	res = mustSucceed(t, env, "authority", "activate", "--root", "--profile", "ecdsa", "--watch", "--interval", "50ms", "--output", "json", "--addr", addr)
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil || !rep.Done || rep.Authority.State != "ACTIVE" {
		t.Fatalf("activate --watch: %v\n%s", err, res.stdout)
	}
	if r := roots(); r["ACTIVE"].ID != p.ID || r["OLD"].ID != old.ID {
		t.Errorf("after activation: %+v", r)
	}
}
