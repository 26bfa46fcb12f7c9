package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/unix"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

const agentLong = `agent runs a meshca node agent until SIGINT or SIGTERM. It attests its node to
the servers, receives the registration entries whose parent is this agent,
generates each workload's private key on this node, has the servers sign the
X509-SVIDs, renews them (at half-life by default), and serves them on a Unix
socket through the SPIFFE Workload API to the local processes they belong to.

Each caller is attested from what the kernel says about it (SO_PEERCRED and
/proc): the unix workload attestor gives its selectors unix:uid, unix:gid,
unix:user, unix:group, unix:path and unix:sha256, and the caller gets the
SVIDs of the entries whose selectors it all matches.

Starting an agent:

  1. On a server's host, make a single-use agent join token:
       meshca token create --kind agent
  2. Copy the server's trust bundle (<data-dir>/server/bundle.pem) to the node
     and start the agent with the token (or $MESHCA_JOIN_TOKEN, which other
     users of the host cannot see in the process list):
       meshca agent --server 10.0.0.1:8443 --server 10.0.0.2:8443 \
         --join-token <token> --trust-bundle bundle.pem \
         --data-dir /var/lib/meshca --socket /run/meshca/agent.sock
  3. Its SPIFFE ID is spiffe://<trust domain>/meshca/agent/join_token/<the first
     32 hex digits of the token's SHA-256>, as "meshca node list" shows: use it
     as the --parent-id of "meshca entry create".

The join token is needed only the first time: the agent keeps its own SVID and
key in <data-dir>/agent/ (mode 0600) and renews them while it runs, so a
restart needs no token. An agent whose SVID expired while it was stopped needs
a new token. An agent with no stored identity and no token refuses to start.

Servers: --server is repeated, one API address (host:port) per server; the
agent uses one at a time and moves to the next when it fails, retrying
forever with backoff and serving cached SVIDs meanwhile. The trust bundle
authenticates the servers until the agent receives the current bundle.

Workload API: --socket (default <data-dir>/agent.sock) is created mode 0666
in its directory: any local process may ask, and each gets only what its
selectors earn. Keep the path short: Unix socket paths are limited to about
100 bytes. Workloads reach it with "meshca workload fetch --socket S" or any
SPIFFE client with SPIFFE_ENDPOINT_SOCKET=unix://S.

Configuration file: --config F reads a JSON object with the flags' names in
snake_case: server (a list), join_token, trust_bundle, socket, data_dir,
renew_fraction, log_level, log_format. An unknown key is an error. Flags given
on the command line override the file. Relative paths in the file are
relative to the file's directory. Example:
  {"server": ["10.0.0.1:8443", "10.0.0.2:8443"], "trust_bundle": "bundle.pem",
   "data_dir": "/var/lib/meshca", "socket": "/run/meshca/agent.sock"}

The data directory is the first of --data-dir, data_dir in the file,
$MESHCA_DATA_DIR, $XDG_DATA_HOME/meshca, ~/.local/share/meshca. It holds
agent/svid.pem, agent/key.pem and agent/bundle.pem; workloads' keys are
kept in memory only.

Logs go to standard error, as text or JSON (--log-format; json is the default
with --output json), at --log-level debug|info|warn|error. Join tokens and
keys are never logged.`

// agentConfig is the configuration of meshca agent: the flags, or the keys
// of a --config file, which have the flags' names in snake_case.
type agentConfig struct {
	Server        []string `json:"server"`
	JoinToken     string   `json:"join_token"`
	TrustBundle   string   `json:"trust_bundle"`
	Socket        string   `json:"socket"`
	DataDir       string   `json:"data_dir"`
	RenewFraction float64  `json:"renew_fraction"`
	LogLevel      string   `json:"log_level"`
	LogFormat     string   `json:"log_format"`
}

// defaultRenewFraction is the part of an SVID's lifetime after which the
// agent renews it.
const defaultRenewFraction = 0.5

// loadAgentConfig reads an agent's JSON configuration file; relative paths
// in it are made relative to the file's directory.
func loadAgentConfig(path string) (agentConfig, error) {
	var c agentConfig
	if err := loadConfigFile(path, &c); err != nil {
		return c, err
	}
	resolveConfigPaths(path, &c.TrustBundle, &c.Socket, &c.DataDir)
	return c, nil
}

// override sets the fields of c whose flags were given on the command line
// to their values in f.
func (c *agentConfig) override(fs *pflag.FlagSet, f *agentConfig) {
	str := map[string][2]*string{
		"join-token":   {&c.JoinToken, &f.JoinToken},
		"trust-bundle": {&c.TrustBundle, &f.TrustBundle},
		"socket":       {&c.Socket, &f.Socket},
		"data-dir":     {&c.DataDir, &f.DataDir},
		"log-level":    {&c.LogLevel, &f.LogLevel},
		"log-format":   {&c.LogFormat, &f.LogFormat},
	}
	for name, p := range str {
		if fs.Changed(name) {
			*p[0] = *p[1]
		}
	}
	if fs.Changed("server") {
		c.Server = f.Server
	}
	if fs.Changed("renew-fraction") {
		c.RenewFraction = f.RenewFraction
	}
}

func (a *app) newAgentCommand() *cobra.Command {
	var (
		configFile string
		flags      agentConfig
	)
	cmd := &cobra.Command{
		Use: "agent --config F | --server H:P [--server H:P ...] --trust-bundle F\n" +
			"             [--join-token T] [--data-dir D] [--socket S] [--renew-fraction 0.5]\n" +
			"             [--log-level info] [--log-format text]",
		Short: "Run a node agent: attest, fetch and renew SVIDs, serve the Workload API",
		Long:  agentLong,
		Args:  cobra.NoArgs,
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON configuration file; flags override its settings")
	f.StringArrayVar(&flags.Server, "server", nil, "API address (host:port) of a server; repeat for every server (required)")
	f.StringVar(&flags.JoinToken, "join-token", "", "single-use agent join token from \"meshca token create\", for the first start (default $MESHCA_JOIN_TOKEN)")
	f.StringVar(&flags.TrustBundle, "trust-bundle", "", "PEM file of the trust domain's roots: a server's <data-dir>/server/bundle.pem (required)")
	f.StringVar(&flags.Socket, "socket", "", "Unix socket of the Workload API (default <data-dir>/"+agentSocketName+")")
	f.StringVar(&flags.DataDir, "data-dir", "", "data directory (default $MESHCA_DATA_DIR, else $XDG_DATA_HOME/meshca, else ~/.local/share/meshca)")
	f.Float64Var(&flags.RenewFraction, "renew-fraction", defaultRenewFraction, "renew SVIDs after this part of their lifetime, between 0 and 1")
	f.StringVar(&flags.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&flags.LogFormat, "log-format", "", "log format: text or json (default text, json with --output json)")
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		var cfg agentConfig
		if configFile != "" {
			var err error
			if cfg, err = loadAgentConfig(configFile); err != nil {
				return err
			}
		}
		cfg.override(cmd.Flags(), &flags)
		if cfg.LogLevel == "" {
			cfg.LogLevel = "info"
		}
		if cfg.LogFormat == "" {
			cfg.LogFormat = a.defaultLogFormat()
		}
		if cfg.RenewFraction == 0 {
			cfg.RenewFraction = defaultRenewFraction
		}
		if cfg.JoinToken == "" {
			cfg.JoinToken = a.getenv(envJoinToken)
		}
		return a.agent(cmd.Context(), cfg)
	})
	return cmd
}

// checkAgentConfig refuses a configuration that cannot work, before
// anything is created: these are usage errors.
func checkAgentConfig(c *agentConfig) error {
	if len(c.Server) == 0 {
		return usageErrorf("--server is required (server in a config file): the API address (host:port) of a server")
	}
	for _, s := range c.Server {
		if err := checkServerAddr(s); err != nil {
			return err
		}
	}
	if c.TrustBundle == "" {
		return usageErrorf("--trust-bundle is required (trust_bundle in a config file): a copy of a server's <data-dir>/server/bundle.pem")
	}
	if !(c.RenewFraction > 0 && c.RenewFraction < 1) {
		return usageErrorf("--renew-fraction %v: want a number between 0 and 1, e.g. 0.5 for half-life", c.RenewFraction)
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		return err
	}
	return checkLogFormat(c.LogFormat)
}

// checkServerAddr checks a --server address: host:port with a host and a
// numeric port.
func checkServerAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return usageErrorf("--server %q: want a server's API address, host:port", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return usageErrorf("--server %q: the port must be a number from 1 to 65535", s)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return usageErrorf("--server %q: give an address of the server, not a wildcard", s)
	}
	return nil
}

// agentSocketPath returns socket made absolute, or <dataDir>/agent.sock,
// refusing a path too long for a Unix socket.
func agentSocketPath(socket, dataDir string) (string, error) {
	path := filepath.Join(dataDir, agentSocketName)
	if socket != "" {
		var err error
		if path, err = filepath.Abs(socket); err != nil {
			return "", fmt.Errorf("--socket %s: %w", socket, err)
		}
	}
	if len(path) > maxSocketPath {
		return "", usageErrorf("Workload API socket path %s is %d bytes, longer than Unix sockets allow (%d): give a shorter --socket", path, len(path), maxSocketPath)
	}
	return path, nil
}

// workloadAttestors are the workload attestors every agent runs; log
// receives their debug messages.
func workloadAttestors(log *slog.Logger) []attest.WorkloadAttestor {
	return []attest.WorkloadAttestor{unix.New(unix.Config{Log: log})}
}

// agent runs a node agent with configuration c until ctx ends or the
// process gets SIGINT or SIGTERM.
func (a *app) agent(ctx context.Context, c agentConfig) error {
	if err := checkAgentConfig(&c); err != nil {
		return err
	}
	dataDir := c.DataDir
	if dataDir == "" {
		d, err := defaultDataDir(a.getenv)
		if err != nil {
			return err
		}
		dataDir = d
	}
	dataDir, err := absDir("--data-dir", dataDir)
	if err != nil {
		return err
	}
	socket, err := agentSocketPath(c.Socket, dataDir)
	if err != nil {
		return err
	}
	bundle, err := loadTrustBundle(c.TrustBundle)
	if err != nil {
		return err
	}
	storedID, err := agent.StoredID(dataDir, time.Now())
	if err != nil {
		return err
	}
	var evidence attest.NodeEvidence
	switch {
	case storedID != "":
	case c.JoinToken == "":
		return fmt.Errorf("this agent has no identity yet (none stored in %s): give a join token with --join-token or $%s; make one on a server with `meshca token create --kind agent`", filepath.Join(dataDir, "agent"), envJoinToken)
	default:
		evidence = jointoken.NewEvidence(c.JoinToken)
	}
	if err := os.MkdirAll(dataDir, modeDir); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}

	log := a.logger(c.LogLevel, c.LogFormat)
	ag, err := agent.New(agent.Config{
		Servers: c.Server, TrustBundle: bundle, DataDir: dataDir, SocketPath: socket,
		Evidence: evidence, WorkloadAttestors: workloadAttestors(log),
		RenewFraction: c.RenewFraction, Logger: log,
	})
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	if storedID != "" {
		log.Info("starting meshca agent with its stored identity", "agent_id", storedID, "data_dir", dataDir, "servers", c.Server)
		if c.JoinToken != "" {
			log.Info("the join token is not used: the agent already has an identity")
		}
	} else {
		log.Info("starting meshca agent; it attests with its join token", "data_dir", dataDir, "servers", c.Server)
	}
	log.Info("Workload API listening", "socket", ag.SocketPath(),
		"workload", "meshca workload fetch --socket "+ag.SocketPath()+" --out ./svid")

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// A second signal now kills the process the default way.
		stop()
		log.Info("shutting down")
	}()
	if err := ag.Run(ctx); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	log.Info("meshca agent stopped")
	return nil
}
