package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestAgentBadInput(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	bundle := selfSignedBundle(t, tmp)
	notPEM := writeTestFile(t, tmp, "not.pem", []byte("hello"))
	unknownKey := writeTestFile(t, tmp, "unknown.json", []byte(`{"server": ["127.0.0.1:1"], "bogus_key": 1}`))
	serverNotList := writeTestFile(t, tmp, "server-string.json", []byte(`{"server": "127.0.0.1:1"}`))
	long := "/tmp/" + strings.Repeat("s", maxSocketPath) + ".sock"
	srv := []string{"--server", "127.0.0.1:1"}

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want []string
	}{
		{"fail/no-server", nil, []string{"--trust-bundle", bundle, "--join-token", "t"}, exitUsage, []string{"--server is required"}},
		{"fail/server-without-port", nil, []string{"--server", "nohost", "--trust-bundle", bundle, "--join-token", "t"}, exitUsage,
			[]string{`--server "nohost": want a server's API address, host:port`}},
		{"fail/server-bad-port", nil, []string{"--server", "10.0.0.1:https", "--trust-bundle", bundle, "--join-token", "t"}, exitUsage,
			[]string{`--server "10.0.0.1:https": the port must be a number`}},
		{"fail/server-wildcard", nil, []string{"--server", "0.0.0.0:8443", "--trust-bundle", bundle, "--join-token", "t"}, exitUsage,
			[]string{"not a wildcard"}},
		{"fail/no-trust-bundle", nil, append([]string{"--join-token", "t"}, srv...), exitUsage,
			[]string{"--trust-bundle is required", "server/bundle.pem"}},
		{"fail/missing-trust-bundle", nil, append([]string{"--trust-bundle", filepath.Join(tmp, "nope.pem"), "--join-token", "t"}, srv...), exitError,
			[]string{"trust bundle", "no such file"}},
		{"fail/trust-bundle-not-pem", nil, append([]string{"--trust-bundle", notPEM, "--join-token", "t"}, srv...), exitError,
			[]string{"holds no certificate"}},
		{"fail/no-join-token-no-identity", nil, append([]string{"--trust-bundle", bundle}, srv...), exitError,
			[]string{"has no identity yet", "--join-token", "MESHCA_JOIN_TOKEN", "meshca token create"}},
		{"fail/bad-renew-fraction", nil, append([]string{"--trust-bundle", bundle, "--renew-fraction", "1.5"}, srv...), exitUsage,
			[]string{"--renew-fraction 1.5"}},
		{"fail/socket-too-long", nil, append([]string{"--trust-bundle", bundle, "--join-token", "t", "--socket", long}, srv...), exitUsage,
			[]string{"longer than Unix sockets allow", "--socket"}},
		{"fail/sds-names-collide", nil, append([]string{"--trust-bundle", bundle, "--join-token", "t", "--sds-default-svid-name", "ROOTCA"}, srv...), exitUsage,
			[]string{"SDS names", "ROOTCA"}},
		{"fail/sds-name-spiffe-id", nil, append([]string{"--trust-bundle", bundle, "--join-token", "t", "--sds-all-bundles-name", "spiffe://x/y"}, srv...), exitUsage,
			[]string{"SDS names", "spiffe://x/y"}},
		{"fail/bad-log-level", nil, append([]string{"--trust-bundle", bundle, "--log-level", "loud"}, srv...), exitUsage,
			[]string{`--log-level "loud"`}},
		{"fail/config-unknown-key", nil, []string{"--config", unknownKey}, exitUsage,
			[]string{`unknown key "bogus_key"`, "join_token", "trust_bundle"}},
		{"fail/config-server-not-a-list", nil, []string{"--config", serverNotList}, exitUsage,
			[]string{"not a valid JSON object"}},
		{"fail/extra-argument", nil, []string{"extra"}, exitUsage, []string{`unknown command "extra"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dataDir := filepath.Join(shortTempDir(t), "d")
			env := tc.env
			if env == nil {
				env = testEnv(t)
			}
			r := meshca(t, env, append([]string{"agent", "--data-dir", dataDir}, tc.args...)...)
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
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("a refused start created the data directory: %v", err)
			}
		})
	}
}

func TestAgentConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := writeTestFile(t, dir, "agent.json", []byte(`{"server": ["10.0.0.1:8443", "10.0.0.2:8443"], "trust_bundle": "bundle.pem",
		"data_dir": "/var/lib/meshca", "socket": "run/agent.sock", "join_token": "secret", "renew_fraction": 0.6, "log_level": "debug"}`))
	c, err := loadAgentConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	want := agentConfig{Server: []string{"10.0.0.1:8443", "10.0.0.2:8443"}, TrustBundle: filepath.Join(dir, "bundle.pem"),
		DataDir: "/var/lib/meshca", Socket: filepath.Join(dir, "run", "agent.sock"), JoinToken: "secret", RenewFraction: 0.6, LogLevel: "debug"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("loadAgentConfig = %+v, want %+v", c, want)
	}
	// Flags given on the command line win; the others keep the file's values.
	cmd := (&app{}).newAgentCommand()
	if err := cmd.Flags().Parse([]string{"--server", "10.0.0.3:8443", "--renew-fraction", "0.5"}); err != nil {
		t.Fatal(err)
	}
	c.override(cmd.Flags(), &agentConfig{Server: []string{"10.0.0.3:8443"}, RenewFraction: 0.5})
	want.Server, want.RenewFraction = []string{"10.0.0.3:8443"}, 0.5
	if !reflect.DeepEqual(c, want) {
		t.Errorf("after flags: %+v, want %+v", c, want)
	}
	if keys := strings.Join(jsonKeys[agentConfig](), ","); keys != "server,join_token,trust_bundle,socket,data_dir,renew_fraction,log_level,log_format,"+
		"x509pop_cert,x509pop_key,k8s_psat_cluster,k8s_psat_token_path,k8s_kubelet_url,k8s_kubelet_token,k8s_kubelet_ca,k8s_kubelet_insecure,"+
		"sds_default_svid_name,sds_default_bundle_name,sds_all_bundles_name,sds_disable_spiffe_validator,"+
		"bundle_addr,ext_authz_bundle,ext_authz_decision,http_addr" {
		t.Errorf("agent config keys = %s", keys)
	}
}
