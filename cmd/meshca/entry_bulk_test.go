package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/server"
)

// entriesFile writes an entries file in SPIRE's -data shape: entries for
// uids from..from+n-1, under parent.
func entriesFile(t *testing.T, dir, name, parent string, from, n int, edit func(i int, e map[string]any)) string {
	t.Helper()
	var es []map[string]any
	for i := from; i < from+n; i++ {
		e := map[string]any{
			"spiffe_id": fmt.Sprintf("spiffe://example.org/bulk/%d", i), "parent_id": parent,
			"selectors":     []map[string]string{{"type": "unix", "value": fmt.Sprintf("uid:%d", 10000+i)}},
			"x509_svid_ttl": 3600, "admin": false, "federates_with": []string{},
		}
		if edit != nil {
			edit(i, e)
		}
		es = append(es, e)
	}
	b, err := json.Marshal(map[string]any{"entries": es})
	if err != nil {
		t.Fatal(err)
	}
	return writeTestFile(t, dir, name, b)
}

// meshca entry create --file creates a SPIRE-shaped file's entries in
// batches, each whole or not at all, with one progress line per batch off a
// terminal and a summary; a refused batch stops it after the batches
// before it, and --skip-existing completes the import when run again;
// entry list pages through everything.
func TestEntryCreateFromFile(t *testing.T) {
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
	parent := "spiffe://example.org/meshca/server/s1"
	dir := t.TempDir()

	listIDs := func() []string {
		var out struct {
			Entries []entryReport `json:"entries"`
		}
		decodeJSON(t, mustSucceed(t, env, "entry", "list", "--page-size", "7", "--addr", addr, "--output", "json"), &out)
		var ids []string
		for _, e := range out.Entries {
			ids = append(ids, e.ID)
		}
		return ids
	}

	// 250 entries in batches of 100.
	first := entriesFile(t, dir, "first.json", parent, 0, 250, nil)
	r := mustSucceed(t, env, "entry", "create", "--file", first, "--batch-size", "100", "--addr", addr)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "batch 1/3: entries 0 to 99: 100 created, 0 skipped (100 of 250 done)") ||
		!strings.HasPrefix(lines[2], "batch 3/3: entries 200 to 249: 50 created") {
		t.Errorf("progress lines:\n%s", r.stderr)
	}
	if !strings.Contains(r.stdout, "250 of 250 entries created, 0 skipped as existing, in 3 batches of up to 100: done") {
		t.Errorf("summary: %s", r.stdout)
	}
	ids := listIDs()
	if len(ids) != 250 || len(slices.Compact(slices.Sorted(slices.Values(ids)))) != 250 {
		t.Fatalf("entry list over pages of 7: %d entries", len(ids))
	}
	if table := mustSucceed(t, env, "entry", "list", "--page-size", "100", "--addr", addr); strings.Count(table.stdout, "\n") != 251 || !strings.Contains(table.stdout, "spiffe://example.org/bulk/249") {
		t.Errorf("entry list table: %d lines", strings.Count(table.stdout, "\n"))
	}

	// A file whose entry 120 is refused by the server: batch 2 (entries 100
	// to 149) is not created, batch 1 is.
	second := entriesFile(t, dir, "second.json", parent, 300, 150, func(i int, e map[string]any) {
		if i == 420 {
			e["selectors"] = []map[string]string{{"type": "unix", "value": "uid:alice"}}
		}
	})
	r = meshca(t, env, "entry", "create", "--file", second, "--batch-size", "100", "--addr", addr)
	if r.code != exitError || !strings.Contains(r.stderr, "batch 2 of 2, entries 100 to 149 of the file") || !strings.Contains(r.stderr, "invalid entry 20 (spiffe://example.org/bulk/420)") {
		t.Fatalf("a refused batch: exit %d\nstderr %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "100 of 150 entries created") || !strings.Contains(r.stdout, "stopped at batch 2 (entries 100 to 149, none of them created)") {
		t.Errorf("summary of the refused batch: %s", r.stdout)
	}
	if n := len(listIDs()); n != 350 {
		t.Fatalf("%d entries after the refused batch, want 350", n)
	}

	// Fixed, and run again: the first 100 are skipped, the rest created.
	fixed := entriesFile(t, dir, "fixed.json", parent, 300, 150, nil)
	var sum bulkSummary
	decodeJSON(t, mustSucceed(t, env, "entry", "create", "--file", fixed, "--batch-size", "100", "--skip-existing", "--addr", addr, "--output", "json"), &sum)
	if sum.Entries != 150 || sum.Created != 50 || sum.Skipped != 100 || sum.Batches != 2 || len(sum.IDs) != 50 || len(sum.Existing) != 100 ||
		sum.Existing[99].Entry != 99 || sum.Existing[99].ExistingID == "" || sum.Failed != nil {
		t.Errorf("summary of the repeated import: %+v", sum)
	}
	if n := len(listIDs()); n != 400 {
		t.Fatalf("%d entries, want 400", n)
	}

	// Standard input, through the binary.
	stdinFile := entriesFile(t, dir, "stdin.json", parent, 500, 3, nil)
	in, err := os.Open(stdinFile)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command(meshcaBinary(t), "entry", "create", "--file", "-", "--addr", addr)
	cmd.Env, cmd.Stdin = processEnv("HOME="+env["HOME"]), in
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "3 of 3 entries created") {
		t.Fatalf("entry create --file -: %v\n%s", err, out)
	}

	// On a terminal (script(1) gives the command a pseudo-terminal): a
	// progress bar instead of lines, then the summary.
	if scriptTool, err := exec.LookPath("script"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("script (util-linux) is needed on CI for the terminal test: %v", err)
		}
		t.Logf("no script(1): the progress bar on a terminal is not checked: %v", err)
	} else {
		ttyFile := entriesFile(t, dir, "tty.json", parent, 700, 30, nil)
		line := strings.Join([]string{meshcaBinary(t), "entry", "create", "--file", ttyFile, "--batch-size", "10", "--addr", addr}, " ")
		cmd := exec.Command(scriptTool, "-qec", line, "/dev/null")
		cmd.Env = processEnv("HOME=" + env["HOME"])
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "creating entries") || !strings.Contains(string(out), "100%") || !strings.Contains(string(out), "(30/30)") ||
			strings.Contains(string(out), "batch 1/3") || !strings.Contains(string(out), "30 of 30 entries created") {
			t.Fatalf("entry create on a terminal: %v\n%q", err, out)
		}
	}

	// Bad command lines and files change nothing.
	unsupported := entriesFile(t, dir, "admin.json", parent, 600, 2, func(i int, e map[string]any) { e["admin"] = i == 601 })
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--file", first, "--spiffe-id", "spiffe://example.org/x"}, "with --file, every entry is described in the file"},
		{[]string{"--file", first, "--batch-size", "0"}, "--batch-size 0"},
		{[]string{"--file", first, "--batch-size", "501"}, "want 1 to 500"},
		{[]string{"--file", unsupported}, "entry 1: admin"},
		{[]string{"--file", writeTestFile(t, dir, "typo.json", []byte(`{"entries": [{"spife_id": "x"}]}`))}, `unknown key "spife_id"`},
		{[]string{"--skip-existing", "--spiffe-id", "spiffe://example.org/x", "--parent-id", parent, "--selector", "unix:uid:1"}, "used with --file"},
		{[]string{"--spiffe-id", "spiffe://example.org/x"}, `required flag(s) "parent-id", "selector" not set`},
	} {
		r := meshca(t, env, append([]string{"entry", "create", "--addr", addr}, tc.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("entry create %v: exit %d, stderr %q; want a usage error with %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	if r := meshca(t, env, "entry", "list", "--page-size", "0", "--addr", addr); r.code != exitUsage {
		t.Errorf("entry list --page-size 0: exit %d", r.code)
	}
	if n := len(listIDs()); n != 433 {
		t.Fatalf("%d entries after the refused commands, want 433", n)
	}
}
