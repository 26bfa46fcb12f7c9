package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

func TestHelpDescribesProductAndCommands(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--help"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("meshca --help: exit %d, stderr %q", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"meshca dev", "meshca x509 mint", "meshca agent", "meshca workload fetch", "meshca entry", "meshca node",
		"Raft", "SM2", "ECDSA", "SDS", "OPA", "24-hour", "--output"} {
		if !strings.Contains(out, want) {
			t.Errorf("meshca --help does not mention %q:\n%s", want, out)
		}
	}
}

func TestSubcommandHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"dev", "--help"}, []string{"MESHCA_DATA_DIR", "XDG_DATA_HOME", ".local/share/meshca", "MESHCA_KEK_FILE", "development only",
			"SIGTERM", "unix:uid:<your uid>", "meshca workload fetch --socket", "openssl verify", "agent.sock", "admin.sock", "--socket"}},
		{[]string{"agent", "--help"}, []string{"--server", "--join-token", "MESHCA_JOIN_TOKEN", "--trust-bundle", "--socket", "--data-dir",
			"--renew-fraction", "--config", "unknown key is an error", "only the first time", "SIGTERM", "meshca token create", "join_token", "meshca-profiles: sm2"}},
		{[]string{"workload", "fetch", "--help"}, []string{"svid.pem", "key.pem", "bundle.pem", "SPIFFE_ENDPOINT_SOCKET", "--timeout", "--all", "openssl verify",
			"--profile", "--spiffe-id", "meshca-profiles: sm2", "ECDSA SVIDs before SM2"}},
		{[]string{"entry", "create", "--help"}, []string{"--spiffe-id", "--parent-id", "--selector", "unix:uid:1000", "--ttl", "--dns", "--profile", "MESHCA_ADDR"}},
		{[]string{"entry", "update", "--help"}, []string{"--revision", "replace the whole list", "keep the entry's"}},
		{[]string{"token", "create", "--help"}, []string{"--quiet", "T=$(meshca token create", "mutual TLS"}},
		{[]string{"entry"}, []string{"create", "list", "show", "update", "delete"}},
		{[]string{"node"}, []string{"list", "show"}},
		{[]string{"x509", "mint", "--help"}, []string{"--spiffe-id", "--profile", "--data-dir", "--out", "--dns", "--ttl", "--kek-file", "svid.pem"}},
		{[]string{"x509"}, []string{"mint"}},
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

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"fail/unknown-command", []string{"bogus"}, `unknown command "bogus"`},
		{"fail/unknown-subcommand", []string{"x509", "bogus"}, `unknown command "bogus"`},
		{"fail/unknown-flag", []string{"dev", "--bogus"}, "unknown flag: --bogus"},
		{"fail/extra-argument", []string{"dev", "extra"}, `unknown command "extra"`},
		{"fail/bad-output", []string{"--output", "yaml", "dev"}, `unknown output format "yaml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			// A data directory in the environment, so a command that ran by
			// mistake would write here rather than in the real home.
			r := meshca(t, map[string]string{envDataDir: dir}, tc.args...)
			if r.code != exitUsage {
				t.Errorf("exit %d, want %d; stderr %q", r.code, exitUsage, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "meshca: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr = %q, want it to start with \"meshca: \" and contain %q", r.stderr, tc.want)
			}
			if !strings.Contains(r.stderr, "--help' for usage") {
				t.Errorf("stderr = %q, want a pointer to --help", r.stderr)
			}
			if snap := treeSnapshot(t, dir); len(snap) != 1 {
				t.Errorf("a usage error wrote files: %v", snap)
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"/tmp/a/b.pem", "/tmp/a/b.pem"},
		{"distid:1234567812345678", "distid:1234567812345678"},
		{"/tmp/my dir/x.pem", "'/tmp/my dir/x.pem'"},
		{"it's", `'it'\''s'`},
		{"", "''"},
		{"$HOME", "'$HOME'"},
	} {
		if got := shellQuote(tc.in); got != tc.want {
			t.Errorf("shellQuote(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// With --output json, errors are one line of JSON on stderr, with a code
// scripts can branch on, and nothing on stdout.
func TestJSONErrors(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	missing := filepath.Join(dir, "missing.sock")
	for _, tc := range []struct {
		name string
		args []string
		exit int
		code string
		want string
	}{
		{"fail/unknown-flag", []string{"dev", "--bogus", "--output", "json"}, exitUsage, "usage", "unknown flag: --bogus"},
		{"fail/unknown-flag-equals", []string{"--output=json", "status", "--bogus"}, exitUsage, "usage", "unknown flag: --bogus"},
		{"fail/usage-in-command", []string{"token", "create", "--kind", "bogus", "--output", "json"}, exitUsage, "usage", `--kind "bogus"`},
		{"fail/no-server", []string{"status", "--addr", "unix://" + missing, "--output", "json"}, exitError, "unavailable", "cannot reach the server's admin socket"},
		{"fail/no-workload-api", []string{"workload", "fetch", "--socket", missing, "--out", filepath.Join(dir, "o"), "--output", "json"}, exitError, "unavailable", "no Workload API socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := meshca(t, map[string]string{envDataDir: dir}, tc.args...)
			if r.code != tc.exit {
				t.Errorf("exit %d, want %d", r.code, tc.exit)
			}
			checkJSONError(t, r, tc.code, tc.want)
		})
	}
}

// checkJSONError checks that r failed with one JSON error line of code
// whose message contains want.
func checkJSONError(t *testing.T, r result, code, want string) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	dec := json.NewDecoder(strings.NewReader(r.stderr))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("stderr is not one line of JSON: %v\n%s", err, r.stderr)
	}
	if e.Code != code || !strings.Contains(e.Error, want) {
		t.Errorf("JSON error = %+v, want code %q and a message containing %q", e, code, want)
	}
	if r.stdout != "" {
		t.Errorf("stdout = %q, want nothing", r.stdout)
	}
}

// Help never promises what the program does not do.
func TestHelpSaysNothingUntrue(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		not  []string
	}{
		// Omitting --profile or --ttl keeps the entry's value.
		{[]string{"entry", "update", "--help"}, []string{`(default "ecdsa")`, "(default 24h"}},
		// There is no revoke command yet.
		{[]string{"entry", "delete", "--help"}, []string{"revoke"}},
		// dev is one server, not a cluster.
		{[]string{"dev", "--help"}, []string{"every server of the cluster"}},
	} {
		r := meshca(t, nil, tc.args...)
		for _, n := range tc.not {
			if strings.Contains(r.stdout, n) {
				t.Errorf("meshca %s says %q", strings.Join(tc.args, " "), n)
			}
		}
	}
}
