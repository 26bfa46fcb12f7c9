package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

// decodeJSON decodes the JSON output of a command into v, strictly.
func decodeJSON(t *testing.T, r result, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("JSON output: %v\n%s", err, r.stdout)
	}
}

// TestEntryNodeAgentAndFetch runs a bootstrapped server and `meshca agent`
// in-process, manages entries and nodes through the operator commands, and
// fetches the caller's SVIDs of both profiles with `meshca workload fetch`.
func TestEntryNodeAgentAndFetch(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	addr := "unix://" + sock
	ports := freePorts(t, 2)
	srv := startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org")
	waitLeader(t, env, sock, "s1")
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})

	// An agent attests with a join token.
	var tok tokenReport
	decodeJSON(t, mustSucceed(t, env, "token", "create", "--addr", addr, "--output", "json"), &tok)
	h := sha256.Sum256([]byte(tok.Token))
	agentID := "spiffe://example.org/meshca/agent/join_token/" + hex.EncodeToString(h[:16])
	agentDir := shortTempDir(t)
	socket := filepath.Join(agentDir, "w.sock")
	bundle := filepath.Join(dataDir, "server", "bundle.pem")
	agentArgs := []string{"agent", "--server", ports[1], "--trust-bundle", bundle, "--data-dir", agentDir, "--socket", socket}
	ag := startBackground(t, map[string]string{"HOME": env["HOME"], envJoinToken: tok.Token}, agentArgs...)
	waitFor(t, 20*time.Second, "the agent attests", func() (bool, string) {
		ag.running(t)
		r := meshca(t, env, "node", "list", "--addr", addr, "--output", "json")
		return strings.Contains(r.stdout, agentID), r.stdout + r.stderr
	})
	if strings.Contains(ag.stderr.String(), tok.Token) || strings.Contains(srv.stderr.String(), tok.Token) {
		t.Error("the join token was logged")
	}

	// Nodes.
	var node nodeReport
	decodeJSON(t, mustSucceed(t, env, "node", "show", agentID, "--addr", addr, "--output", "json"), &node)
	if node.SPIFFEID != agentID || node.Attestor != "join_token" || len(node.Selectors) != 1 ||
		node.Selectors[0] != (selectorReport{"join_token", hex.EncodeToString(h[:16])}) || node.Banned || time.Until(node.Expires) < 23*time.Hour {
		t.Errorf("node show = %+v", node)
	}
	r := mustSucceed(t, env, "node", "show", agentID, "--addr", addr)
	for _, want := range []string{agentID, "join_token", "selector", "SVID expires"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("node show does not show %q:\n%s", want, r.stdout)
		}
	}
	r = mustSucceed(t, env, "node", "list", "--addr", addr)
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "SPIFFE ID ATTESTOR ATTESTED EXPIRES BANNED" || !strings.HasPrefix(lines[1], agentID) {
		t.Errorf("node list:\n%s", r.stdout)
	}

	// Entries for this process's uid, one per profile.
	uid := strconv.Itoa(os.Getuid())
	var app, sm2 entryReport
	decodeJSON(t, mustSucceed(t, env, "entry", "create", "--spiffe-id", "spiffe://example.org/app", "--parent-id", agentID,
		"--selector", "unix:uid:"+uid, "--ttl", "1h", "--dns", "app.example.org", "--addr", addr, "--output", "json"), &app)
	if app.ID == "" || app.SPIFFEID != "spiffe://example.org/app" || app.ParentID != agentID || joinSelectors(app.Selectors) != "unix:uid:"+uid ||
		app.TTLSeconds != 3600 || strings.Join(app.DNSNames, ",") != "app.example.org" || app.Profile != ca.ProfileECDSA || app.Revision == 0 {
		t.Errorf("entry create = %+v", app)
	}
	r = mustSucceed(t, env, "entry", "create", "--spiffe-id", "spiffe://example.org/app-sm2", "--parent-id", agentID,
		"--selector", "unix:uid:"+uid, "--profile", "sm2", "--addr", addr)
	for _, want := range []string{"spiffe://example.org/app-sm2", "unix:uid:" + uid, "sm2", "24h0m0s", "revision"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("entry create (table) does not show %q:\n%s", want, r.stdout)
		}
	}
	var listed struct{ Entries []entryReport }
	decodeJSON(t, mustSucceed(t, env, "entry", "list", "--addr", addr, "--output", "json"), &listed)
	if len(listed.Entries) != 2 {
		t.Fatalf("entry list: %d entries, want 2", len(listed.Entries))
	}
	for _, e := range listed.Entries {
		if e.SPIFFEID == "spiffe://example.org/app-sm2" {
			sm2 = e
		}
	}
	listed.Entries = nil
	decodeJSON(t, mustSucceed(t, env, "entry", "list", "--parent-id", agentID, "--spiffe-id", "spiffe://example.org/app", "--addr", addr, "--output", "json"), &listed)
	if len(listed.Entries) != 1 || listed.Entries[0].ID != app.ID {
		t.Errorf("entry list --parent-id --spiffe-id = %+v, want only %s", listed.Entries, app.ID)
	}
	r = mustSucceed(t, env, "entry", "list", "--addr", addr)
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "ID SPIFFE ID PARENT ID SELECTORS TTL PROFILE REVISION" {
		t.Errorf("entry list:\n%s", r.stdout)
	}
	r = mustSucceed(t, env, "entry", "show", app.ID, "--addr", addr)
	for _, want := range []string{app.ID, "spiffe://example.org/app", agentID, "unix:uid:" + uid, "1h0m0s", "app.example.org", "ecdsa"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("entry show does not show %q:\n%s", want, r.stdout)
		}
	}

	// The caller gets both SVIDs from the agent when it asks for both
	// profiles, ECDSA first: --all writes both.
	out := filepath.Join(t.TempDir(), "svid")
	var fetched fetchReport
	waitFor(t, 20*time.Second, "workload fetch returns both SVIDs", func() (bool, string) {
		r := meshca(t, env, "workload", "fetch", "--socket", socket, "--out", out, "--all", "--profile", "ecdsa,sm2", "--timeout", "5s", "--output", "json")
		if r.code != exitOK {
			return false, r.stderr
		}
		fetched = fetchReport{}
		decodeJSON(t, r, &fetched)
		return len(fetched.SVIDs) == 2, r.stdout
	})
	if fetched.Socket != socket {
		t.Errorf("fetch report socket = %q, want %q", fetched.Socket, socket)
	}
	if fetched.SVIDs[0].Profile != ca.ProfileECDSA || fetched.SVIDs[1].Profile != ca.ProfileSM2 {
		t.Errorf("fetch order: %s then %s, want ecdsa before sm2", fetched.SVIDs[0].Profile, fetched.SVIDs[1].Profile)
	}
	for i, s := range fetched.SVIDs {
		if s.Files == nil {
			t.Fatalf("SVID %d (%s) was not written", i, s.SPIFFEID)
		}
		suffix := ".pem"
		if i > 0 {
			suffix = "." + strconv.Itoa(i) + ".pem"
		}
		if s.Files.SVID != filepath.Join(out, "svid"+suffix) || s.Files.Key != filepath.Join(out, "key"+suffix) || s.Files.Bundle != filepath.Join(out, "bundle"+suffix) {
			t.Errorf("SVID %d files = %+v", i, *s.Files)
		}
		checkMode(t, s.Files.Key, modePrivate)
		checkMode(t, s.Files.SVID, modePublic)
		checkLeafAndKey(t, s.Profile, s.Files.SVID, s.Files.Key, s.SPIFFEID)
		wantProfile := map[string]string{"spiffe://example.org/app": ca.ProfileECDSA, "spiffe://example.org/app-sm2": ca.ProfileSM2}[s.SPIFFEID]
		if s.Profile != wantProfile {
			t.Errorf("SVID %s has profile %q, want %q", s.SPIFFEID, s.Profile, wantProfile)
		}
		if s.Profile == ca.ProfileECDSA && s.NotAfter.Sub(s.NotBefore) != time.Hour+ca.Backdate {
			t.Errorf("ecdsa SVID lifetime = %s, want the entry's 1h", s.NotAfter.Sub(s.NotBefore))
		}
		// The printed openssl commands verify the files, SM2 link by link.
		if _, err := exec.LookPath("openssl"); err == nil || os.Getenv("CI") != "" {
			requireOpenSSL(t)
			for _, c := range s.Verify {
				if out, err := exec.Command("sh", "-c", c).CombinedOutput(); err != nil || !strings.Contains(string(out), ": OK") {
					t.Errorf("printed %s verify command failed: %s\n%v\n%s", s.Profile, c, err, out)
				}
			}
		}
	}
	checkMode(t, filepath.Join(agentDir, "agent", "key.pem"), modePrivate)
	r = mustSucceed(t, env, "workload", "fetch", "--socket", socket, "--out", out, "--profile", "sm2,ecdsa")
	for _, want := range []string{"returned 2 X509-SVIDs", "0  spiffe://example.org/app  ecdsa (the default)", "1  spiffe://example.org/app-sm2  sm2", "openssl verify"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("workload fetch does not show %q:\n%s", want, r.stdout)
		}
	}
	// Without --profile, fetch is a standard client: ECDSA only. With
	// --profile sm2, SM2 only. --spiffe-id picks the SVID written.
	for _, tc := range []struct {
		args     []string
		want     []string
		written  string
		wantCode int
	}{
		{args: nil, want: []string{"spiffe://example.org/app"}, written: "spiffe://example.org/app"},
		{args: []string{"--profile", "sm2"}, want: []string{"spiffe://example.org/app-sm2"}, written: "spiffe://example.org/app-sm2"},
		{args: []string{"--profile", "ecdsa,sm2", "--spiffe-id", "spiffe://example.org/app-sm2"},
			want: []string{"spiffe://example.org/app-sm2", "spiffe://example.org/app"}, written: "spiffe://example.org/app-sm2"},
	} {
		dir := filepath.Join(t.TempDir(), "pick")
		r := mustSucceed(t, env, append([]string{"workload", "fetch", "--socket", socket, "--out", dir, "--output", "json"}, tc.args...)...)
		var rep fetchReport
		decodeJSON(t, r, &rep)
		var got []string
		for _, s := range rep.SVIDs {
			got = append(got, s.SPIFFEID)
		}
		if strings.Join(got, " ") != strings.Join(tc.want, " ") || rep.SVIDs[0].Files == nil {
			t.Errorf("workload fetch %v: SVIDs %v, want %v, the first written", tc.args, got, tc.want)
			continue
		}
		checkLeafAndKey(t, rep.SVIDs[0].Profile, filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"), tc.written)
	}
	r = meshca(t, env, "workload", "fetch", "--socket", socket, "--out", t.TempDir(), "--spiffe-id", "spiffe://example.org/app-sm2")
	if r.code != exitError || !strings.Contains(r.stderr, "no X509-SVID for --spiffe-id spiffe://example.org/app-sm2, only: spiffe://example.org/app (ecdsa)") ||
		!strings.Contains(r.stderr, "--profile") {
		t.Errorf("fetch --spiffe-id of an SVID of a profile not asked for: exit %d, stderr %q", r.code, r.stderr)
	}

	// Updates: the flags given change, the others stay; a stale revision is refused.
	var updated entryReport
	decodeJSON(t, mustSucceed(t, env, "entry", "update", app.ID, "--revision", strconv.FormatUint(app.Revision, 10), "--ttl", "2h",
		"--addr", addr, "--output", "json"), &updated)
	if updated.TTLSeconds != 7200 || updated.Revision <= app.Revision || updated.SPIFFEID != app.SPIFFEID ||
		joinSelectors(updated.Selectors) != joinSelectors(app.Selectors) || strings.Join(updated.DNSNames, ",") != "app.example.org" {
		t.Errorf("entry update = %+v, want only the TTL changed (2h) and a new revision", updated)
	}
	r = meshca(t, env, "entry", "update", app.ID, "--revision", strconv.FormatUint(app.Revision, 10), "--ttl", "3h", "--addr", addr)
	if r.code != exitError || !strings.HasPrefix(r.stderr, "meshca: update entry "+app.ID+": ") || strings.Contains(r.stderr, "rpc error") {
		t.Errorf("update with a stale revision: exit %d, stderr %q; want exit 1 with the server's reason", r.code, r.stderr)
	}
	t.Logf("stale revision: %s", strings.TrimSpace(r.stderr))
	rev := updated.Revision
	updated = entryReport{}
	decodeJSON(t, mustSucceed(t, env, "entry", "update", app.ID, "--revision", strconv.FormatUint(rev, 10), "--dns", "",
		"--addr", addr, "--output", "json"), &updated)
	if len(updated.DNSNames) != 0 || updated.TTLSeconds != 7200 {
		t.Errorf("entry update --dns \"\" = %+v, want no DNS names and the TTL kept", updated)
	}

	// Mistakes: the server's reason (exit 1) or a usage error (exit 2).
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"fail/unknown-selector", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:color:blue"},
			exitError, []string{"meshca: create entry for spiffe://example.org/x: ", "unknown selector unix:color", "known selectors: ", "unix:uid", "k8s:ns"}},
		{"fail/selector-without-value", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix"},
			exitError, []string{"selector"}},
		{"fail/foreign-spiffe-id", []string{"entry", "create", "--spiffe-id", "spiffe://other.org/x", "--parent-id", agentID, "--selector", "unix:uid:1"},
			exitError, []string{"not in trust domain example.org"}},
		{"fail/bad-spiffe-id", []string{"entry", "create", "--spiffe-id", "not-an-id", "--parent-id", agentID, "--selector", "unix:uid:1"},
			exitError, []string{"SPIFFE ID"}},
		{"fail/bad-profile", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:uid:1", "--profile", "rsa"},
			exitError, []string{`"rsa"`}},
		{"fail/ttl-out-of-range", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:uid:1", "--ttl", "1s"},
			exitError, []string{"TTL 1s"}},
		{"fail/missing-parent-id", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--selector", "unix:uid:1"},
			exitUsage, []string{`required flag(s) "parent-id" not set`}},
		{"fail/missing-selector", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID},
			exitUsage, []string{`required flag(s) "selector" not set`}},
		{"fail/fractional-ttl", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:uid:1", "--ttl", "1500ms"},
			exitUsage, []string{"whole seconds"}},
		{"fail/uid-not-numeric", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:uid:abc"},
			exitError, []string{"selector unix:uid:abc: a uid is a non-negative decimal number"}},
		{"fail/uid-trailing-garbage", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:uid:1000x"},
			exitError, []string{"unix:uid:1000x: a uid is a non-negative decimal number"}},
		{"fail/gid-negative", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:gid:-1"},
			exitError, []string{"unix:gid:-1: a gid is a non-negative decimal number"}},
		{"fail/relative-path", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:path:bin/app"},
			exitError, []string{"unix:path:bin/app: the path must be absolute"}},
		{"fail/bad-sha256", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:sha256:zz"},
			exitError, []string{"unix:sha256:zz: want 64 hexadecimal digits"}},
		{"fail/leading-space", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:user: alice"},
			exitError, []string{"unix:user: alice: the value has leading or trailing spaces"}},
		{"fail/bad-namespace", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "k8s:ns:Prod"},
			exitError, []string{"k8s:ns:Prod: a namespace"}},
		{"fail/selector-twice", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", agentID, "--selector", "unix:uid:1", "--selector", "unix:uid:1"},
			exitError, []string{"selector unix:uid:1 is given twice"}},
		{"fail/duplicate", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/app", "--parent-id", agentID, "--selector", "unix:uid:" + uid},
			exitError, []string{"entry " + app.ID + " already gives spiffe://example.org/app to the same selectors under the same parent"}},
		{"fail/unknown-parent", []string{"entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", "spiffe://example.org/meshca/agent/join_token/0123456789abcdef0123456789abcdef", "--selector", "unix:uid:1"},
			exitError, []string{"parent ID spiffe://example.org/meshca/agent/join_token/0123456789abcdef0123456789abcdef is no attested agent", "--allow-unknown-parent"}},
		{"fail/update-to-unknown-parent", []string{"entry", "update", app.ID, "--revision", "99", "--parent-id", "spiffe://example.org/meshca/agent/x509pop/abc"},
			exitError, []string{"is no attested agent"}},
		{"fail/update-without-revision", []string{"entry", "update", app.ID, "--ttl", "1h"}, exitUsage, []string{`required flag(s) "revision" not set`}},
		{"fail/update-bad-selector", []string{"entry", "update", app.ID, "--revision", "99", "--selector", "unix:color:blue"},
			exitError, []string{"unknown selector unix:color"}},
		{"fail/show-unknown", []string{"entry", "show", "nope"}, exitError, []string{`show entry nope: no entry "nope"`}},
		{"fail/show-args", []string{"entry", "show"}, exitUsage, []string{"accepts 1 arg(s)"}},
		{"fail/delete-unknown", []string{"entry", "delete", "nope"}, exitError, []string{"delete entry nope: "}},
		{"fail/node-show-unknown", []string{"node", "show", "spiffe://example.org/meshca/agent/x"}, exitError, []string{`no node "spiffe://example.org/meshca/agent/x"`}},
	} {
		r := meshca(t, env, append(tc.args, "--addr", addr)...)
		if r.code != tc.code {
			t.Errorf("%s: exit %d, want %d; stderr %q", tc.name, r.code, tc.code, r.stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%s: stderr = %q, want it to contain %q", tc.name, r.stderr, w)
			}
		}
		if strings.Contains(r.stderr, "rpc error") {
			t.Errorf("%s: the error shows gRPC's wrapping: %q", tc.name, r.stderr)
		}
	}

	// An entry for an agent that attests later, by another method, with
	// --allow-unknown-parent; an entry for the agent of a join token not
	// used yet needs no flag. The same selectors in another order are a
	// duplicate.
	later := "spiffe://example.org/meshca/agent/x509pop/0a1b2c"
	var lat entryReport
	decodeJSON(t, mustSucceed(t, env, "entry", "create", "--spiffe-id", "spiffe://example.org/later", "--parent-id", later,
		"--selector", "unix:uid:1", "--selector", "unix:gid:2", "--allow-unknown-parent", "--addr", addr, "--output", "json"), &lat)
	if lat.ParentID != later {
		t.Errorf("entry with --allow-unknown-parent = %+v", lat)
	}
	if r := meshca(t, env, "entry", "create", "--spiffe-id", "spiffe://example.org/later", "--parent-id", later,
		"--selector", "unix:gid:2", "--selector", "unix:uid:1", "--allow-unknown-parent", "--addr", addr); r.code != exitError || !strings.Contains(r.stderr, "entry "+lat.ID+" already gives") {
		t.Errorf("duplicate with selectors reordered: exit %d, stderr %q", r.code, r.stderr)
	}
	var pending tokenReport
	decodeJSON(t, mustSucceed(t, env, "token", "create", "--addr", addr, "--output", "json"), &pending)
	ph := sha256.Sum256([]byte(pending.Token))
	mustSucceed(t, env, "entry", "create", "--spiffe-id", "spiffe://example.org/pending", "--parent-id", "spiffe://example.org/meshca/agent/join_token/"+hex.EncodeToString(ph[:16]),
		"--selector", "unix:uid:1", "--addr", addr)
	mustSucceed(t, env, "entry", "delete", lat.ID, "--addr", addr)
	listed.Entries = nil
	decodeJSON(t, mustSucceed(t, env, "entry", "list", "--spiffe-id", "spiffe://example.org/pending", "--addr", addr, "--output", "json"), &listed)
	if len(listed.Entries) != 1 {
		t.Fatalf("entry list --spiffe-id spiffe://example.org/pending: %+v", listed.Entries)
	}
	mustSucceed(t, env, "entry", "delete", listed.Entries[0].ID, "--addr", addr)

	// With --output json, a server's refusal is JSON with its status.
	checkJSONError(t, meshca(t, env, "entry", "show", "nope", "--addr", addr, "--output", "json"), "not_found", `show entry nope: no entry "nope"`)
	checkJSONError(t, meshca(t, env, "entry", "create", "--spiffe-id", "spiffe://example.org/app", "--parent-id", agentID,
		"--selector", "unix:uid:"+uid, "--addr", addr, "--output", "json"), "already_exists", "already gives")

	// Delete.
	r = mustSucceed(t, env, "entry", "delete", sm2.ID, "--addr", addr)
	if strings.TrimSpace(r.stdout) != "deleted entry "+sm2.ID {
		t.Errorf("entry delete: %q", r.stdout)
	}
	listed.Entries = nil
	decodeJSON(t, mustSucceed(t, env, "entry", "list", "--addr", addr, "--output", "json"), &listed)
	if len(listed.Entries) != 1 || listed.Entries[0].ID != app.ID {
		t.Errorf("after delete, entry list = %+v, want only %s", listed.Entries, app.ID)
	}

	// The agent restarts from its stored identity, without a token.
	if code := ag.stop(t); code != exitOK {
		t.Fatalf("agent exited %d\nstderr:\n%s", code, ag.stderr)
	}
	ag = startBackground(t, env, agentArgs...)
	waitFor(t, 20*time.Second, "the restarted agent serves the remaining SVID", func() (bool, string) {
		ag.running(t)
		r := meshca(t, env, "workload", "fetch", "--socket", socket, "--out", out, "--timeout", "5s", "--output", "json")
		if r.code != exitOK {
			return false, r.stderr
		}
		fetched = fetchReport{}
		decodeJSON(t, r, &fetched)
		return len(fetched.SVIDs) == 1 && fetched.SVIDs[0].SPIFFEID == "spiffe://example.org/app", r.stdout
	})
	if !strings.Contains(ag.stderr.String(), "stored identity") {
		t.Errorf("the restarted agent does not say it uses its stored identity:\n%s", ag.stderr)
	}
	if r := mustSucceed(t, env, "node", "list", "--addr", addr); strings.Count(strings.TrimSpace(r.stdout), "\n") != 1 {
		t.Errorf("the restart attested a new node:\n%s", r.stdout)
	}
}
