package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// systemdAnalyze returns the path of systemd-analyze, installing Debian's
// systemd package first when it is missing and the test runs as root with
// apt-get. Without it the test fails on CI and is skipped elsewhere.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("systemd-analyze"); err == nil {
		return p
	}
	if os.Geteuid() == 0 {
		if apt, err := exec.LookPath("apt-get"); err == nil {
			t.Log("installing systemd for systemd-analyze")
			if out, err := exec.Command("sh", "-c", apt+" update -qq && DEBIAN_FRONTEND=noninteractive "+apt+" install -y -qq --no-install-recommends systemd").CombinedOutput(); err != nil {
				t.Logf("apt-get install systemd: %v\n%s", err, out)
			}
		}
	}
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("systemd-analyze is required on CI (Debian's systemd package): %v", err)
		}
		t.Skipf("systemd-analyze not found (apt-get install systemd): %v", err)
	}
	return p
}

// unitKeys reads the [Service] settings of a unit file: key to its
// values, in order (a key may repeat).
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is not key=value", path, line)
			}
			keys[k] = append(keys[k], v)
		}
	}
	return keys
}

var units = []string{"meshca-server.service", "meshca-agent.service"}

// The units pass systemd-analyze verify with no warning at all (verify
// exits 0 on an unknown key or a bad value, only saying "ignoring", so
// any output fails the test), and its offline security analysis rates
// them "OK" (exposure at most 2.5 of 10). The binary is pointed at one that
// exists, as verify requires.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze := systemdAnalyze(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(filepath.Join("systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "ExecStart=/usr/local/bin/meshca ") {
			t.Fatalf("%s: ExecStart does not run /usr/local/bin/meshca", u)
		}
		p := filepath.Join(dir, u)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/meshca", self)), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, u := range units {
		cmd := exec.Command(analyze, "security", "--offline=true", "--threshold=25", u)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Overall exposure level for "+u) {
			t.Errorf("systemd-analyze security %s: %v\n%s", u, err, out)
		}
	}

	// A unit with a misspelt setting is caught: the check can fail.
	bad := filepath.Join(dir, "bad.service")
	b, _ := os.ReadFile(paths[0])
	os.WriteFile(bad, []byte(strings.Replace(string(b), "NoNewPrivileges=", "NoNewPrivilege=", 1)), 0o644)
	if out, _ := exec.Command(analyze, "verify", bad).CombinedOutput(); !strings.Contains(string(out), "NoNewPrivilege") {
		t.Fatalf("verify did not report a misspelt key: %s", out)
	}
}

// Each unit has the hardening deployments rely on: a dedicated user, no
// new privileges, a read-only system, its state and socket directories
// from systemd, and no capability at all.
func TestSystemdUnitsHardening(t *testing.T) {
	want := map[string]string{
		"User": "meshca", "Group": "meshca", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"CapabilityBoundingSet": "", "AmbientCapabilities": "", "PrivateTmp": "yes", "PrivateDevices": "yes",
		"RestrictSUIDSGID": "yes", "UMask": "0077",
	}
	dirs := map[string]map[string]string{
		"meshca-server.service": {"StateDirectory": "meshca", "RuntimeDirectory": "meshca-server", "RuntimeDirectoryMode": "0750"},
		"meshca-agent.service":  {"StateDirectory": "meshca-agent", "RuntimeDirectory": "meshca", "RuntimeDirectoryMode": "0755"},
	}
	for _, u := range units {
		keys := unitKeys(t, filepath.Join("systemd", u))
		for k, v := range want {
			if got := keys[k]; len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s = %q, want exactly %q", u, k, got, v)
			}
		}
		for k, v := range dirs[u] {
			if got := keys[k]; len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s = %q, want %q", u, k, got, v)
			}
		}
	}
	b, err := os.ReadFile("systemd/sysusers.d/meshca.conf")
	if err != nil || !strings.Contains(string(b), "\nu meshca ") {
		t.Errorf("sysusers.d/meshca.conf does not create the meshca user: %v\n%s", err, b)
	}
}
