package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWorkloadFetchBadInput(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	// A stale socket: a file nobody listens on, as a crashed agent leaves.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	missing := filepath.Join(dir, "missing.sock")
	notSocket := writeTestFile(t, dir, "file", []byte("x"))
	home := t.TempDir()

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want []string
	}{
		{"fail/no-out", nil, []string{"--socket", stale}, exitUsage, []string{`required flag(s) "out" not set`}},
		{"fail/missing-socket", nil, []string{"--socket", missing}, exitError,
			[]string{"no Workload API socket at " + missing, "meshca dev", "meshca agent"}},
		{"fail/missing-socket-env", map[string]string{envWorkloadSocket: "unix://" + missing}, nil, exitError,
			[]string{"no Workload API socket at " + missing}},
		{"fail/default-socket", map[string]string{"HOME": home}, nil, exitError,
			[]string{"no Workload API socket at " + filepath.Join(home, ".local", "share", "meshca", agentSocketName)}},
		{"fail/default-socket-data-dir", map[string]string{envDataDir: dir}, nil, exitError,
			[]string{"no Workload API socket at " + filepath.Join(dir, agentSocketName)}},
		{"fail/not-a-socket", nil, []string{"--socket", notSocket}, exitError, []string{"is not a Unix socket"}},
		{"fail/stale-socket", nil, []string{"--socket", "unix://" + stale, "--timeout", "300ms"}, exitError,
			[]string{"cannot reach the Workload API at " + stale, "nothing is listening", "300ms"}},
		{"fail/tcp-env", map[string]string{envWorkloadSocket: "tcp://127.0.0.1:8081"}, nil, exitUsage,
			[]string{"$SPIFFE_ENDPOINT_SOCKET", "only Unix sockets"}},
		{"fail/relative-unix-url", nil, []string{"--socket", "unix://rel/agent.sock"}, exitUsage, []string{"three slashes"}},
		{"fail/bad-timeout", nil, []string{"--socket", stale, "--timeout", "0s"}, exitUsage, []string{"--timeout 0s"}},
		{"fail/extra-argument", nil, []string{"--socket", stale, "extra"}, exitUsage, []string{`unknown command "extra"`}},
		{"fail/unknown-profile", nil, []string{"--socket", stale, "--profile", "rsa"}, exitUsage, []string{`--profile "rsa"`, "ecdsa, sm2"}},
		{"fail/empty-profile", nil, []string{"--socket", stale, "--profile", "ecdsa,"}, exitUsage, []string{`--profile ""`}},
		{"fail/bad-spiffe-id", nil, []string{"--socket", stale, "--spiffe-id", "web"}, exitUsage, []string{`--spiffe-id "web"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(t.TempDir(), "out")
			args := append([]string{"workload", "fetch"}, tc.args...)
			if tc.name != "fail/no-out" {
				args = append(args, "--out", out)
			}
			r := meshca(t, tc.env, args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "meshca: ") {
				t.Errorf("stderr = %q, want it to start with \"meshca: \"", r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr = %q, want it to contain %q", r.stderr, w)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a failed fetch created --out: %v", err)
			}
		})
	}
}

func TestWorkloadSocketPath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, flag string
		env        map[string]string
		want       string
	}{
		{"ok/path", "/run/a.sock", nil, "/run/a.sock"},
		{"ok/unix-url", "unix:///run/a.sock", nil, "/run/a.sock"},
		{"ok/unix-path", "unix:/run/a.sock", nil, "/run/a.sock"},
		{"ok/flag-over-env", "/run/a.sock", map[string]string{envWorkloadSocket: "unix:///run/b.sock"}, "/run/a.sock"},
		{"ok/env", "", map[string]string{envWorkloadSocket: "unix:///run/b.sock", "HOME": "/h"}, "/run/b.sock"},
		{"ok/default", "", map[string]string{"HOME": "/h"}, "/h/.local/share/meshca/agent.sock"},
		{"fail/tcp", "tcp://127.0.0.1:1", nil, ""},
		{"fail/empty-unix", "unix:", nil, ""},
	} {
		a := &app{getenv: func(k string) string { return tc.env[k] }}
		got, err := a.workloadSocketPath(tc.flag)
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("%s: workloadSocketPath(%q) = %q, %v; want %q", tc.name, tc.flag, got, err, tc.want)
		}
	}
}
