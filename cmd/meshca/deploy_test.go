package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/server"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// deployDir is the repository's deploy directory.
const deployDir = "../../deploy"

// checkArgs parses args (a deploy file's command line, without the binary)
// as meshca does, and fails on a command or flag meshca does not have. It
// returns the --config path and the flags given.
func checkArgs(t *testing.T, where string, args []string) (string, *cobra.Command) {
	t.Helper()
	root := (&app{stdout: &syncBuffer{}, stderr: &syncBuffer{}, getenv: func(string) string { return "" }, output: outputTable}).newRootCommand()
	cmd, rest, err := root.Find(args)
	if err != nil || cmd == root {
		t.Fatalf("%s: meshca %s: no such command (%v)", where, strings.Join(args, " "), err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("%s: meshca %s: %v", where, strings.Join(args, " "), err)
	}
	config, _ := cmd.Flags().GetString("config")
	return config, cmd
}

// serverFlags returns the values of the flags given to cmd (a server
// command parsed by checkArgs) that deploy files pass.
func serverFlags(cmd *cobra.Command) serverConfig {
	var f serverConfig
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		switch fl.Name {
		case "node-id":
			f.NodeID = fl.Value.String()
		case "raft-addr":
			f.RaftAddr = fl.Value.String()
		case "api-addr":
			f.APIAddr = fl.Value.String()
		case "http-addr":
			f.HTTPAddr = fl.Value.String()
		}
	})
	return f
}

// execStart returns the command line of a unit's ExecStart, without the
// binary.
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "systemd", unit))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			f := strings.Fields(v)
			if f[0] != "/usr/local/bin/meshca" {
				t.Fatalf("%s: ExecStart runs %s", unit, f[0])
			}
			return f[1:]
		}
	}
	t.Fatalf("%s: no ExecStart", unit)
	return nil
}

// serverFromFile loads a server configuration as meshca server does: the
// file, then the flags given, then the defaults; and checks it as meshca
// server does before it starts.
func serverFromFile(t *testing.T, where, path string, cmd *cobra.Command, flags *serverConfig) serverConfig {
	t.Helper()
	c, err := loadServerConfig(path)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if cmd != nil {
		c.override(cmd.Flags(), flags)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
	if err := checkServerConfig(&c); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	return c
}

func agentFromFile(t *testing.T, where, path string) agentConfig {
	t.Helper()
	c, err := loadAgentConfig(path)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
	if c.RenewFraction == 0 {
		c.RenewFraction = defaultRenewFraction
	}
	if err := checkAgentConfig(&c); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	return c
}

// The systemd units run commands and flags meshca has, and the example
// configurations of the 3-VM cluster load with meshca's own loader and
// pass its checks: one bootstrap node that the others join with the
// pre-shared secret, the same ports everywhere, the agent's servers and
// socket where the units and the Envoy examples expect them.
func TestSystemdConfigs(t *testing.T) {
	serverArgs := execStart(t, "meshca-server.service")
	config, serverCmd := checkArgs(t, "meshca-server.service", serverArgs)
	unitFlags := serverFlags(serverCmd)
	if config != "/etc/meshca/server.json" {
		t.Fatalf("meshca-server.service reads %s", config)
	}
	agentArgs := execStart(t, "meshca-agent.service")
	if config, _ := checkArgs(t, "meshca-agent.service", agentArgs); config != "/etc/meshca/agent.json" {
		t.Fatalf("meshca-agent.service reads %s", config)
	}

	var apiAddrs []string
	var bootstrap, join string
	for _, vm := range []string{"vm1", "vm2", "vm3"} {
		path := filepath.Join(deployDir, "systemd/examples", vm, "server.json")
		c := serverFromFile(t, path, path, serverCmd, &unitFlags)
		if c.HTTPAddr != "127.0.0.1:8080" {
			t.Errorf("%s with the unit's flags: http_addr %q, want 127.0.0.1:8080", path, c.HTTPAddr)
		}
		if c.DataDir != "/var/lib/meshca" || !strings.HasPrefix(c.AdminSocket, "/run/meshca-server/") || filepath.Base(c.AdminSocket) != "admin.sock" {
			t.Errorf("%s: data_dir %s, admin_socket %s: want the unit's StateDirectory and RuntimeDirectory", path, c.DataDir, c.AdminSocket)
		}
		for _, p := range []string{c.KEKFile, c.ServerJoinSecretFile} {
			if !strings.HasPrefix(p, "/etc/meshca/") {
				t.Errorf("%s: %s is not in the unit's ConfigurationDirectory", path, p)
			}
		}
		if !strings.HasSuffix(c.RaftAddr, ":8300") || !strings.HasSuffix(c.APIAddr, ":8443") {
			t.Errorf("%s: raft %s, api %s: want ports 8300 and 8443", path, c.RaftAddr, c.APIAddr)
		}
		if c.Bootstrap {
			bootstrap = c.NodeID
		} else if join == "" {
			join = c.Join
		} else if c.Join != join {
			t.Errorf("%s joins %s, another server %s", path, c.Join, join)
		}
		apiAddrs = append(apiAddrs, c.APIAddr)
	}
	if bootstrap != "s1" || !slices.Contains(apiAddrs, join) || join != apiAddrs[0] {
		t.Errorf("bootstrap node %q, join %q: want s1 bootstrapping and the others joining its API address %s", bootstrap, join, apiAddrs[0])
	}
	path := filepath.Join(deployDir, "systemd/examples/agent.json")
	ac := agentFromFile(t, path, path)
	if !slices.Equal(ac.Server, apiAddrs) {
		t.Errorf("agent.json servers %v, want the servers' API addresses %v", ac.Server, apiAddrs)
	}
	if ac.Socket != "/run/meshca/"+agentSocketName || ac.DataDir != "/var/lib/meshca-agent" {
		t.Errorf("agent.json: socket %s, data_dir %s: want the unit's RuntimeDirectory (the Envoy examples' /run/meshca/agent.sock) and StateDirectory", ac.Socket, ac.DataDir)
	}
}

// k8sObject decodes the one object of kind in a manifest file of
// deploy/kubernetes into v (strictly; deploy's tests decode them all).
func k8sObject(t *testing.T, file, kind string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "kubernetes", file))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if meta.Kind == kind {
			if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			return
		}
	}
	t.Fatalf("%s has no %s", file, kind)
}

// k8sConfigFile writes the configuration file a ConfigMap of
// deploy/kubernetes carries to dir, as the pod sees it.
func k8sConfigFile(t *testing.T, dir, file, key string) string {
	t.Helper()
	var cm corev1.ConfigMap
	k8sObject(t, file, "ConfigMap", &cm)
	if _, ok := cm.Data[key]; !ok {
		t.Fatalf("%s: no %s", file, key)
	}
	return writeTestFile(t, dir, key, []byte(cm.Data[key]))
}

// podArgs expands $(VAR) in a container's args as the kubelet does, with
// the given values.
func podArgs(t *testing.T, c corev1.Container, vars map[string]string) []string {
	t.Helper()
	var out []string
	for _, a := range c.Args {
		for k, v := range vars {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		if strings.Contains(a, "$(") {
			t.Fatalf("container %s: arg %q uses a variable the test does not set", c.Name, a)
		}
		out = append(out, a)
	}
	return out
}

// The configurations in deploy/kubernetes load with meshca's own loader
// and pass its checks with the pods' command lines: every server of the
// StatefulSet (pod 0 bootstrapping, the others joining it by secret), and
// the agent of the DaemonSet; every flag the manifests pass exists.
func TestKubernetesConfigs(t *testing.T) {
	dir := t.TempDir()
	var sts appsv1.StatefulSet
	k8sObject(t, "server-statefulset.yaml", "StatefulSet", &sts)
	serverJSON := k8sConfigFile(t, dir, "server-config.yaml", "server.json")
	for i := range int(*sts.Spec.Replicas) {
		pod := fmt.Sprintf("%s-%d", sts.Name, i)
		args := podArgs(t, sts.Spec.Template.Spec.Containers[0], map[string]string{"POD_NAME": pod, "POD_NAMESPACE": "meshca", "POD_IP": "10.1.0.7"})
		config, cmd := checkArgs(t, "StatefulSet "+pod, args)
		if config != "/etc/meshca/config/server.json" {
			t.Fatalf("%s reads %s", pod, config)
		}
		flags := serverFlags(cmd)
		c := serverFromFile(t, pod, serverJSON, cmd, &flags)
		if c.HTTPAddr != "10.1.0.7:8080" {
			t.Errorf("%s: http_addr %q, want the pod IP and port 8080", pod, c.HTTPAddr)
		}
		if c.NodeID != pod || c.Bootstrap != (i == 0) || (i > 0) != (c.Join != "") {
			t.Errorf("%s: node %s bootstrap %v join %q: want pod 0 to bootstrap and the others to join", pod, c.NodeID, c.Bootstrap, c.Join)
		}
		if c.AdminSocket != "" {
			t.Errorf("%s: admin_socket %s; the default <data_dir>/%s is what the guide's kubectl exec commands use", pod, c.AdminSocket, server.AdminSocketName)
		}
	}

	var ds appsv1.DaemonSet
	k8sObject(t, "agent-daemonset.yaml", "DaemonSet", &ds)
	args := podArgs(t, ds.Spec.Template.Spec.Containers[0], map[string]string{"POD_IP": "10.1.0.8"})
	if config, _ := checkArgs(t, "DaemonSet", args); config != "/etc/meshca/config/agent.json" {
		t.Fatalf("the agent reads %s", config)
	}
	ac := agentFromFile(t, "agent.json", k8sConfigFile(t, dir, "agent-config.yaml", "agent.json"))
	if ac.K8sPSATTokenPath != "" || ac.K8sPSATCluster == "" {
		t.Errorf("agent: k8s_psat cluster %q, token path %q: want k8s_psat with the default token path", ac.K8sPSATCluster, ac.K8sPSATTokenPath)
	}
	if filepath.Base(ac.Socket) != agentSocketName {
		t.Errorf("agent socket %s: want the default name %s", ac.Socket, agentSocketName)
	}
}
