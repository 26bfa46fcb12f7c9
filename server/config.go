package server

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"time"

	"github.com/meshca/meshca/policy"

	"github.com/hashicorp/go-hclog"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/server/cluster"
	"github.com/meshca/meshca/store/postgres"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
)

// Config configures a server. Fields documented with a default may be left zero.
type Config struct {
	// DataDir holds the server's identity, Raft log and snapshots, and its
	// trust bundle; see "Data directory" in the package documentation.
	DataDir string
	// NodeID is the server's stable name in the cluster: letters, digits,
	// '.', '-' and '_', at most 64 bytes.
	NodeID string
	// RaftAddr is the host:port Raft listens on and peers dial.
	RaftAddr string
	// APIAddr is the host:port of the cluster API (and later the node API).
	APIAddr string
	// RaftBind and APIBind are where to listen when that is not the
	// advertised RaftAddr and APIAddr: a pod listens on all its interfaces
	// (":8300") and is reached at its stable DNS name, which the cluster
	// records as given, so a pod that comes back with another IP address
	// is found again. Default: RaftAddr and APIAddr, whose port 0 is then
	// replaced by the one picked.
	RaftBind string
	APIBind  string
	// AdminSocket is the operator API's Unix socket. Default: DataDir/admin.sock.
	AdminSocket string
	// AdminAddr, when set, also serves the operator API over mutual TLS on
	// this host:port, to clients whose X509-SVID names one of AdminIDs.
	AdminAddr string
	// AdminIDs seed the cluster's admins, the SPIFFE IDs allowed on
	// AdminAddr, while the replicated list is empty (see seedAdmins).
	AdminIDs []string
	// CRLAddr, when set, serves every authority's CRL over plain HTTP on
	// this host:port (see crlhttp.go), for relying parties outside the mesh.
	CRLAddr string
	// KEK seals the keys the server keeps; every server of a cluster holds
	// the same KEK.
	KEK *ca.KEK

	// Bootstrap forms a new cluster when the server has no state yet; it
	// needs TrustDomain. It is ignored once the server has state.
	Bootstrap   bool
	TrustDomain string

	// Join is the API address of any member, used when the server has no
	// identity yet; it needs JoinToken and TrustBundle, or
	// ServerJoinSecretFile and TrustDomain (TrustBundle optional).
	Join        string
	JoinToken   string
	TrustBundle []*x509.Certificate
	// ServerJoinSecretFile holds pre-shared server-join secrets (see
	// package joinsecret), so that servers started together form a
	// cluster with no token made in between: a joining server without
	// JoinToken proves it holds the file's first secret, and checks that
	// the member it contacts holds it too, which lets it trust the roots
	// that member sends when it has no TrustBundle; a member admits a
	// server that proves any secret of its file, which it reads again at
	// every join (so adding, rotating or deleting a secret takes effect at
	// once). Empty: joins need a single-use join token.
	ServerJoinSecretFile string
	// JoinTimeout is how long a joining server keeps trying while the
	// cluster cannot admit it yet: the member is unreachable, still
	// bootstrapping, or has no leader (Unavailable). A refusal (a used token,
	// a KEK that differs) ends the join at once. Default: DefaultJoinTimeout;
	// at most MaxJoinTimeout.
	JoinTimeout time.Duration

	// NodeAttestors are node attestors enabled beside join_token (always
	// on), e.g. x509pop and k8s_psat.
	NodeAttestors []attest.NodeAttestor

	// Logger receives the server's logs, and a line for every audit event.
	// Default: slog.Default().
	Logger *slog.Logger
	// Audit receives the audit trail: an event for every allow and deny
	// decision and every operator action. Default: a durable log in
	// DataDir/audit (see package audit), which also writes each event to
	// Logger.
	Audit audit.Recorder
	// Authorizer decides which identities may be issued to whom.
	// Default: registration entries (see Authorizer).
	Authorizer Authorizer
	// RaftLogger receives hashicorp/raft's logs. Default: warnings to stderr.
	RaftLogger hclog.Logger
	// Timing tunes Raft (zero: cluster.DefaultTiming).
	Timing cluster.Timing
	// Dial opens connections to peers; tests inject faults with it.
	Dial cluster.DialFunc
	// Clock is the time source of every lifetime, renewal, rotation,
	// expiry and prune, and of certificate checks in TLS handshakes.
	// Default: the real clock. Tests pass a clockwork.FakeClock to jump
	// days and years.
	Clock clockwork.Clock

	// LedgerGrace is how long a certificate's ledger record is kept after
	// the certificate expires. Default: DefaultLedgerGrace.
	LedgerGrace time.Duration
	// SignConcurrency is how many CSRs are signed at once. Default: twice
	// the number of CPUs.
	SignConcurrency int
	// SignQueue bounds the CSRs admitted and waiting, all nodes together.
	// Default: DefaultSignQueue.
	SignQueue int
	// NodeSignRate and NodeSignBurst bound each node's signing requests
	// (CSRs per second, and burst). Defaults: DefaultNodeSignRate and
	// DefaultNodeSignBurst. The burst must be at least the largest batch an
	// agent sends (meshca agents send at most 256 CSRs per call): a larger
	// batch is refused for good.
	NodeSignRate  float64
	NodeSignBurst int
	// OperatorMintRate and OperatorMintBurst bound the certificates
	// operators mint through the operator API, all operators together: a
	// budget of their own, apart from the nodes'. Defaults:
	// DefaultOperatorMintRate and DefaultOperatorMintBurst.
	OperatorMintRate  float64
	OperatorMintBurst int
	// AdmissionWait is how long a request over its node's (or the
	// operators') rate waits for its budget before it is refused with a
	// retry-after hint. Default: DefaultAdmissionWait; negative: no wait;
	// at most MaxAdmissionWait.
	AdmissionWait time.Duration

	// IntermediateTTL is the lifetime of the intermediates this server
	// certifies: its own at bootstrap, and, as leader, those of joining
	// and rotating servers. Each is prepared again at half of its life and
	// replaced at two thirds (see ca.PlanRotation). Default:
	// ca.DefaultIntermediateTTL (30 days). Tests shorten it.
	IntermediateTTL time.Duration
	// CRLLifetime is how long each CRL this server signs is valid (its
	// nextUpdate); it is signed again at half of it, or at once when its
	// revocations change. Default DefaultCRLLifetime (48 hours), at least
	// 10 seconds.
	CRLLifetime time.Duration

	// HTTPAddr is where /metrics (Prometheus), /healthz and /readyz are
	// served (host:port; port 0 picks one; see HTTPAddr). Empty: not
	// served.
	HTTPAddr string
	// Registry receives the server's metrics. Default: a registry of its
	// own (with the Go and process collectors).
	Registry *prometheus.Registry
	// BundleAddr, when set, serves the OPA bundle service API (HTTPS,
	// clients with an X509-SVID of the trust domain) on this host:port
	// (issue 12).
	BundleAddr string
	// BundleDNSNames are the DNS names of the bundle service's
	// certificate, which OPA checks against its service URL. Default:
	// localhost.
	BundleDNSNames []string
	// BundleMaxSize bounds an OPA bundle, sources and built. Default:
	// policy.DefaultMaxSize (4 MiB).
	BundleMaxSize int64
	// BundleKeep is how many revisions of each bundle are kept. Default:
	// DefaultBundleKeep.
	BundleKeep int
	// IssuanceDecisionCache is how many decisions of the issuance policy
	// each server remembers, so that renewals of unchanged workloads are
	// not evaluated again (policy.Issuance.CacheDecisions). Default:
	// policy.DefaultDecisionCache; negative: none.
	IssuanceDecisionCache int

	// PruneInterval is how often the leader prunes expired ledger records.
	// Default: DefaultPruneInterval.
	PruneInterval time.Duration

	// History, when set, is the PostgreSQL database the cluster's history
	// is exported to: the ledger by the leader, each server's audit log by
	// that server (see export.go). Issuance never waits for it.
	History *postgres.Store
	// HistoryRetention, when set, is how long certificates stay in History
	// after they expire, and audit events after they were recorded; the
	// leader deletes older rows in batches every PruneInterval. Zero keeps
	// everything.
	HistoryRetention time.Duration
	// ExportHold bounds how long the ledger holds records PostgreSQL has
	// not taken yet beyond LedgerGrace: with PostgreSQL down for longer,
	// they are pruned unexported (an error log and an audit event say how
	// many). Default: DefaultExportHold.
	ExportHold time.Duration
	// ExportBatch is the most records (ledger) or events (audit) one COPY
	// exports. Default: DefaultExportBatch.
	ExportBatch int
	// ExportInterval is how often an idle exporter looks for new records.
	// Default: DefaultExportInterval.
	ExportInterval time.Duration
}

// Join timeout default and bound.
const (
	DefaultJoinTimeout = 5 * time.Minute
	MaxJoinTimeout     = 24 * time.Hour
)

// Ledger retention defaults.
const (
	DefaultLedgerGrace   = time.Hour
	DefaultPruneInterval = time.Minute
)

// limit is a configured rate as a token bucket's; +Inf is no limit.
func limit(perSecond float64) rate.Limit { return rate.Limit(perSecond) }

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidNodeID reports whether id can name a server.
func ValidNodeID(id string) bool { return nodeIDPattern.MatchString(id) }

func (c *Config) validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("a data directory is required"))
	}
	if !ValidNodeID(c.NodeID) {
		errs = append(errs, fmt.Errorf("node ID %q: use 1-64 letters, digits, '.', '-' or '_'", c.NodeID))
	}
	for name, a := range map[string]string{"raft address": c.RaftAddr, "API address": c.APIAddr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port", name, a))
		}
	}
	if c.KEK == nil {
		errs = append(errs, errors.New("a key-encryption key is required"))
	}
	if c.AdminAddr != "" {
		if _, _, err := net.SplitHostPort(c.AdminAddr); err != nil {
			errs = append(errs, fmt.Errorf("admin address %q: want host:port", c.AdminAddr))
		}
	}
	for _, id := range c.AdminIDs {
		if _, err := spiffeid.FromString(id); err != nil {
			errs = append(errs, fmt.Errorf("admin ID %q: %v", id, err))
		}
	}
	if c.Bootstrap && c.Join != "" {
		errs = append(errs, errors.New("bootstrap and join exclude each other"))
	}
	switch {
	case c.Join == "":
	case c.JoinToken != "" && len(c.TrustBundle) == 0:
		errs = append(errs, errors.New("joining with a join token needs the cluster's trust bundle"))
	case c.JoinToken == "" && c.ServerJoinSecretFile == "":
		errs = append(errs, errors.New("joining needs a join token or a server-join secret file"))
	case len(c.TrustBundle) == 0 && c.TrustDomain == "":
		errs = append(errs, errors.New("joining with a server-join secret and no trust bundle needs the trust domain"))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = clockwork.NewRealClock()
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if err := duration.Within("join timeout", c.JoinTimeout, time.Second, MaxJoinTimeout); err != nil {
		errs = append(errs, err)
	}
	if c.LedgerGrace == 0 {
		c.LedgerGrace = DefaultLedgerGrace
	}
	if c.BundleAddr != "" && len(c.BundleDNSNames) == 0 {
		c.BundleDNSNames = []string{"localhost"}
	}
	if c.BundleKeep <= 0 {
		c.BundleKeep = DefaultBundleKeep
	}
	if c.BundleKeep > 1024 || c.BundleMaxSize < 0 {
		return errors.New("BundleKeep is at most 1024 and BundleMaxSize not negative")
	}
	if c.IssuanceDecisionCache == 0 {
		c.IssuanceDecisionCache = policy.DefaultDecisionCache
	}
	if c.PruneInterval == 0 {
		c.PruneInterval = DefaultPruneInterval
	}
	if c.SignQueue == 0 {
		c.SignQueue = DefaultSignQueue
	}
	if c.NodeSignRate == 0 {
		c.NodeSignRate = DefaultNodeSignRate
	}
	if c.NodeSignBurst == 0 {
		c.NodeSignBurst = DefaultNodeSignBurst
	}
	if c.OperatorMintRate == 0 {
		c.OperatorMintRate = DefaultOperatorMintRate
	}
	if c.OperatorMintBurst == 0 {
		c.OperatorMintBurst = DefaultOperatorMintBurst
	}
	switch {
	case c.AdmissionWait == 0:
		c.AdmissionWait = DefaultAdmissionWait
	case c.AdmissionWait < 0:
		c.AdmissionWait = 0
	case c.AdmissionWait > MaxAdmissionWait:
		errs = append(errs, fmt.Errorf("admission wait %s: at most %s", c.AdmissionWait, MaxAdmissionWait))
	}
	if c.SignQueue < 0 || c.NodeSignRate < 0 || c.NodeSignBurst < 0 || c.SignConcurrency < 0 || c.OperatorMintRate < 0 || c.OperatorMintBurst < 0 {
		errs = append(errs, errors.New("signing limits must not be negative"))
	}
	if c.CRLLifetime == 0 {
		c.CRLLifetime = DefaultCRLLifetime
	}
	if c.CRLLifetime < 10*time.Second || c.CRLLifetime > ca.DefaultRootTTL {
		errs = append(errs, fmt.Errorf("CRL lifetime %s: want 10s to %s", c.CRLLifetime, ca.DefaultRootTTL))
	}
	if c.IntermediateTTL == 0 {
		c.IntermediateTTL = ca.DefaultIntermediateTTL
	}
	if c.IntermediateTTL < time.Minute || c.IntermediateTTL > ca.DefaultRootTTL {
		errs = append(errs, fmt.Errorf("intermediate TTL %s: want 1m to %s", c.IntermediateTTL, ca.DefaultRootTTL))
	}
	if c.LedgerGrace < 0 || c.PruneInterval < 0 {
		errs = append(errs, errors.New("ledger grace and prune interval must not be negative"))
	}
	if c.ExportHold == 0 {
		c.ExportHold = DefaultExportHold
	}
	if c.ExportBatch == 0 {
		c.ExportBatch = DefaultExportBatch
	}
	if c.ExportInterval == 0 {
		c.ExportInterval = DefaultExportInterval
	}
	if c.ExportHold < 0 || c.ExportBatch < 0 || c.ExportInterval < 0 || c.HistoryRetention < 0 {
		errs = append(errs, errors.New("history export hold, batch, interval and retention must not be negative"))
	}
	if c.AdminSocket == "" && c.DataDir != "" {
		c.AdminSocket = DefaultAdminSocket(c.DataDir)
	}
	return errors.Join(errs...)
}
