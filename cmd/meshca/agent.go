package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/k8s"
	"github.com/meshca/meshca/attest/k8spsat"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/server"
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
SVIDs of the entries whose selectors it all matches. With --k8s-kubelet-url,
the k8s workload attestor adds the selectors of a caller running in a pod,
from the kubelet's /pods: k8s:ns, k8s:sa, k8s:pod-name, k8s:pod-uid,
k8s:pod-label:<key>:<value>, k8s:container-name and k8s:node-name. The kubelet
is authenticated with --k8s-kubelet-ca (default the system roots) or not at
all with --k8s-kubelet-insecure (kubelets often serve a self-signed
certificate), and the agent authenticates to it with the bearer token in
--k8s-kubelet-token (usually its service account token).

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

Node evidence: instead of a join token, an agent may prove its node's
identity with one of the other methods the servers enable:
  x509pop    --x509pop-cert F --x509pop-key K: a certificate chain (PEM, leaf
             first) issued by a provisioning CA the servers trust
             (--x509pop-ca), and the leaf's private key (PEM: PKCS#8, SEC1 or
             PKCS#1; ECDSA P-256/P-384 or RSA of 2048 bits or more). The agent
             signs the server's challenge with it. Its SPIFFE ID is
             spiffe://<td>/meshca/agent/x509pop/<SHA-1 of the leaf>.
  k8s_psat   --k8s-psat-cluster NAME [--k8s-psat-token-path P]: in a pod of
             the Kubernetes cluster the servers know as NAME, a projected
             service account token for their audience (default path
             /var/run/secrets/tokens/meshca-agent). Its SPIFFE ID is
             spiffe://<td>/meshca/agent/k8s_psat/<NAME>/<node UID>.
Give exactly one kind of evidence: --join-token, --x509pop-cert with
--x509pop-key, or --k8s-psat-cluster. $MESHCA_JOIN_TOKEN is used only when no
other kind is given.

The evidence is needed only the first time: the agent keeps its own SVID and
key in <data-dir>/agent/ (mode 0600) and renews them while it runs, so a
restart neither needs nor reads it. An agent whose SVID expired while it was
stopped attests again, with a new join token or its other evidence. An agent
with no stored identity and no evidence refuses to start.

Servers: --server is repeated, one API address (host:port) per server; the
agent uses one at a time and moves to the next when it fails, retrying
forever with backoff and serving cached SVIDs meanwhile. The trust bundle
authenticates the servers until the agent receives the current bundle.

Workload API: --socket (default <data-dir>/agent.sock) is created mode 0666
in its directory: any local process may ask, and each gets only what its
selectors earn, in a fixed order (ECDSA before SM2, then by SPIFFE ID, then
the oldest entry first; the first is the default SVID). Standard clients
(go-spiffe, spire-agent, Envoy) cannot parse SM2, so SM2 SVIDs go only to
clients that ask with the gRPC request metadata "meshca-profiles: sm2" (or
"ecdsa,sm2"), as "meshca workload fetch --profile sm2" does. Keep the path short: Unix socket paths are limited to about
100 bytes. Workloads reach it with "meshca workload fetch --socket S" or any
SPIFFE client with SPIFFE_ENDPOINT_SOCKET=unix://S.

Envoy SDS: the same socket serves Envoy's Secret Discovery Service (v3:
StreamSecrets, DeltaSecrets and FetchSecrets), as SPIRE's agent does, to
proxies attested like any workload. Names: "default" (the caller's
certificate and key), "ROOTCA" (the trust domain's roots and the CRL of
every CA), a SPIFFE ID (that identity's certificate), "spiffe://<td>" (that
trust domain's roots and CRLs), "ALL" (every bundle, with Envoy's SPIFFE
certificate validator unless --sds-disable-spiffe-validator or the Envoy
node metadata disable_spiffe_cert_validation), and "~sm2" after any of them
for the SM2 variant. A name the caller may not have gets no secret and is
audited. deploy/envoy/ has bootstraps; "meshca sds fetch" shows what a proxy
gets.

OPA bundles pushed with "meshca policy push" reach the agent on its stream
and are served, cached, three ways: SDS "opa-bundle:<NAME>" (a
generic_secret holding the signed bundle), OPA's bundle service API on
--bundle-addr (a loopback port: OPA sidecars point their service URL at
http://<addr>/v1 and keep working while the servers are away), and, with
--ext-authz-bundle NAME, Envoy's ext_authz gRPC service on the socket,
deciding at --ext-authz-decision with OPA-Envoy's input and results; an
error denies, and every decision is audited.

Configuration file: --config F reads a JSON object with the flags' names in
snake_case: server (a list), join_token, trust_bundle, socket, data_dir,
renew_fraction, log_level, log_format, x509pop_cert, x509pop_key,
k8s_psat_cluster, k8s_psat_token_path, k8s_kubelet_url, k8s_kubelet_token,
k8s_kubelet_ca, k8s_kubelet_insecure, sds_default_svid_name,
sds_default_bundle_name, sds_all_bundles_name, sds_disable_spiffe_validator,
bundle_addr, ext_authz_bundle, ext_authz_decision, http_addr.
An unknown key is an error. Flags given
on the command line override the file. Relative paths in the file are
relative to the file's directory. Example:
  {"server": ["10.0.0.1:8443", "10.0.0.2:8443"], "trust_bundle": "bundle.pem",
   "data_dir": "/var/lib/meshca", "socket": "/run/meshca/agent.sock",
   "x509pop_cert": "node.pem", "x509pop_key": "node-key.pem"}

The data directory is the first of --data-dir, data_dir in the file,
$MESHCA_DATA_DIR, $XDG_DATA_HOME/meshca, ~/.local/share/meshca. It holds
agent/svid.pem, agent/key.pem and agent/bundle.pem; workloads' keys are
kept in memory only.

Logs go to standard error, as text or JSON (--log-format; json is the default
with --output json), at --log-level debug|info|warn|error. Join tokens,
service account tokens and keys are never logged.`

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

	// Node evidence besides the join token.
	X509PopCert      string `json:"x509pop_cert"`
	X509PopKey       string `json:"x509pop_key"`
	K8sPSATCluster   string `json:"k8s_psat_cluster"`
	K8sPSATTokenPath string `json:"k8s_psat_token_path"`

	// The k8s workload attestor.
	K8sKubeletURL      string `json:"k8s_kubelet_url"`
	K8sKubeletToken    string `json:"k8s_kubelet_token"`
	K8sKubeletCA       string `json:"k8s_kubelet_ca"`
	K8sKubeletInsecure bool   `json:"k8s_kubelet_insecure"`

	// Envoy SDS on the socket: the names of the default resources.
	SDSDefaultSVIDName        string `json:"sds_default_svid_name"`
	SDSDefaultBundleName      string `json:"sds_default_bundle_name"`
	SDSAllBundlesName         string `json:"sds_all_bundles_name"`
	SDSDisableSPIFFEValidator bool   `json:"sds_disable_spiffe_validator"`

	// issue 12: OPA bundles on the agent.
	BundleAddr       string `json:"bundle_addr"`
	ExtAuthzBundle   string `json:"ext_authz_bundle"`
	ExtAuthzDecision string `json:"ext_authz_decision"`
	// HTTPAddr serves /metrics, /healthz and /readyz.
	HTTPAddr string `json:"http_addr"`
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
	resolveConfigPaths(path, &c.TrustBundle, &c.Socket, &c.DataDir,
		&c.X509PopCert, &c.X509PopKey, &c.K8sPSATTokenPath, &c.K8sKubeletToken, &c.K8sKubeletCA)
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

		"x509pop-cert":        {&c.X509PopCert, &f.X509PopCert},
		"x509pop-key":         {&c.X509PopKey, &f.X509PopKey},
		"k8s-psat-cluster":    {&c.K8sPSATCluster, &f.K8sPSATCluster},
		"k8s-psat-token-path": {&c.K8sPSATTokenPath, &f.K8sPSATTokenPath},
		"k8s-kubelet-url":     {&c.K8sKubeletURL, &f.K8sKubeletURL},
		"k8s-kubelet-token":   {&c.K8sKubeletToken, &f.K8sKubeletToken},
		"k8s-kubelet-ca":      {&c.K8sKubeletCA, &f.K8sKubeletCA},

		"sds-default-svid-name":   {&c.SDSDefaultSVIDName, &f.SDSDefaultSVIDName},
		"sds-default-bundle-name": {&c.SDSDefaultBundleName, &f.SDSDefaultBundleName},
		"sds-all-bundles-name":    {&c.SDSAllBundlesName, &f.SDSAllBundlesName},
		"http-addr":               {&c.HTTPAddr, &f.HTTPAddr},

		"bundle-addr":        {&c.BundleAddr, &f.BundleAddr},
		"ext-authz-bundle":   {&c.ExtAuthzBundle, &f.ExtAuthzBundle},
		"ext-authz-decision": {&c.ExtAuthzDecision, &f.ExtAuthzDecision},
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
	if fs.Changed("k8s-kubelet-insecure") {
		c.K8sKubeletInsecure = f.K8sKubeletInsecure
	}
	if fs.Changed("sds-disable-spiffe-validator") {
		c.SDSDisableSPIFFEValidator = f.SDSDisableSPIFFEValidator
	}
}

func (a *app) newAgentCommand() *cobra.Command {
	var (
		configFile string
		flags      agentConfig
	)
	cmd := &cobra.Command{
		Use: "agent --config F | --server H:P [--server H:P ...] --trust-bundle F\n" +
			"             [--join-token T | --x509pop-cert F --x509pop-key F | --k8s-psat-cluster NAME [--k8s-psat-token-path P]]\n" +
			"             [--k8s-kubelet-url U [--k8s-kubelet-token F] [--k8s-kubelet-ca F | --k8s-kubelet-insecure]]\n" +
			"             [--data-dir D] [--socket S] [--renew-fraction 0.5] [--log-level info] [--log-format text]\n" +
			"             [--sds-default-svid-name default] [--sds-default-bundle-name ROOTCA] [--sds-all-bundles-name ALL] [--sds-disable-spiffe-validator]",
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
	f.StringVar(&flags.X509PopCert, "x509pop-cert", "", "x509pop node evidence: PEM certificate chain from a provisioning CA, leaf first (with --x509pop-key)")
	f.StringVar(&flags.X509PopKey, "x509pop-key", "", "x509pop node evidence: PEM private key of the leaf, PKCS#8, SEC1 or PKCS#1 (with --x509pop-cert)")
	f.StringVar(&flags.K8sPSATCluster, "k8s-psat-cluster", "", "k8s_psat node evidence: the Kubernetes cluster's name, as the servers' --k8s-psat-cluster gives it")
	f.StringVar(&flags.K8sPSATTokenPath, "k8s-psat-token-path", "", "projected service account token file, read at each attestation (default "+k8spsat.DefaultTokenPath+"; with --k8s-psat-cluster)")
	f.StringVar(&flags.K8sKubeletURL, "k8s-kubelet-url", "", "enable the k8s workload attestor with the kubelet at this URL, e.g. "+k8s.DefaultKubeletURL)
	f.StringVar(&flags.K8sKubeletToken, "k8s-kubelet-token", "", "file of a bearer token for the kubelet, read at each request (default none; with --k8s-kubelet-url)")
	f.StringVar(&flags.K8sKubeletCA, "k8s-kubelet-ca", "", "PEM file of the CAs of the kubelet's serving certificate (default the system roots; with --k8s-kubelet-url)")
	f.BoolVar(&flags.K8sKubeletInsecure, "k8s-kubelet-insecure", false, "do not verify the kubelet's serving certificate (with --k8s-kubelet-url; excludes --k8s-kubelet-ca)")
	f.StringVar(&flags.SDSDefaultSVIDName, "sds-default-svid-name", sds.DefaultSVIDName, "SDS name of the caller's default certificate and key")
	f.StringVar(&flags.SDSDefaultBundleName, "sds-default-bundle-name", sds.DefaultBundleName, "SDS name of the trust domain's validation context (roots and CRLs)")
	f.StringVar(&flags.SDSAllBundlesName, "sds-all-bundles-name", sds.DefaultAllBundlesName, "SDS name of every bundle, served with Envoy's SPIFFE certificate validator")
	f.StringVar(&flags.HTTPAddr, "http-addr", "", "serve /metrics (Prometheus), /healthz and /readyz (ready: attested, synced, serving) on this host:port, e.g. 127.0.0.1:8081 (default: not served)")
	f.BoolVar(&flags.SDSDisableSPIFFEValidator, "sds-disable-spiffe-validator", false, "serve the all-bundles name as plain trusted_ca instead of Envoy's SPIFFE validator (for Envoy < 1.18)")
	f.StringVar(&flags.BundleAddr, "bundle-addr", "", "serve the cached OPA bundles over OPA's bundle service API on this loopback host:port, for OPA sidecars")
	f.StringVar(&flags.ExtAuthzBundle, "ext-authz-bundle", "", "serve Envoy's ext_authz on the socket, deciding with this OPA bundle (meshca policy push --name)")
	f.StringVar(&flags.ExtAuthzDecision, "ext-authz-decision", "", "the ext_authz decision path in the bundle (default "+policy.DefaultAuthzDecision+", as OPA-Envoy)")
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
		// $MESHCA_JOIN_TOKEN stands for --join-token only when no other
		// kind of node evidence is given.
		if len(cfg.evidenceKinds()) == 0 {
			cfg.JoinToken = a.getenv(envJoinToken)
		}
		return a.agent(cmd.Context(), cfg)
	})
	return cmd
}

// checkAgentConfig refuses a configuration that cannot work, before
// anything is created: these are usage errors.
func checkAgentConfig(c *agentConfig) error {
	if c.HTTPAddr != "" {
		if _, err := metrics.CheckAddr(c.HTTPAddr); err != nil {
			return usageErrorf("--http-addr: %v", err)
		}
	}
	if err := (sds.Naming{DefaultSVID: c.SDSDefaultSVIDName, DefaultBundle: c.SDSDefaultBundleName, AllBundles: c.SDSAllBundlesName}).Validate(); err != nil {
		return usageErrorf("SDS names (--sds-*-name): %v", err)
	}
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
	if err := checkAttestationConfig(c); err != nil {
		return err
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

// agent runs a node agent with configuration c until ctx ends or the
// process gets SIGINT or SIGTERM.
func (a *app) agent(ctx context.Context, c agentConfig) error {
	if err := checkAgentConfig(&c); err != nil {
		return err
	}
	dataDir, err := a.dataDirOr(c.DataDir)
	if err != nil {
		return err
	}
	socket, err := agentSocketPath(c.Socket, dataDir)
	if err != nil {
		return err
	}
	bundle, err := server.LoadTrustBundle(c.TrustBundle)
	if err != nil {
		return err
	}
	storedID, err := agent.StoredID(dataDir, clockwork.NewRealClock())
	if err != nil {
		return err
	}
	// The node evidence is read only when it is needed: an agent with a
	// stored identity renews it without attesting again.
	var evidence attest.NodeEvidence
	if storedID == "" {
		if evidence, err = nodeEvidence(&c); err != nil {
			return err
		}
		if evidence == nil {
			return fmt.Errorf("this agent has no identity yet (none stored in %s): give node evidence, a join token with --join-token or $%s (make one on a server with `meshca token create --kind agent`), an x509pop certificate and key with --x509pop-cert and --x509pop-key, or --k8s-psat-cluster in a Kubernetes pod", filepath.Join(dataDir, "agent"), envJoinToken)
		}
	}
	log := a.logger(c.LogLevel, c.LogFormat)
	wattestors, err := workloadAttestors(log, &c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, modeDir); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}

	ag, err := agent.New(agent.Config{
		Servers: c.Server, TrustBundle: bundle, DataDir: dataDir, SocketPath: socket,
		Evidence: evidence, WorkloadAttestors: wattestors,
		RenewFraction: c.RenewFraction, Logger: log,
		SDSNames:                  sds.Naming{DefaultSVID: c.SDSDefaultSVIDName, DefaultBundle: c.SDSDefaultBundleName, AllBundles: c.SDSAllBundlesName},
		SDSDisableSPIFFEValidator: c.SDSDisableSPIFFEValidator,
		HTTPAddr:                  c.HTTPAddr,
		BundleAddr:                c.BundleAddr, ExtAuthzBundle: c.ExtAuthzBundle, ExtAuthzDecision: c.ExtAuthzDecision,
	})
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	wnames := make([]string, 0, len(wattestors))
	for _, w := range wattestors {
		wnames = append(wnames, w.Name())
	}
	if storedID != "" {
		log.Info("starting meshca agent with its stored identity", "agent_id", storedID, "data_dir", dataDir, "servers", c.Server,
			"workload_attestors", wnames)
		if kinds := c.evidenceKinds(); len(kinds) > 0 {
			log.Info("the node evidence is not used: the agent already has an identity", "evidence", kinds[0])
		}
	} else {
		log.Info("starting meshca agent; it attests its node", "attestor", evidence.Name(), "data_dir", dataDir, "servers", c.Server,
			"workload_attestors", wnames)
	}
	log.Info("Workload API and Envoy SDS listening", "socket", ag.SocketPath(),
		"workload", "meshca workload fetch --socket "+ag.SocketPath()+" --out ./svid",
		"sds", "meshca sds fetch --socket "+ag.SocketPath()+" --out ./sds", "http_addr", ag.HTTPAddr())

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// A second signal now kills the process the default way.
		stop()
		log.Info("shutting down")
	}()
	if err := ag.Run(ctx); err != nil {
		return err // named by the agent: "server session: agent: ..."
	}
	log.Info("meshca agent stopped")
	return nil
}
