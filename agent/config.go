package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/sds"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures an agent. Fields documented with a default may be zero.
type Config struct {
	// Servers are the API addresses (host:port) of the servers, tried in turn.
	Servers []string
	// TrustBundle holds the trust domain's ECDSA roots; the agent
	// authenticates servers with it until it receives the bundle itself.
	TrustBundle []*x509.Certificate
	// DataDir keeps the agent's own SVID and key (mode 0600).
	DataDir string
	// SocketPath is the Unix socket of the Workload API (created mode 0666
	// in a directory the operator controls: any local process may ask, and
	// each gets only the identities its attested selectors earn).
	SocketPath string
	// Evidence proves the node's identity at the first attestation.
	Evidence attest.NodeEvidence
	// WorkloadAttestors find the selectors of a calling process.
	WorkloadAttestors []attest.WorkloadAttestor
	// RenewFraction is the part of an SVID's lifetime after which it is
	// renewed. Default 0.5 (half-life).
	RenewFraction float64
	// Logger receives the agent's logs, and a line for every audit event.
	// Default: slog.Default().
	Logger *slog.Logger
	// Audit receives the agent's audit trail: every grant and refusal of
	// the Workload API and SDS. Default: a durable log in
	// DataDir/agent/audit (see package audit) whose source is AuditSource.
	Audit audit.Recorder
	// AuditSource names this agent in its audit events. Default:
	// "agent@<host name>".
	AuditSource string
	// SDSNames are the names of the default SDS resources (Istio's
	// "default" and "ROOTCA", SPIRE's "ALL" by default); see package sds.
	SDSNames sds.Naming
	// SDSDisableSPIFFEValidator serves the "ALL" bundle as a plain
	// trusted_ca instead of Envoy's SPIFFE certificate validator (an Envoy
	// node can also ask so in its metadata).
	SDSDisableSPIFFEValidator bool
	// BundleAddr, when set, serves the cached OPA bundles over OPA's
	// bundle service API on this loopback host:port (issue 12).
	BundleAddr string
	// ExtAuthzBundle, when set, serves Envoy's ext_authz gRPC service on
	// the agent socket, deciding with this OPA bundle's latest revision.
	ExtAuthzBundle string
	// ExtAuthzDecision is the decision path in the bundle. Default:
	// policy.DefaultAuthzDecision (envoy/authz/allow, as OPA-Envoy).
	ExtAuthzDecision string
	// Dial opens connections to servers (tests inject faults). Default: TCP.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Clock is the time source of SVID lifetimes and renewals, and of
	// certificate checks in TLS handshakes with servers. Default: the real
	// clock. Tests pass a clockwork.FakeClock to jump days.
	Clock clockwork.Clock
	// HTTPAddr is where /metrics (Prometheus), /healthz and /readyz are
	// served (host:port; port 0 picks one; see Agent.HTTPAddr). Empty: not
	// served.
	HTTPAddr string
	// Registry receives the agent's metrics. Default: a registry of its
	// own (with the Go and process collectors).
	Registry *prometheus.Registry
}

func (c *Config) validate() error {
	var errs []error
	if len(c.Servers) == 0 {
		errs = append(errs, errors.New("at least one server address is required"))
	}
	if len(c.TrustBundle) == 0 {
		errs = append(errs, errors.New("a trust bundle is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("a data directory is required"))
	}
	if c.SocketPath == "" {
		errs = append(errs, errors.New("a socket path is required"))
	}
	if c.RenewFraction == 0 {
		c.RenewFraction = 0.5
	}
	if c.RenewFraction <= 0 || c.RenewFraction >= 1 {
		errs = append(errs, errors.New("the renew fraction must be between 0 and 1"))
	}
	if err := c.SDSNames.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("SDS names: %w", err))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.AuditSource == "" {
		host, _ := os.Hostname()
		c.AuditSource = "agent@" + host
	}
	if c.Clock == nil {
		c.Clock = clockwork.NewRealClock()
	}
	if c.Dial == nil {
		c.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	return errors.Join(errs...)
}
