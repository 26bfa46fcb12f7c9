package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/tunnel"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// issue 14: meshca tunnel.

const tunnelLong = `tunnel runs meshca's reference tunnel endpoint: an L4 mTLS proxy (like
stunnel, ghostunnel or Envoy's TCP proxy) that gets its certificate, its
validation context (roots and CRLs) and its authorization policy from the
local agent over Envoy SDS, as an Envoy would, and enforces them on every
connection. Plain services join the mesh without code changes.

Listeners (--inbound and --outbound are repeatable; in a --config file the
lists "inbound" and "outbound"):
  inbound   TLS termination: mTLS from peers on LISTEN, plaintext to TARGET.
            The peer's chain must verify against the trust domain's roots
            and the CRL of every CA in it; its SPIFFE ID is then authorized
            by the OPA bundle's policy, whose input is shaped like
            OPA-Envoy's: attributes.source.principal and .address,
            attributes.destination.principal and .address, and
            attributes.contextExtensions meshca_tunnel_listener,
            meshca_tunnel_direction, meshca_tunnel_mode and
            meshca_tunnel_authenticated.
              --inbound LISTEN=TARGET[,mode=STRICT|PERMISSIVE][,name=N]
            STRICT (default) takes mTLS only; PERMISSIVE also takes
            plaintext (told apart by the first bytes) and asks the policy
            with no source principal and meshca_tunnel_authenticated
            "false".
  outbound  TLS origination: plaintext from local clients on LISTEN, mTLS to
            REMOTE with this workload's SVID; the remote's SPIFFE ID must be
            an expected one, or the policy decides (source: this workload).
              --outbound LISTEN=REMOTE,expect=ID[,expect=ID...][,policy][,name=N]
            Egress: with server-name=H[,ca-file=F] the remote is a service
            outside the mesh, verified by the web PKI (the CA file, else the
            system roots) and name H, and no client certificate is sent; put
            an inbound listener in front whose policy decides who may leave
            (deploy/examples/tunnel/egress-gateway).

Secrets come only from the agent's socket (--socket, else
$SPIFFE_ENDPOINT_SOCKET): "default" and "ROOTCA" (renamed with --svid-name,
--bundle-name) and the OPA bundle opa-bundle:<--policy-bundle>, whose
signature is verified with the trust domain's OPA key: save it with
  meshca bundle show --opa-key > opa-key.pem
and give it as --policy-key-file (the key ID is read from its "# kid:" line,
or give --policy-key-id). A rotated certificate, a new CRL or a new policy
revision applies to the next connection; open connections keep running
(--drain-on-revoke closes those whose peer a new CRL revokes). A listener
without a valid certificate, validation context or (when it needs one)
policy accepts nothing: each connection is closed and audited with the
reason, and /readyz on --http-addr says why. When the agent goes away, the
last good secrets keep serving until the certificate expires.

TLS 1.3 only, ECDSA identities: SM2 certificates are refused (Go's TLS has
no SM2 cipher suites). Every decision is audited (to --audit-dir, else as
log lines with audit=true); every connection's end is logged with the peer's
SPIFFE ID, the decision, the bytes both ways and the duration, and counted
in the metrics on --http-addr (/metrics, /healthz, /readyz).

A --config file is JSON with the flags' names in snake_case; "inbound" and
"outbound" are lists of objects {"name", "listen", "target", "mode"} and
{"name", "listen", "remote", "expect_ids", "policy", "server_name",
"ca_file"}. Flags override it.`

// tunnelConfig is the configuration of meshca tunnel.
type tunnelConfig struct {
	Socket           string           `json:"socket"`
	SVIDName         string           `json:"svid_name"`
	BundleName       string           `json:"bundle_name"`
	PolicyBundle     string           `json:"policy_bundle"`
	PolicyKeyFile    string           `json:"policy_key_file"`
	PolicyKeyID      string           `json:"policy_key_id"`
	Decision         string           `json:"decision"`
	Inbound          []tunnelInbound  `json:"inbound"`
	Outbound         []tunnelOutbound `json:"outbound"`
	HandshakeTimeout string           `json:"handshake_timeout"`
	DialTimeout      string           `json:"dial_timeout"`
	DrainOnRevoke    bool             `json:"drain_on_revoke"`
	HTTPAddr         string           `json:"http_addr"`
	AuditDir         string           `json:"audit_dir"`
	LogLevel         string           `json:"log_level"`
	LogFormat        string           `json:"log_format"`
}

// tunnelFlags are the listener flags as given, parsed into tunnelConfig.
type tunnelFlags struct{ inbound, outbound []string }

type tunnelInbound struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	Target string `json:"target"`
	Mode   string `json:"mode"`
}

type tunnelOutbound struct {
	Name      string   `json:"name"`
	Listen    string   `json:"listen"`
	Remote    string   `json:"remote"`
	ExpectIDs []string `json:"expect_ids"`
	Policy    bool     `json:"policy"`
	// An egress listener to a service outside the mesh.
	ServerName string `json:"server_name"`
	CAFile     string `json:"ca_file"`
}

// parseInboundFlag parses LISTEN=TARGET[,mode=M][,name=N].
func parseInboundFlag(s string) (tunnelInbound, error) {
	head, opts, _ := strings.Cut(s, ",")
	listen, target, ok := strings.Cut(head, "=")
	if !ok || listen == "" || target == "" {
		return tunnelInbound{}, usageErrorf("--inbound %q: want LISTEN=TARGET[,mode=STRICT|PERMISSIVE][,name=N]", s)
	}
	in := tunnelInbound{Listen: listen, Target: target}
	for _, o := range splitOpts(opts) {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "mode":
			in.Mode = strings.ToUpper(v)
		case "name":
			in.Name = v
		default:
			return tunnelInbound{}, usageErrorf("--inbound %q: unknown option %q (mode, name)", s, k)
		}
	}
	return in, nil
}

// parseOutboundFlag parses LISTEN=REMOTE[,expect=ID...][,policy][,name=N].
func parseOutboundFlag(s string) (tunnelOutbound, error) {
	head, opts, _ := strings.Cut(s, ",")
	listen, remote, ok := strings.Cut(head, "=")
	if !ok || listen == "" || remote == "" {
		return tunnelOutbound{}, usageErrorf("--outbound %q: want LISTEN=REMOTE,expect=ID[,expect=ID][,policy][,name=N]", s)
	}
	o := tunnelOutbound{Listen: listen, Remote: remote}
	for _, opt := range splitOpts(opts) {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "expect":
			o.ExpectIDs = append(o.ExpectIDs, v)
		case "policy":
			o.Policy = true
		case "server-name":
			o.ServerName = v
		case "ca-file":
			o.CAFile = v
		case "name":
			o.Name = v
		default:
			return tunnelOutbound{}, usageErrorf("--outbound %q: unknown option %q (expect, policy, name, server-name, ca-file)", s, k)
		}
	}
	return o, nil
}

func splitOpts(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func (c *tunnelConfig) override(fs *pflag.FlagSet, f *tunnelConfig, lf *tunnelFlags) error {
	str := map[string][2]*string{
		"socket": {&c.Socket, &f.Socket}, "svid-name": {&c.SVIDName, &f.SVIDName}, "bundle-name": {&c.BundleName, &f.BundleName},
		"policy-bundle": {&c.PolicyBundle, &f.PolicyBundle}, "policy-key-file": {&c.PolicyKeyFile, &f.PolicyKeyFile},
		"policy-key-id": {&c.PolicyKeyID, &f.PolicyKeyID}, "decision": {&c.Decision, &f.Decision},
		"handshake-timeout": {&c.HandshakeTimeout, &f.HandshakeTimeout}, "dial-timeout": {&c.DialTimeout, &f.DialTimeout},
		"http-addr": {&c.HTTPAddr, &f.HTTPAddr}, "audit-dir": {&c.AuditDir, &f.AuditDir},
		"log-level": {&c.LogLevel, &f.LogLevel}, "log-format": {&c.LogFormat, &f.LogFormat},
	}
	for name, p := range str {
		if fs.Changed(name) || *p[0] == "" {
			*p[0] = *p[1]
		}
	}
	if fs.Changed("drain-on-revoke") {
		c.DrainOnRevoke = f.DrainOnRevoke
	}
	if fs.Changed("inbound") {
		c.Inbound = nil
		for _, s := range lf.inbound {
			in, err := parseInboundFlag(s)
			if err != nil {
				return err
			}
			c.Inbound = append(c.Inbound, in)
		}
	}
	if fs.Changed("outbound") {
		c.Outbound = nil
		for _, s := range lf.outbound {
			o, err := parseOutboundFlag(s)
			if err != nil {
				return err
			}
			c.Outbound = append(c.Outbound, o)
		}
	}
	return nil
}

func (a *app) newTunnelCommand() *cobra.Command {
	var (
		configFile string
		flags      tunnelConfig
		lf         tunnelFlags
	)
	cmd := &cobra.Command{
		Use: "tunnel --config F | [--socket S] --inbound LISTEN=TARGET[,mode=M] ... --outbound LISTEN=REMOTE,expect=ID ...\n" +
			"              [--policy-bundle NAME --policy-key-file F [--policy-key-id KID]] [--http-addr H:P] [--audit-dir D]\n" +
			"              [--handshake-timeout 10s] [--dial-timeout 5s] [--drain-on-revoke]",
		Short: "Run an mTLS tunnel endpoint fed by the agent's SDS and OPA bundles",
		Long:  tunnelLong,
		Example: `  meshca bundle show --opa-key > opa-key.pem
  meshca tunnel --socket /run/meshca/agent.sock --policy-bundle mesh --policy-key-file opa-key.pem \
      --inbound 0.0.0.0:8443=127.0.0.1:8080 --http-addr 127.0.0.1:9102
  meshca tunnel --outbound 127.0.0.1:9000=b.internal:8443,expect=spiffe://example.org/ns/b/sa/server`,
		Args:                  cobra.NoArgs,
		DisableFlagsInUseLine: true,
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "JSON configuration file; flags override its settings")
	f.StringVar(&flags.Socket, "socket", "", "the agent's socket (default $"+envWorkloadSocket+")")
	f.StringVar(&flags.SVIDName, "svid-name", sds.DefaultSVIDName, "SDS name of the certificate and key")
	f.StringVar(&flags.BundleName, "bundle-name", sds.DefaultBundleName, "SDS name of the validation context (roots and CRLs)")
	f.StringVar(&flags.PolicyBundle, "policy-bundle", "", "name of the OPA bundle (meshca policy push --name); required with an inbound listener")
	f.StringVar(&flags.PolicyKeyFile, "policy-key-file", "", "the OPA bundle verification key, as meshca bundle show --opa-key prints it")
	f.StringVar(&flags.PolicyKeyID, "policy-key-id", "", "the key's ID (default: the file's \"# kid:\" line)")
	f.StringVar(&flags.Decision, "decision", policy.DefaultAuthzDecision, "the policy's decision path under data")
	f.StringArrayVar(&lf.inbound, "inbound", nil, "an inbound listener LISTEN=TARGET[,mode=STRICT|PERMISSIVE][,name=N]; repeatable")
	f.StringArrayVar(&lf.outbound, "outbound", nil, "an outbound listener LISTEN=REMOTE,expect=ID[,expect=ID][,policy][,name=N]; repeatable")
	f.StringVar(&flags.HandshakeTimeout, "handshake-timeout", "10s", "bound on the first bytes, the TLS handshake and the decision")
	f.StringVar(&flags.DialTimeout, "dial-timeout", "5s", "bound on dialling a target or remote")
	f.BoolVar(&flags.DrainOnRevoke, "drain-on-revoke", false, "close open connections whose peer a new CRL revokes")
	f.StringVar(&flags.HTTPAddr, "http-addr", "", "serve /metrics, /healthz and /readyz on this address (default: none)")
	f.StringVar(&flags.AuditDir, "audit-dir", "", "durable audit log directory (default: audit events as log lines only)")
	f.StringVar(&flags.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&flags.LogFormat, "log-format", "", "log format: text or json (default text, json with --output json)")
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		var cfg tunnelConfig
		if configFile != "" {
			if err := loadConfigFile(configFile, &cfg); err != nil {
				return err
			}
			resolveConfigPaths(configFile, &cfg.Socket, &cfg.PolicyKeyFile, &cfg.AuditDir)
			for i := range cfg.Outbound {
				resolveConfigPaths(configFile, &cfg.Outbound[i].CAFile)
			}
		}
		if err := cfg.override(cmd.Flags(), &flags, &lf); err != nil {
			return err
		}
		return a.tunnel(cmd.Context(), cfg)
	})
	return cmd
}

// tunnelSettings checks c and turns it into the tunnel's Config.
func (a *app) tunnelSettings(c tunnelConfig) (tunnel.Config, error) {
	tc := tunnel.Config{Socket: c.Socket, SVIDName: c.SVIDName, BundleName: c.BundleName, Bundle: c.PolicyBundle,
		Decision: c.Decision, DrainOnRevoke: c.DrainOnRevoke}
	if tc.Socket == "" {
		tc.Socket = strings.TrimPrefix(a.getenv(envWorkloadSocket), "unix://")
	}
	if tc.Socket == "" {
		return tc, usageErrorf("the agent's socket is required: --socket or $%s", envWorkloadSocket)
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		return tc, err
	}
	if c.LogFormat != "" {
		if err := checkLogFormat(c.LogFormat); err != nil {
			return tc, err
		}
	}
	if c.HTTPAddr != "" {
		if _, err := metrics.CheckAddr(c.HTTPAddr); err != nil {
			return tc, usageErrorf("--http-addr: %v", err)
		}
	}
	var err error
	if tc.HandshakeTimeout, err = positiveDuration("handshake timeout", c.HandshakeTimeout); err != nil {
		return tc, err
	}
	if tc.DialTimeout, err = positiveDuration("dial timeout", c.DialTimeout); err != nil {
		return tc, err
	}
	if len(c.Inbound)+len(c.Outbound) == 0 {
		return tc, usageErrorf("no listener: give --inbound or --outbound (or the config file's inbound and outbound lists)")
	}
	for i, in := range c.Inbound {
		if in.Name == "" {
			in.Name = fmt.Sprintf("inbound-%d", i)
		}
		if in.Mode == "" {
			in.Mode = string(tunnel.Strict)
		}
		if m := tunnel.Mode(strings.ToUpper(in.Mode)); m != tunnel.Strict && m != tunnel.Permissive {
			return tc, usageErrorf("inbound %s: mode %q: want STRICT or PERMISSIVE", in.Name, in.Mode)
		}
		if _, _, err := net.SplitHostPort(in.Listen); err != nil {
			return tc, usageErrorf("inbound %s: listen address %q: %v", in.Name, in.Listen, err)
		}
		if _, _, err := net.SplitHostPort(in.Target); err != nil {
			return tc, usageErrorf("inbound %s: target address %q: %v", in.Name, in.Target, err)
		}
		tc.Inbound = append(tc.Inbound, tunnel.Inbound{Name: in.Name, Listen: in.Listen, Target: in.Target, Mode: tunnel.Mode(strings.ToUpper(in.Mode))})
	}
	needPolicy := len(c.Inbound) > 0
	for i, o := range c.Outbound {
		if o.Name == "" {
			o.Name = fmt.Sprintf("outbound-%d", i)
		}
		if _, _, err := net.SplitHostPort(o.Listen); err != nil {
			return tc, usageErrorf("outbound %s: listen address %q: %v", o.Name, o.Listen, err)
		}
		if _, _, err := net.SplitHostPort(o.Remote); err != nil {
			return tc, usageErrorf("outbound %s: remote address %q: %v", o.Name, o.Remote, err)
		}
		out := tunnel.Outbound{Name: o.Name, Listen: o.Listen, Remote: o.Remote, Policy: o.Policy}
		if o.ServerName != "" {
			if len(o.ExpectIDs) > 0 || o.Policy {
				return tc, usageErrorf("outbound %s: an external remote (server name %s) has no SPIFFE ID: drop expect and policy, and authorize at an inbound listener in front of it", o.Name, o.ServerName)
			}
			out.External = &tunnel.External{ServerName: o.ServerName}
			if o.CAFile != "" {
				b, err := os.ReadFile(o.CAFile)
				if err != nil {
					return tc, usageErrorf("outbound %s: CA file: %v", o.Name, err)
				}
				out.External.Roots = x509.NewCertPool()
				if !out.External.Roots.AppendCertsFromPEM(b) {
					return tc, usageErrorf("outbound %s: CA file %s holds no PEM certificate", o.Name, o.CAFile)
				}
			}
			tc.Outbound = append(tc.Outbound, out)
			continue
		} else if o.CAFile != "" {
			return tc, usageErrorf("outbound %s: ca_file is for external remotes: give server_name too", o.Name)
		}
		for _, s := range o.ExpectIDs {
			id, err := spiffeid.FromString(s)
			if err != nil {
				return tc, usageErrorf("outbound %s: expected ID %q: %v", o.Name, s, err)
			}
			out.ExpectIDs = append(out.ExpectIDs, id)
		}
		if len(out.ExpectIDs) == 0 && !o.Policy {
			return tc, usageErrorf("outbound %s: give the remote's SPIFFE ID (expect=ID, or expect_ids), or policy to let the policy decide", o.Name)
		}
		needPolicy = needPolicy || o.Policy
		tc.Outbound = append(tc.Outbound, out)
	}
	if needPolicy {
		if c.PolicyBundle == "" || c.PolicyKeyFile == "" {
			return tc, usageErrorf("inbound listeners (and outbound ones with policy) need --policy-bundle and --policy-key-file (save the key with meshca bundle show --opa-key > opa-key.pem)")
		}
		if err := policy.CheckName(c.PolicyBundle); err != nil {
			return tc, usageErrorf("--policy-bundle: %v", err)
		}
		b, err := os.ReadFile(c.PolicyKeyFile)
		if err != nil {
			return tc, usageErrorf("--policy-key-file: %v", err)
		}
		if tc.BundleKeyPEM, tc.BundleKeyID, err = tunnel.ParseKeyFile(b); err != nil {
			return tc, usageErrorf("--policy-key-file %s: %v", c.PolicyKeyFile, err)
		}
		if c.PolicyKeyID != "" {
			tc.BundleKeyID = c.PolicyKeyID
		}
		if tc.BundleKeyID == "" {
			return tc, usageErrorf("--policy-key-file %s names no key ID (no \"# kid:\" line): give --policy-key-id", c.PolicyKeyFile)
		}
	}
	return tc, nil
}

func positiveDuration(what, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, usageErrorf("%s %q: want a positive duration such as 10s", what, s)
	}
	return d, nil
}

// tunnel runs a tunnel endpoint until ctx ends or SIGINT/SIGTERM.
func (a *app) tunnel(ctx context.Context, c tunnelConfig) error {
	tc, err := a.tunnelSettings(c)
	if err != nil {
		return err
	}
	format := c.LogFormat
	if format == "" {
		format = a.defaultLogFormat()
	}
	log := a.logger(c.LogLevel, format)
	tc.Log = log
	if c.AuditDir != "" {
		l, err := audit.Open(audit.Config{Dir: c.AuditDir, Source: "meshca-tunnel", Logger: log})
		if err != nil {
			return fmt.Errorf("tunnel audit log: %w", err)
		}
		defer l.Close()
		tc.Audit = l
	} else {
		tc.Audit = &tunnel.LogAudit{Log: log}
	}
	t, err := tunnel.New(tc)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	var hs *http.Server
	if c.HTTPAddr != "" {
		ln, err := net.Listen("tcp", c.HTTPAddr)
		if err != nil {
			return fmt.Errorf("--http-addr: %w", err)
		}
		hs = &http.Server{Handler: t.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = hs.Serve(ln) }()
		defer hs.Close()
		log.Info("metrics and health", "addr", ln.Addr().String())
	}
	for _, in := range tc.Inbound {
		log.Info("inbound listener", "name", in.Name, "addr", t.Addr(in.Name).String(), "target", in.Target, "mode", string(in.Mode))
	}
	for _, o := range tc.Outbound {
		log.Info("outbound listener", "name", o.Name, "addr", t.Addr(o.Name).String(), "remote", o.Remote)
	}
	go func() {
		<-ctx.Done()
		stop()
		log.Info("shutting down")
	}()
	if err := t.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("meshca tunnel stopped")
	return nil
}
