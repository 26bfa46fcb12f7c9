package main

import (
	"bytes"
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
	for _, want := range []string{"meshca dev", "meshca x509 mint", "Raft", "SM2", "ECDSA", "SDS", "OPA", "24-hour", "--output"} {
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
		{[]string{"dev", "--help"}, []string{"MESHCA_DATA_DIR", "XDG_DATA_HOME", ".local/share/meshca", "MESHCA_KEK_FILE", "development only", "not built yet"}},
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
