package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/k8spsat"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/server"
	"github.com/meshca/meshca/server/joinsecret"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const serverLong = `server runs one meshca CA server until SIGINT or SIGTERM. Servers form a
Raft cluster (3 or 5 of them) that replicates the trust domain's state: its
roots, the servers' intermediates, join tokens, registration entries and the
ledger of issued certificates.

Starting a cluster:

  1. The first server bootstraps a new trust domain. It creates the roots and
     its own intermediates, and writes the trust bundle (the ECDSA root) to
     <data-dir>/server/bundle.pem:
       meshca server --bootstrap --trust-domain example.org --node-id s1 \
         --data-dir /var/lib/meshca --raft-addr 10.0.0.1:8300 --api-addr 10.0.0.1:8443 \
         --kek-file /etc/meshca/kek

  2. On the first server's host, make one single-use join token per new server:
       meshca token create --kind server --addr unix:///var/lib/meshca/admin.sock

  3. Every other server joins through any member's API address, with a token,
     a copy of that bundle.pem and the same KEK file:
       meshca server --join 10.0.0.1:8443 --join-token <token> --trust-bundle bundle.pem \
         --node-id s2 --data-dir /var/lib/meshca --raft-addr 10.0.0.2:8300 \
         --api-addr 10.0.0.2:8443 --kek-file /etc/meshca/kek

Starting together (a StatefulSet, three systemd units): give every server
the same configuration, with bootstrap_node naming the one that bootstraps,
join the API address the others join through (the bootstrap node's), and a
pre-shared server-join secret file instead of tokens and a trust bundle:
  {"bootstrap_node": "meshca-0", "trust_domain": "example.org",
   "join": "meshca-0.meshca-peers.meshca.svc.cluster.local:8443",
   "server_join_secret_file": "/etc/meshca/join/secret", ...}
plus --node-id and the addresses of each. The server named by
bootstrap_node bootstraps (ignoring join); the others retry their join
until it answers. A joining server proves it holds the file's first secret
and checks that the member holds it too, both bound to their TLS
connection, so it needs no trust bundle and the secret never travels; the
trust domain is checked against trust_domain. The file holds one secret
per line, 32 random bytes or more in base64, owner-readable only:
  (umask 077; head -c 32 /dev/urandom | base64 > server-join-secret)
Members read it at every join: to rotate, add the new secret as a second
line on every server, then move it first, then delete the old line; to
revoke, delete the line (joins with it are refused at once; servers that
joined with it stay members). A secret admits servers only: it cannot
attest an agent or operate the cluster.
--raft-bind and --api-bind listen elsewhere than the advertised
--raft-addr and --api-addr (e.g. :8300 in a pod advertised by its DNS
name, which the cluster records as given, so a pod that comes back with a
new IP is found again).

--bootstrap and --join only matter the first time: a server whose data
directory holds its identity restarts with neither and finds its cluster
again. A server with no identity and neither --bootstrap nor --join refuses
to start. --bootstrap and --join exclude each other. A joining server whose
member cannot admit it yet (not reachable, still bootstrapping, no leader)
waits and retries for --join-timeout (default 5m); a refusal (a used token,
another KEK) ends the join at once.

Key-encryption key (KEK): every server of a cluster needs the same KEK file,
a file of 32 random bytes in base64 readable by its owner only, e.g.
  (umask 077; head -c 32 /dev/urandom | base64 > kek)
It is --kek-file F, else $MESHCA_KEK_FILE, else <data-dir>/kek. Only a
bootstrapping server creates <data-dir>/kek when it is missing, and warns that
a KEK kept beside the keys it protects is for development only; copy that file
to the other servers and give it to them with --kek-file. A joining server
must be given the cluster's KEK.

The join token may also come from $MESHCA_JOIN_TOKEN, which, unlike a flag,
other users of the host cannot see in the process list.

Addresses: --raft-addr and --api-addr are host:port pairs that the other
servers dial, so the host must be an address they can reach, not 0.0.0.0.
The operator API listens on a Unix socket, --admin-socket (default
<data-dir>/admin.sock, mode 0600): whoever can open it operates the server.
Operator commands reach it with --addr unix://<socket> or $MESHCA_ADDR.

Node attestation: agents attest with a single-use join token (join_token,
always enabled), and with the methods configured here. Every server of a
cluster should be given the same settings, since an agent may attest to any.
  x509pop    --x509pop-ca F (repeatable; a file may hold several certificates)
             names the provisioning CAs: an agent proves it holds the key of a
             certificate they issued, whose extended key usage, if any, allows
             clientAuth. Its ID: spiffe://<td>/meshca/agent/x509pop/<SHA-1 of the
             leaf>; selectors x509pop:subject:cn, x509pop:ca:fingerprint,
             x509pop:serialnumber.
  k8s_psat   --k8s-psat-cluster NAME --k8s-psat-issuer URL --k8s-psat-jwks F
             [--k8s-psat-audience meshca] [--k8s-psat-allowed-sa NS:SA ...]
             lets agents running in pods of a Kubernetes cluster attest with a
             projected service account token, validated offline against the
             issuer's keys (F: kubectl get --raw /openid/v1/jwks > F). Its ID:
             spiffe://<td>/meshca/agent/k8s_psat/<NAME>/<node UID>. More
             clusters: k8s_psat_clusters in the configuration file.
The attestors name agents in the server's trust domain: --trust-domain when
bootstrapping, that of --trust-bundle when joining, and on a restart that of
<data-dir>/server/bundle.pem, which the server rewrites at every start (a
started server checks that its roots name the same trust domain).

Issuance limits: every certificate a server signs counts against a budget,
a token bucket: each agent's (node's) own, --node-sign-rate CSRs/s with a
burst of --node-sign-burst (defaults 500/s and 2000), and one for all
operator mints together, --operator-mint-rate and --operator-mint-burst
(defaults 5000/s and 5000). A request over its budget waits for it, up to
--admission-wait (default 1s), in order and without spinning; past that it is
refused with ResourceExhausted and a retry-after hint: the time until the
budget holds its CSRs, after the requests already waiting (agents wait that
long). --sign-queue (default 8192) bounds the CSRs admitted and waiting for a
signing slot, all callers together; a full queue is refused with the time it
takes to drain at the measured signing rate. "inf" lifts a rate limit.
Measure with meshca bench issue; --pprof-addr 127.0.0.1:6060 serves Go's
profiles for go tool pprof (loopback only).

Configuration file: --config F reads a JSON object with the flags' names in
snake_case: data_dir, node_id, raft_addr, api_addr, bootstrap, trust_domain,
join, join_token, trust_bundle, join_timeout (a duration, "5m"), bootstrap_node,
server_join_secret_file, raft_bind, api_bind, admin_socket, admin_addr, admin_ids, http_addr, crl_addr, bundle_addr, bundle_dns_names (a list), kek_file, log_level, log_format,
node_sign_rate, node_sign_burst, operator_mint_rate, operator_mint_burst, admission_wait ("1s"), sign_queue, issuance_decision_cache, pprof_addr, ledger_grace ("1h"),
x509pop_ca (a list), k8s_psat_cluster, k8s_psat_issuer, k8s_psat_jwks,
k8s_psat_audience, k8s_psat_allowed_sa (a list), and k8s_psat_clusters, a list
of clusters {"name", "issuer", "audience", "jwks_file",
"allowed_service_accounts": [...]}, added to the one of the k8s_psat_* keys.
An unknown key is an error. Flags given on the command line override the
file (a list flag replaces the file's list). Relative paths in the file are
relative to the file's directory. Example:
  {"data_dir": "/var/lib/meshca", "node_id": "s1", "raft_addr": "10.0.0.1:8300",
   "api_addr": "10.0.0.1:8443", "kek_file": "/etc/meshca/kek", "log_level": "info",
   "x509pop_ca": ["provisioning-ca.pem"],
   "k8s_psat_clusters": [{"name": "prod", "issuer": "https://kubernetes.default.svc.cluster.local",
     "jwks_file": "prod-jwks.json", "allowed_service_accounts": ["meshca:meshca-agent"]}]}

The data directory is the first of --data-dir, data_dir in the file,
$MESHCA_DATA_DIR, $XDG_DATA_HOME/meshca, ~/.local/share/meshca. It holds:
  D/server/identity.json   the server's identity: roots, its intermediates and
                           TLS certificate (keys sealed under the KEK)
  D/server/bundle.pem      the trust bundle, rewritten at every start
  D/raft/...               the Raft log and snapshots
  D/admin.sock             the operator API socket, while the server runs

Logs go to standard error, as text (--log-format text) or JSON (--log-format
json, the default with --output json), at --log-level debug|info|warn|error;
Raft's own logs are warnings and errors only. Secrets (join tokens, keys) are
never logged.`

// serverConfig is the configuration of meshca server: the flags, or the keys
// of a --config file, which have the flags' names in snake_case.
type serverConfig struct {
	DataDir     string `json:"data_dir"`
	NodeID      string `json:"node_id"`
	RaftAddr    string `json:"raft_addr"`
	APIAddr     string `json:"api_addr"`
	Bootstrap   bool   `json:"bootstrap"`
	TrustDomain string `json:"trust_domain"`
	Join        string `json:"join"`
	JoinToken   string `json:"join_token"`
	TrustBundle string `json:"trust_bundle"`
	JoinTimeout string `json:"join_timeout"`

	// Cluster start-up with no operator in between (deployments).
	BootstrapNode        string `json:"bootstrap_node"`
	ServerJoinSecretFile string `json:"server_join_secret_file"`
	RaftBind             string `json:"raft_bind"`
	APIBind              string `json:"api_bind"`

	AdminSocket string   `json:"admin_socket"`
	AdminAddr   string   `json:"admin_addr"`
	AdminIDs    []string `json:"admin_ids"`
	HTTPAddr    string   `json:"http_addr"`
	CRLAddr     string   `json:"crl_addr"`
	KEKFile     string   `json:"kek_file"`
	LogLevel    string   `json:"log_level"`
	LogFormat   string   `json:"log_format"`

	// issue 12: the OPA bundle service.
	BundleAddr     string   `json:"bundle_addr"`
	BundleDNSNames []string `json:"bundle_dns_names"`

	// Node attestors besides join_token.
	X509PopCA        []string               `json:"x509pop_ca"`
	K8sPSATCluster   string                 `json:"k8s_psat_cluster"`
	K8sPSATIssuer    string                 `json:"k8s_psat_issuer"`
	K8sPSATJWKS      string                 `json:"k8s_psat_jwks"`
	K8sPSATAudience  string                 `json:"k8s_psat_audience"`
	K8sPSATAllowedSA []string               `json:"k8s_psat_allowed_sa"`
	K8sPSATClusters  []k8sPSATClusterConfig `json:"k8s_psat_clusters"`

	// Issuance limits (see "Issuance limits" in the help).
	NodeSignRate      float64 `json:"node_sign_rate"`
	NodeSignBurst     int     `json:"node_sign_burst"`
	OperatorMintRate  float64 `json:"operator_mint_rate"`
	OperatorMintBurst int     `json:"operator_mint_burst"`
	AdmissionWait     string  `json:"admission_wait"`
	SignQueue         int     `json:"sign_queue"`
	// IssuanceDecisionCache is how many issuance policy decisions are
	// remembered; -1: none.
	IssuanceDecisionCache int `json:"issuance_decision_cache"`

	// PprofAddr serves Go's profiles on a loopback address.
	PprofAddr string `json:"pprof_addr"`
	// LedgerGrace is how long ledger records stay after their
	// certificates expire.
	LedgerGrace string `json:"ledger_grace"`
	// The history database (see history.go).
	PostgresDSN      string `json:"postgres_dsn"`
	PostgresCAFile   string `json:"postgres_ca_file"`
	HistoryRetention string `json:"history_retention"`
	ExportHold       string `json:"export_hold"`
}

// loadServerConfig reads a server's JSON configuration file (see
// loadConfigFile); relative paths in it are made relative to the file's
// directory.
func loadServerConfig(path string) (serverConfig, error) {
	var c serverConfig
	if err := loadConfigFile(path, &c); err != nil {
		return c, err
	}
	resolveConfigPaths(path, &c.DataDir, &c.TrustBundle, &c.AdminSocket, &c.KEKFile, &c.K8sPSATJWKS, &c.ServerJoinSecretFile, &c.PostgresCAFile)
	for i := range c.X509PopCA {
		resolveConfigPaths(path, &c.X509PopCA[i])
	}
	for i := range c.K8sPSATClusters {
		resolveConfigPaths(path, &c.K8sPSATClusters[i].JWKSFile)
	}
	return c, nil
}

// configKeys lists the keys a server configuration file may hold.
func configKeys() []string { return jsonKeys[serverConfig]() }

// override sets the fields of c whose flags were given on the command line
// to their values in f.
func (c *serverConfig) override(fs *pflag.FlagSet, f *serverConfig) {
	str := map[string][2]*string{
		"data-dir":     {&c.DataDir, &f.DataDir},
		"node-id":      {&c.NodeID, &f.NodeID},
		"raft-addr":    {&c.RaftAddr, &f.RaftAddr},
		"api-addr":     {&c.APIAddr, &f.APIAddr},
		"trust-domain": {&c.TrustDomain, &f.TrustDomain},
		"join":         {&c.Join, &f.Join},
		"join-token":   {&c.JoinToken, &f.JoinToken},
		"trust-bundle": {&c.TrustBundle, &f.TrustBundle},
		"join-timeout": {&c.JoinTimeout, &f.JoinTimeout},

		"bootstrap-node":          {&c.BootstrapNode, &f.BootstrapNode},
		"server-join-secret-file": {&c.ServerJoinSecretFile, &f.ServerJoinSecretFile},
		"raft-bind":               {&c.RaftBind, &f.RaftBind},
		"api-bind":                {&c.APIBind, &f.APIBind},
		"admin-socket":            {&c.AdminSocket, &f.AdminSocket},
		"admin-addr":              {&c.AdminAddr, &f.AdminAddr},
		"http-addr":               {&c.HTTPAddr, &f.HTTPAddr},
		"crl-addr":                {&c.CRLAddr, &f.CRLAddr},
		"bundle-addr":             {&c.BundleAddr, &f.BundleAddr},
		"kek-file":                {&c.KEKFile, &f.KEKFile},
		"log-level":               {&c.LogLevel, &f.LogLevel},
		"log-format":              {&c.LogFormat, &f.LogFormat},

		"k8s-psat-cluster":  {&c.K8sPSATCluster, &f.K8sPSATCluster},
		"k8s-psat-issuer":   {&c.K8sPSATIssuer, &f.K8sPSATIssuer},
		"k8s-psat-jwks":     {&c.K8sPSATJWKS, &f.K8sPSATJWKS},
		"k8s-psat-audience": {&c.K8sPSATAudience, &f.K8sPSATAudience},
		"admission-wait":    {&c.AdmissionWait, &f.AdmissionWait},
		"pprof-addr":        {&c.PprofAddr, &f.PprofAddr},
		"ledger-grace":      {&c.LedgerGrace, &f.LedgerGrace},
	}
	for name, p := range str {
		if fs.Changed(name) {
			*p[0] = *p[1]
		}
	}
	if fs.Changed("bootstrap") {
		c.Bootstrap = f.Bootstrap
	}
	for name, p := range map[string][2]*float64{"node-sign-rate": {&c.NodeSignRate, &f.NodeSignRate}, "operator-mint-rate": {&c.OperatorMintRate, &f.OperatorMintRate}} {
		if fs.Changed(name) {
			*p[0] = *p[1]
		}
	}
	for name, p := range map[string][2]*int{"node-sign-burst": {&c.NodeSignBurst, &f.NodeSignBurst}, "operator-mint-burst": {&c.OperatorMintBurst, &f.OperatorMintBurst},
		"sign-queue": {&c.SignQueue, &f.SignQueue}, "issuance-decision-cache": {&c.IssuanceDecisionCache, &f.IssuanceDecisionCache}} {
		if fs.Changed(name) {
			*p[0] = *p[1]
		}
	}
	if fs.Changed("x509pop-ca") {
		c.X509PopCA = f.X509PopCA
	}
	if fs.Changed("bundle-dns-name") {
		c.BundleDNSNames = f.BundleDNSNames
	}
	if fs.Changed("admin-id") {
		c.AdminIDs = f.AdminIDs
	}
	if fs.Changed("k8s-psat-allowed-sa") {
		c.K8sPSATAllowedSA = f.K8sPSATAllowedSA
	}
	c.overrideHistory(fs, f)
}

func (a *app) newServerCommand() *cobra.Command {
	var (
		configFile string
		flags      serverConfig
	)
	cmd := &cobra.Command{
		Use: "server --config F | --data-dir D --node-id N --raft-addr H:P --api-addr H:P\n" +
			"              [--bootstrap --trust-domain TD | --join H:P --join-token T --trust-bundle F]\n" +
			"              [--bootstrap-node ID --join H:P --server-join-secret-file F --trust-domain TD]\n" +
			"              [--raft-bind H:P] [--api-bind H:P]\n" +
			"              [--admin-socket S] [--kek-file F] [--log-level info] [--log-format text]\n" +
			"              [--x509pop-ca F ...] [--k8s-psat-cluster NAME --k8s-psat-issuer URL --k8s-psat-jwks F\n" +
			"               [--k8s-psat-audience meshca] [--k8s-psat-allowed-sa NS:SA ...]]",
		Short: "Run a CA server: bootstrap a Raft cluster or join one",
		Long:  serverLong + historyHelp,
		Args:  cobra.NoArgs,
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON configuration file; flags override its settings")
	f.StringVar(&flags.DataDir, "data-dir", "", "data directory (default $MESHCA_DATA_DIR, else $XDG_DATA_HOME/meshca, else ~/.local/share/meshca)")
	f.StringVar(&flags.NodeID, "node-id", "", "the server's stable name in the cluster: 1-64 letters, digits, '.', '-' or '_' (required)")
	f.StringVar(&flags.RaftAddr, "raft-addr", "", "host:port to listen on for Raft, dialed by the other servers (required)")
	f.StringVar(&flags.APIAddr, "api-addr", "", "host:port of the cluster API, dialed by joining servers and agents (required)")
	f.BoolVar(&flags.Bootstrap, "bootstrap", false, "form a new cluster and trust domain (the first server only; needs --trust-domain)")
	f.StringVar(&flags.TrustDomain, "trust-domain", "", "trust domain of a bootstrapped cluster, e.g. example.org")
	f.StringVar(&flags.Join, "join", "", "API address (host:port) of any member of the cluster to join")
	f.StringVar(&flags.JoinToken, "join-token", "", "single-use server join token from \"meshca token create --kind server\" (default $MESHCA_JOIN_TOKEN)")
	f.StringVar(&flags.TrustBundle, "trust-bundle", "", "PEM file of the cluster's roots: the first server's <data-dir>/server/bundle.pem")
	f.Var((*durationText)(&flags.JoinTimeout), "join-timeout", "with --join: how long to keep retrying while the cluster cannot admit this server yet (unreachable, still bootstrapping, no leader), 1s to 24h (default "+server.DefaultJoinTimeout.String()+")")
	f.StringVar(&flags.BootstrapNode, "bootstrap-node", "", "the node ID that bootstraps the cluster when it has no state; every other server joins through --join (one configuration for all servers started together, e.g. meshca-0 of a StatefulSet)")
	f.StringVar(&flags.ServerJoinSecretFile, "server-join-secret-file", "", "file of pre-shared server-join secrets: with --join and no --join-token, this server proves it holds the first; a member admits a server that proves any (read at each join); see \"Starting together\"")
	f.StringVar(&flags.RaftBind, "raft-bind", "", "host:port to listen on for Raft when it is not --raft-addr, e.g. :8300 in a pod reached by its DNS name (default --raft-addr)")
	f.StringVar(&flags.APIBind, "api-bind", "", "host:port to listen on for the cluster API when it is not --api-addr (default --api-addr)")
	f.StringVar(&flags.AdminSocket, "admin-socket", "", "Unix socket of the operator API (default <data-dir>/admin.sock)")
	f.StringVar(&flags.AdminAddr, "admin-addr", "", "also serve the operator API over mutual TLS on this host:port, to the cluster's admins only (meshca admin list)")
	f.StringVar(&flags.HTTPAddr, "http-addr", "", "serve /metrics (Prometheus), /healthz and /readyz on this host:port, e.g. 127.0.0.1:8080 (default: not served)")
	f.StringArrayVar(&flags.AdminIDs, "admin-id", nil, "SPIFFE ID of an admin, allowed on --admin-addr (get its SVID with meshca x509 mint --addr); seeds the cluster's replicated admin list while it is empty, afterwards use meshca admin add|remove; repeat for more")
	f.StringVar(&flags.CRLAddr, "crl-addr", "", "serve every authority's CRL (DER) over plain HTTP on this host:port, at /crl/<authority ID>, for relying parties outside the mesh")
	f.StringVar(&flags.BundleAddr, "bundle-addr", "", "serve the OPA bundle service (HTTPS, clients with an X509-SVID) on this host:port")
	f.StringArrayVar(&flags.BundleDNSNames, "bundle-dns-name", nil, "DNS name of the bundle service's certificate, as OPA's service URL names it (default localhost); repeat for more")
	f.StringVar(&flags.KEKFile, "kek-file", "", "the cluster's key-encryption key file (default $MESHCA_KEK_FILE, else <data-dir>/kek)")
	f.StringVar(&flags.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&flags.LogFormat, "log-format", "", "log format: text or json (default text, json with --output json)")
	f.StringArrayVar(&flags.X509PopCA, "x509pop-ca", nil, "PEM file of provisioning CA certificates: enables x509pop node attestation; repeat for more files")
	f.StringVar(&flags.K8sPSATCluster, "k8s-psat-cluster", "", "name of a Kubernetes cluster whose agents may attest with k8s_psat: enables k8s_psat node attestation")
	f.StringVar(&flags.K8sPSATIssuer, "k8s-psat-issuer", "", "the cluster's service account issuer, matched exactly against the tokens' iss (with --k8s-psat-cluster)")
	f.StringVar(&flags.K8sPSATJWKS, "k8s-psat-jwks", "", "JSON Web Key Set file of the issuer's public keys: kubectl get --raw /openid/v1/jwks (with --k8s-psat-cluster)")
	f.StringVar(&flags.K8sPSATAudience, "k8s-psat-audience", k8spsat.DefaultAudience, "audience the agents' tokens must be made for (with --k8s-psat-cluster)")
	f.StringArrayVar(&flags.K8sPSATAllowedSA, "k8s-psat-allowed-sa", nil, "namespace:name of a service account whose agents may attest; repeat for more (default any; with --k8s-psat-cluster)")
	f.Float64Var(&flags.NodeSignRate, "node-sign-rate", server.DefaultNodeSignRate, "CSRs per second each agent (node) may have signed, its workloads' and its own; inf: no limit")
	f.IntVar(&flags.NodeSignBurst, "node-sign-burst", server.DefaultNodeSignBurst, "CSRs a node may have signed at once above its rate; at least the largest batch its agent sends (256)")
	f.Float64Var(&flags.OperatorMintRate, "operator-mint-rate", server.DefaultOperatorMintRate, "certificates per second operators may mint through the operator API, all together; inf: no limit")
	f.IntVar(&flags.OperatorMintBurst, "operator-mint-burst", server.DefaultOperatorMintBurst, "certificates operators may mint at once above their rate")
	f.Var((*durationText)(&flags.AdmissionWait), "admission-wait", "how long a request over its rate waits for its budget before it is refused with a retry-after hint, 0s to "+server.MaxAdmissionWait.String()+" (default "+server.DefaultAdmissionWait.String()+")")
	f.IntVar(&flags.SignQueue, "sign-queue", server.DefaultSignQueue, "CSRs admitted and waiting for a signing slot, all callers together; past it requests are refused with a retry-after hint")
	f.IntVar(&flags.IssuanceDecisionCache, "issuance-decision-cache", policy.DefaultDecisionCache, "issuance policy decisions remembered by the input the policy reads, so renewals are not evaluated again (never for a policy calling time.now_ns, http.send or another nondeterministic builtin); -1: none")
	f.Var((*durationText)(&flags.LedgerGrace), "ledger-grace", "how long a certificate's ledger record stays after the certificate expires, 1s to 8760h (default "+server.DefaultLedgerGrace.String()+")")
	f.StringVar(&flags.PprofAddr, "pprof-addr", "", "serve Go's profiles (net/http/pprof) on this loopback host:port, e.g. 127.0.0.1:6060, for go tool pprof")
	addHistoryFlags(f, &flags)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		// load reads the file and applies the flags, at start and at SIGHUP.
		load := func() (serverConfig, error) {
			var cfg serverConfig
			if configFile != "" {
				var err error
				if cfg, err = loadServerConfig(configFile); err != nil {
					return cfg, err
				}
			}
			cfg.override(cmd.Flags(), &flags)
			if cfg.LogLevel == "" {
				cfg.LogLevel = "info"
			}
			if cfg.LogFormat == "" {
				cfg.LogFormat = a.defaultLogFormat()
			}
			if cfg.Join != "" && cfg.JoinToken == "" {
				cfg.JoinToken = a.getenv(envJoinToken)
			}
			return cfg, nil
		}
		cfg, err := load()
		if err != nil {
			return err
		}
		return a.server(cmd.Context(), cfg, load)
	})
	return cmd
}

// checkServerConfig refuses a configuration that cannot work, before
// anything is created: these are usage errors.
func checkServerConfig(c *serverConfig) error {
	if c.BootstrapNode != "" {
		if c.Bootstrap {
			return usageErrorf("--bootstrap and --bootstrap-node exclude each other: --bootstrap-node names the server that bootstraps")
		}
		if !server.ValidNodeID(c.BootstrapNode) {
			return usageErrorf("--bootstrap-node %q: use 1-64 letters, digits, '.', '-' or '_'", c.BootstrapNode)
		}
		if c.NodeID == c.BootstrapNode {
			// The one configuration of all servers names the member to
			// join through: this server is that member.
			c.Bootstrap, c.Join, c.JoinTimeout = true, "", ""
		} else if c.Join == "" {
			return usageErrorf("--bootstrap-node %s: the other servers join through --join (join in a config file), e.g. the bootstrap node's API address", c.BootstrapNode)
		}
	}
	if c.Bootstrap && c.Join != "" {
		return usageErrorf("--bootstrap and --join exclude each other: bootstrap the first server of a cluster, join the others to it")
	}
	if c.NodeID == "" {
		return usageErrorf("--node-id is required (node_id in a config file)")
	}
	if !server.ValidNodeID(c.NodeID) {
		return usageErrorf("--node-id %q: use 1-64 letters, digits, '.', '-' or '_'", c.NodeID)
	}
	for _, ad := range []struct{ flag, value string }{{"--raft-addr", c.RaftAddr}, {"--api-addr", c.APIAddr}} {
		if ad.value == "" {
			return usageErrorf("%s is required (%s in a config file)", ad.flag, strings.ReplaceAll(strings.TrimPrefix(ad.flag, "--"), "-", "_"))
		}
		host, _, err := net.SplitHostPort(ad.value)
		if err != nil {
			return usageErrorf("%s %q: want host:port", ad.flag, ad.value)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			return usageErrorf("%s %q: the other servers dial this address, so give one they can reach, not a wildcard", ad.flag, ad.value)
		}
	}
	if c.HTTPAddr != "" {
		if _, err := metrics.CheckAddr(c.HTTPAddr); err != nil {
			return usageErrorf("--http-addr: %v", err)
		}
	}
	if c.Bootstrap {
		if c.TrustDomain == "" {
			return usageErrorf("--bootstrap needs --trust-domain, the trust domain of the new cluster (e.g. example.org)")
		}
	}
	if c.TrustDomain != "" {
		if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
			return usageErrorf("--trust-domain %q: %v", c.TrustDomain, err)
		}
	}
	for _, ad := range []struct{ flag, value string }{{"--raft-bind", c.RaftBind}, {"--api-bind", c.APIBind}} {
		if _, _, err := net.SplitHostPort(ad.value); ad.value != "" && err != nil {
			return usageErrorf("%s %q: want host:port (the host may be empty: all interfaces)", ad.flag, ad.value)
		}
	}
	if c.Join != "" {
		if _, _, err := net.SplitHostPort(c.Join); err != nil {
			return usageErrorf("--join %q: want the host:port of a member's API address", c.Join)
		}
		switch {
		case c.JoinToken == "" && c.ServerJoinSecretFile == "":
			return usageErrorf("--join needs --join-token (or $%s; make one with `meshca token create --kind server` on a member), or --server-join-secret-file, the cluster's pre-shared server-join secret", envJoinToken)
		case c.JoinToken != "" && c.TrustBundle == "":
			return usageErrorf("--join with a token needs --trust-bundle: a copy of the first server's <data-dir>/server/bundle.pem")
		case c.JoinToken == "" && c.TrustBundle == "" && c.TrustDomain == "":
			return usageErrorf("--join with a server-join secret and no --trust-bundle needs --trust-domain, the cluster's, which the joining server checks")
		}
		if c.JoinToken != "" {
			if err := server.CheckJoinToken(c.JoinToken); err != nil {
				return usageErrorf("the server join token (--join-token or $%s): %v; make one with `meshca token create --kind server` on a member", envJoinToken, err)
			}
		}
		if _, err := joinTimeout(c); err != nil {
			return err
		}
	} else if c.JoinToken != "" || c.TrustBundle != "" || c.JoinTimeout != "" {
		return usageErrorf("--join-token, --trust-bundle and --join-timeout are only used with --join")
	}
	if err := checkNodeAttestorConfig(c); err != nil {
		return err
	}
	if err := checkIssuanceLimits(c); err != nil {
		return err
	}
	if c.PprofAddr != "" {
		if err := checkPprofAddr(c.PprofAddr); err != nil {
			return err
		}
	}
	if _, err := ledgerGrace(c); err != nil {
		return err
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		return err
	}
	return checkLogFormat(c.LogFormat)
}

// checkIssuanceLimits refuses negative issuance limits; zero (a key the
// configuration file leaves out) is the default.
func checkIssuanceLimits(c *serverConfig) error {
	for _, l := range []struct {
		name  string
		value float64
	}{
		{"--node-sign-rate (node_sign_rate)", c.NodeSignRate}, {"--node-sign-burst (node_sign_burst)", float64(c.NodeSignBurst)},
		{"--operator-mint-rate (operator_mint_rate)", c.OperatorMintRate}, {"--operator-mint-burst (operator_mint_burst)", float64(c.OperatorMintBurst)},
		{"--sign-queue (sign_queue)", float64(c.SignQueue)},
	} {
		if !(l.value >= 0) { // NaN too
			return usageErrorf("%s %v: want a positive number", l.name, l.value)
		}
	}
	_, err := admissionWait(c)
	return err
}

// joinTimeout reads --join-timeout (join_timeout): a Go duration, 1s to
// 24h; empty is the default.
func joinTimeout(c *serverConfig) (time.Duration, error) {
	if c.JoinTimeout == "" {
		return server.DefaultJoinTimeout, nil
	}
	d, err := time.ParseDuration(c.JoinTimeout)
	if err == nil {
		err = duration.Within("--join-timeout", d, time.Second, server.MaxJoinTimeout)
	}
	if err != nil {
		return 0, usageErrorf("--join-timeout %q (join_timeout): want a duration from 1s to %s, e.g. 5m: %v", c.JoinTimeout, server.MaxJoinTimeout, err)
	}
	return d, nil
}

// admissionWait reads --admission-wait (admission_wait): a Go duration,
// 0s (refuse at once) to server.MaxAdmissionWait; empty is the default.
// It returns it as server.Config takes it: negative for no wait.
func admissionWait(c *serverConfig) (time.Duration, error) {
	if c.AdmissionWait == "" {
		return server.DefaultAdmissionWait, nil
	}
	d, err := time.ParseDuration(c.AdmissionWait)
	if err == nil {
		err = duration.Within("--admission-wait", d, 0, server.MaxAdmissionWait)
	}
	if err != nil {
		return 0, usageErrorf("--admission-wait %q (admission_wait): want a duration from 0s to %s, e.g. 1s: %v", c.AdmissionWait, server.MaxAdmissionWait, err)
	}
	if d == 0 {
		return -1, nil
	}
	return d, nil
}

// maxLedgerGrace bounds --ledger-grace.
const maxLedgerGrace = 365 * 24 * time.Hour

// ledgerGrace reads --ledger-grace (ledger_grace): a Go duration, 1s to
// maxLedgerGrace; empty is the default.
func ledgerGrace(c *serverConfig) (time.Duration, error) {
	if c.LedgerGrace == "" {
		return server.DefaultLedgerGrace, nil
	}
	d, err := time.ParseDuration(c.LedgerGrace)
	if err == nil {
		err = duration.Within("--ledger-grace", d, time.Second, maxLedgerGrace)
	}
	if err != nil {
		return 0, usageErrorf("--ledger-grace %q (ledger_grace): want a duration from 1s to %s, e.g. 1h: %v", c.LedgerGrace, maxLedgerGrace, err)
	}
	return d, nil
}

// durationText is a flag that keeps a duration as the text given, like the
// configuration file's value, and checks it parses.
type durationText string

func (d *durationText) String() string { return string(*d) }
func (d *durationText) Type() string   { return "duration" }
func (d *durationText) Set(s string) error {
	if _, err := time.ParseDuration(s); err != nil {
		return err
	}
	*d = durationText(s)
	return nil
}

// parseLogLevel reads --log-level.
func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, usageErrorf("--log-level %q: want debug, info, warn or error", s)
}

// checkLogFormat refuses a --log-format other than text or json.
func checkLogFormat(format string) error {
	if format != "text" && format != "json" {
		return usageErrorf("--log-format %q: want text or json", format)
	}
	return nil
}

// defaultLogFormat is the log format when --log-format is not given: text,
// or json with --output json.
func (a *app) defaultLogFormat() string {
	if a.output == outputJSON {
		return "json"
	}
	return "text"
}

// logger returns a logger writing to stderr at level (a checked
// --log-level) in format, text or json.
func (a *app) logger(level, format string) *slog.Logger {
	l, _ := parseLogLevel(level) // checked by the caller
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(a.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(a.stderr, opts))
}

// loggers returns a server's logger and hashicorp/raft's, both writing to
// stderr at level (checked) in format. Raft logs warnings and errors only.
func (a *app) loggers(level, format string) (*slog.Logger, hclog.Logger) {
	log, _, raftLog := a.reloadableLoggers(level, format)
	return log, raftLog
}

// reloadableLoggers are loggers whose level can change while they are in
// use (SIGHUP): the server's, with its LevelVar, and Raft's.
func (a *app) reloadableLoggers(level, format string) (*slog.Logger, *slog.LevelVar, hclog.Logger) {
	l, _ := parseLogLevel(level) // checked by the caller
	lv := new(slog.LevelVar)
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	log := slog.New(slog.NewTextHandler(a.stderr, opts))
	if format == "json" {
		log = slog.New(slog.NewJSONHandler(a.stderr, opts))
	}
	raftLog := hclog.New(&hclog.LoggerOptions{
		Name: "raft", Level: raftLevel(l), Output: a.stderr, JSONFormat: format == "json",
	})
	return log, lv, raftLog
}

// raftLevel is Raft's log level for the server's: warnings and errors
// only, errors only above warn.
func raftLevel(l slog.Level) hclog.Level {
	if l > slog.LevelWarn {
		return hclog.Error
	}
	return hclog.Warn
}

// server runs a meshca server with configuration c until ctx ends or the
// process gets SIGINT or SIGTERM.
// load, if set, reads the configuration again for SIGHUP.
func (a *app) server(ctx context.Context, c serverConfig, load func() (serverConfig, error)) error {
	if err := checkServerConfig(&c); err != nil {
		return err
	}
	dataDir, err := a.dataDirOr(c.DataDir)
	if err != nil {
		return err
	}
	adminSocket := server.DefaultAdminSocket(dataDir)
	if c.AdminSocket != "" {
		if adminSocket, err = filepath.Abs(c.AdminSocket); err != nil {
			return fmt.Errorf("--admin-socket %s: %w", c.AdminSocket, err)
		}
	}
	if len(adminSocket) > maxSocketPath {
		return usageErrorf("admin socket path %s is %d bytes, longer than Unix sockets allow (%d): give a shorter --admin-socket", adminSocket, len(adminSocket), maxSocketPath)
	}

	var bundle []*x509.Certificate
	if c.Join != "" && c.TrustBundle != "" {
		if bundle, err = server.LoadTrustBundle(c.TrustBundle); err != nil {
			return err
		}
	}
	var joinSecrets []joinsecret.Secret
	if c.ServerJoinSecretFile != "" {
		// Read again at every join; checked now so that a mistake shows at start.
		if joinSecrets, err = joinsecret.Load(c.ServerJoinSecretFile); err != nil {
			return usageErrorf("--server-join-secret-file: %v", err)
		}
	}
	attestorFiles, err := loadNodeAttestorFiles(&c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, modeDir); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return err
	}
	defer lock.Release()
	hasIdentity, err := server.HasIdentity(dataDir)
	if err != nil {
		return err
	}
	kek, kekFrom, err := a.serverKEK(c, dataDir, hasIdentity, false)
	if err != nil {
		return err
	}
	var (
		attestors  []attest.NodeAttestor
		attestorTD spiffeid.TrustDomain
	)
	if !attestorFiles.empty() {
		if attestorTD, err = attestorTrustDomain(&c, dataDir, hasIdentity, bundle); err != nil {
			return err
		}
		if attestors, err = attestorFiles.attestors(attestorTD); err != nil {
			return err
		}
	}

	joinWait, err := joinTimeout(&c)
	if err != nil {
		return err
	}
	hist, err := a.history(&c)
	if err != nil {
		return err
	}
	if hist.store != nil {
		defer hist.store.Close()
	}
	admissionWait, err := admissionWait(&c)
	if err != nil {
		return err
	}
	ledgerGrace, err := ledgerGrace(&c)
	if err != nil {
		return err
	}
	log, logLevel, raftLog := a.reloadableLoggers(c.LogLevel, c.LogFormat)
	mode := "restart"
	switch {
	case hasIdentity:
	case c.Bootstrap:
		mode = "bootstrap"
	case c.Join != "":
		mode = "join " + c.Join
	}
	attestorNames := []string{jointoken.Name}
	for _, at := range attestors {
		attestorNames = append(attestorNames, at.Name())
	}
	log.Info("starting meshca server", "node", c.NodeID, "data_dir", dataDir, "mode", mode, "kek_file", kekFrom.File, "kek_id", kek.ID(),
		"node_attestors", attestorNames)
	if len(joinSecrets) > 0 {
		ids := make([]string, len(joinSecrets))
		for i, js := range joinSecrets {
			ids[i] = js.ID
		}
		log.Info("server joins by pre-shared secret enabled", "server_join_secret_file", c.ServerJoinSecretFile, "secret_ids", ids)
	}
	for _, ad := range []struct{ name, value string }{{"raft_addr", c.RaftAddr}, {"api_addr", c.APIAddr}} {
		if _, port, _ := net.SplitHostPort(ad.value); port == "0" {
			log.Warn("port 0 picks a free port at random; the cluster records the address, so a server that restarts must get the same one", ad.name, ad.value)
		}
	}
	if loopback, _ := metrics.CheckAddr(c.HTTPAddr); c.HTTPAddr != "" && !loopback {
		log.Warn("the metrics and health endpoints are reachable from the network (they carry no secrets and no authentication)", "http_addr", c.HTTPAddr)
	}
	srv, err := server.New(server.Config{
		DataDir: dataDir, NodeID: c.NodeID, RaftAddr: c.RaftAddr, APIAddr: c.APIAddr, AdminSocket: adminSocket, KEK: kek,
		AdminAddr: c.AdminAddr, AdminIDs: c.AdminIDs, HTTPAddr: c.HTTPAddr, CRLAddr: c.CRLAddr,
		BundleAddr: c.BundleAddr, BundleDNSNames: c.BundleDNSNames,
		Bootstrap: c.Bootstrap, TrustDomain: c.TrustDomain,
		Join: c.Join, JoinToken: c.JoinToken, TrustBundle: bundle, JoinTimeout: joinWait,
		ServerJoinSecretFile: c.ServerJoinSecretFile, RaftBind: c.RaftBind, APIBind: c.APIBind,
		NodeAttestors: attestors,
		Logger:        log, RaftLogger: raftLog,
		NodeSignRate: c.NodeSignRate, NodeSignBurst: c.NodeSignBurst, OperatorMintRate: c.OperatorMintRate, OperatorMintBurst: c.OperatorMintBurst,
		AdmissionWait: admissionWait, SignQueue: c.SignQueue, LedgerGrace: ledgerGrace,
		IssuanceDecisionCache: c.IssuanceDecisionCache,
		History:               hist.store, HistoryRetention: hist.retention, ExportHold: hist.hold,
	})
	if errors.Is(err, ca.ErrWrongKEK) {
		return fmt.Errorf("the key-encryption key %s does not open the server identity in %s; every server of a cluster uses the KEK the cluster was bootstrapped with: %w", kekFrom.File, dataDir, err)
	}
	if err != nil {
		return fmt.Errorf("start server: %w", err)
	}

	if len(attestors) > 0 {
		if err := checkBundleTrustDomain(srv.TrustBundle(), attestorTD); err != nil {
			srv.Close()
			return err
		}
	}
	bundlePath := server.TrustBundlePath(dataDir) // written by server.New
	log.Info("meshca server started", "node", c.NodeID, "raft_addr", srv.RaftAddr(), "api_addr", srv.APIAddr(),
		"admin_socket", srv.AdminSocket(), "trust_bundle", bundlePath, "http_addr", srv.HTTPAddr(),
		"operator", "meshca status --addr unix://"+srv.AdminSocket())

	if c.PprofAddr != "" {
		stopPprof, err := servePprof(c.PprofAddr, log)
		if err != nil {
			srv.Close()
			return err
		}
		defer stopPprof()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// A second signal now kills the process the default way.
		stop()
		log.Info("shutting down")
	}()
	if load != nil {
		r := &serverReloader{load: load, current: c, srv: srv, level: logLevel, raftLog: raftLog, log: log}
		reloading := make(chan struct{})
		go func() { defer close(reloading); r.watch(ctx) }() // ends with ctx
		defer func() { <-reloading }()
	}
	if err := srv.Run(ctx); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	log.Info("meshca server stopped")
	return nil
}

// serverKEK finds the cluster's key-encryption key: c.KEKFile, else
// $MESHCA_KEK_FILE, both of which must exist; else <dataDir>/kek, which is
// created only by a bootstrapping server that has no identity yet, with a
// warning that a KEK in the data directory is for development only. It
// returns the KEK and where it came from. dev is set for meshca dev, a
// single server whose warning need not speak of a cluster.
func (a *app) serverKEK(c serverConfig, dataDir string, hasIdentity, dev bool) (*ca.KEK, kekInfo, error) {
	if kek, info, ok, err := a.explicitKEK(c.KEKFile); ok || err != nil {
		return kek, info, err
	}

	file := server.KEKPath(dataDir)
	kek, err := ca.LoadKEKFile(file)
	var created bool
	switch {
	case err == nil:
	case !errors.Is(err, fs.ErrNotExist):
		return nil, kekInfo{}, fmt.Errorf("key-encryption key in the data directory: %w", err)
	case hasIdentity:
		return nil, kekInfo{}, fmt.Errorf("the server in %s was set up with a key-encryption key kept elsewhere: give the cluster's KEK file with --kek-file or $%s", dataDir, envKEKFile)
	case c.Join != "":
		return nil, kekInfo{}, fmt.Errorf("a joining server needs the cluster's key-encryption key: copy the KEK file the cluster was bootstrapped with to this host and give it with --kek-file or $%s", envKEKFile)
	case !c.Bootstrap:
		return nil, kekInfo{}, fmt.Errorf("this server has no identity yet: start the first server of a cluster with --bootstrap --trust-domain TD, and join the others with --join ADDR --join-token T --trust-bundle F; every server needs the cluster's key-encryption key (--kek-file or $%s)", envKEKFile)
	default:
		if kek, created, err = ca.LoadOrCreateKEKFile(file); err != nil {
			return nil, kekInfo{}, fmt.Errorf("key-encryption key in the data directory: %w", err)
		}
	}
	verb := "using"
	if created {
		verb = "created"
	}
	cluster := "; every server of the cluster needs this same file"
	if dev {
		cluster = ""
	}
	fmt.Fprintf(a.stderr, "meshca: warning: %s the key-encryption key %s, stored beside the keys it protects; this is for development only (use --kek-file or %s to keep it elsewhere%s)\n", verb, file, envKEKFile, cluster)
	return kek, kekInfo{File: file, Source: "data-dir", ID: kek.ID(), Created: created}, nil
}
