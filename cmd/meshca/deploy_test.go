package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// deployDir is the repository's deploy directory.
const deployDir = "../../deploy"

// pendingFlags are flags the deploy files pass that the lead engineer's
// part of issue 16 adds (metrics and health endpoints): accepted here while
// this branch lacks them, and checked like every other flag once they
// exist.
var pendingFlags = map[string]bool{"http-addr": true}

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
	var kept []string
	for i := 0; i < len(rest); i++ {
		name, _, _ := strings.Cut(strings.TrimPrefix(rest[i], "--"), "=")
		if pendingFlags[name] && cmd.Flags().Lookup(name) == nil {
			if !strings.Contains(rest[i], "=") {
				i++ // its value
			}
			continue
		}
		kept = append(kept, rest[i])
	}
	if err := cmd.ParseFlags(kept); err != nil {
		t.Fatalf("%s: meshca %s: %v", where, strings.Join(args, " "), err)
	}
	config, _ := cmd.Flags().GetString("config")
	return config, cmd
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
	config, _ := checkArgs(t, "meshca-server.service", serverArgs)
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
		c := serverFromFile(t, path, path, nil, nil)
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
