package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/bench"
	"github.com/meshca/meshca/server"
)

// meshca bench issue against meshca dev, in both modes: certificates
// issued without errors, the dev server found on this host for its CPU
// figures (here: this very process), progress lines on stderr, the JSON
// report on stdout, and no entry left behind.
func TestBenchIssueAgainstDev(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	dev := startBackground(t, env, "dev", "--data-dir", dataDir, "--output", "json")
	rep := devReportOf(t, dev)
	admin := "unix://" + filepath.Join(dataDir, server.AdminSocketName)
	for _, args := range [][]string{
		{"--server", rep.Server.APIAddr, "--concurrency", "4", "--agents", "2", "--batch", "4"},
		{"--mode", "mint", "--concurrency", "2"},
	} {
		r := mustSucceed(t, env, append([]string{"bench", "issue", "--addr", admin, "--duration", "1s", "--warmup", "200ms", "--output", "json"}, args...)...)
		var res bench.Result
		dec := json.NewDecoder(strings.NewReader(r.stdout))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&res); err != nil {
			t.Fatalf("bench issue %v: %v\n%s", args, err, r.stdout)
		}
		if res.Certificates == 0 || res.Errors != 0 {
			t.Errorf("bench issue %v: %d certificates, %d errors %v", args, res.Certificates, res.Errors, res.ErrorSamples)
		}
		if res.Server == nil || res.Server.CPUPerCertificate <= 0 {
			t.Errorf("bench issue %v: server figures %+v; want the local dev server's", args, res.Server)
		}
		if !strings.Contains(r.stderr, "bench: ") || !strings.Contains(r.stderr, "certs/s") {
			t.Errorf("bench issue %v: no progress line on stderr: %q", args, r.stderr)
		}
	}
	entries := mustSucceed(t, env, "entry", "list", "--addr", admin, "--output", "json")
	if strings.Contains(entries.stdout, "meshca-bench") {
		t.Errorf("entries left behind:\n%s", entries.stdout)
	}
}

func TestBenchIssueBadUsage(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "issue"}, "--server"},
		{[]string{"bench", "issue", "--mode", "x"}, "--mode"},
		{[]string{"bench", "issue", "--mode", "mint", "--batch", "4"}, "one CSR per call"},
	} {
		r := meshca(t, env, tc.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("meshca %v: exit %d, stderr %q; want a usage error about %s", tc.args, r.code, r.stderr, tc.want)
		}
	}
}
