package server

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/rpcerr"
	"github.com/meshca/meshca/internal/run"
	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/server/cluster"
	"github.com/meshca/meshca/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protojson"
)

// maxRequestSize bounds every gRPC request a server accepts.
const maxRequestSize = 4 << 20

// Server is a running meshca server.
type Server struct {
	cfg Config
	log *slog.Logger
	// events is the audit trail; auditLog is it when the server opened
	// its own (closed with the server).
	events   audit.Recorder
	auditLog *audit.Log
	// authorizer decides issuance (see issue).
	authorizer Authorizer
	td         spiffeid.TrustDomain

	mu sync.Mutex // guards id and jwtKeys; held while identity.json is written
	id *identity

	tlsID     *cluster.Identity
	stores    *store.RaftStores
	fsm       *raftfsm.FSM
	node      *cluster.Node
	raftLn    net.Listener
	apiLn     net.Listener
	adminLn   net.Listener
	adminTCP  net.Listener // the operator API over mTLS, when configured
	crlLn     net.Listener // the CRL HTTP endpoint, when configured
	crlHTTP   *http.Server
	api       *grpc.Server
	admin     *grpc.Server
	adminTLS  *grpc.Server
	closeOnce sync.Once
	// issuers are this server's signing intermediates, replaced whole
	// when one rotates: a request loads them once.
	issuers atomic.Pointer[issuerSet]
	// syncSends counts the updates sent on Sync streams (tests, metrics).
	syncSends atomic.Int64
	// syncWakes counts the wake-ups of Sync streams.
	syncWakes atomic.Int64
	// rotated wakes the rotation loop (tests, operators).
	rotated chan struct{}
	// attestors are the enabled node attestors, by name; replaced whole
	// (SetNodeAttestors).
	attestors atomic.Pointer[map[string]attest.NodeAttestor]
	admission *admission
	jwtKeys   map[string]crypto.Signer // opened JWT keys by kid; guarded by mu
	// metrics counts issuance events; registry holds them and the state
	// collectors; httpSrv serves /metrics, /healthz and /readyz when
	// Config.HTTPAddr is set.
	metrics  *serverMetrics
	registry *prometheus.Registry
	httpSrv  *metrics.Server
	// export is the state of the history export (Config.History).
	export exportState
	// issuance is the compiled issuance policy (issue 12).
	issuance issuancePolicy
	// bundles is the OPA bundle service, when BundleAddr is set.
	bundles      *bundleServer
	checkKeyOnce sync.Once
	checkKeyVal  *ecdsa.PrivateKey
}

// New prepares a server: it loads its identity, or creates one by
// bootstrapping or joining, opens its stores, starts its Raft node and
// listeners, and writes the trust bundle to TrustBundlePath. Run serves.
func New(cfg Config) (_ *Server, err error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("server config: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), events: cfg.Audit, authorizer: cfg.Authorizer}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if s.events == nil {
		recent := 0
		if cfg.History != nil {
			recent = auditRecent
		}
		if s.auditLog, err = audit.Open(audit.Config{Dir: auditDir(cfg.DataDir), Source: cfg.NodeID, Clock: cfg.Clock,
			Logger: cfg.Logger.With("node", cfg.NodeID), QuietAllows: quietAllows, Recent: recent}); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		s.events = s.auditLog
	}
	// Listen first: a joining server must tell the cluster where it is.
	if s.raftLn, err = net.Listen("tcp", cmp.Or(cfg.RaftBind, cfg.RaftAddr)); err != nil {
		return nil, fmt.Errorf("raft address: %w", err)
	}
	if s.apiLn, err = net.Listen("tcp", cmp.Or(cfg.APIBind, cfg.APIAddr)); err != nil {
		return nil, fmt.Errorf("API address: %w", err)
	}
	raftAdvertise := ""
	if cfg.RaftBind == "" {
		s.cfg.RaftAddr = s.raftLn.Addr().String()
	} else {
		raftAdvertise = cfg.RaftAddr
	}
	if cfg.APIBind == "" {
		s.cfg.APIAddr = s.apiLn.Addr().String()
	}

	id, err := loadIdentity(cfg.DataDir, cfg.KEK)
	if err != nil {
		return nil, err
	}
	if id != nil && id.Bootstrap != nil {
		// A first start was interrupted: it may have left a Raft term
		// without the bootstrap entry, which nothing can have committed.
		if err := clearInterruptedBootstrap(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	hasState, err := store.HasState(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	switch {
	case id != nil:
		if cfg.TrustDomain != "" && cfg.TrustDomain != id.TrustDomain {
			return nil, fmt.Errorf("data directory %s belongs to trust domain %q, not %q", cfg.DataDir, id.TrustDomain, cfg.TrustDomain)
		}
	case hasState:
		return nil, fmt.Errorf("data directory %s has Raft state but no server identity; restore the identity or start from an empty directory", cfg.DataDir)
	case cfg.Join != "":
		if id, err = s.join(); err != nil {
			return nil, err
		}
	case cfg.Bootstrap:
		td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
		if err != nil {
			return nil, fmt.Errorf("bootstrap needs a valid trust domain: %w", err)
		}
		if id, err = newBootstrapIdentity(&s.cfg, td); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("this server has no identity yet: start the first server with --bootstrap, and join the others with --join ADDR --join-token T --trust-bundle F")
	}
	// Saved before anything else: from here a crash at any point resumes.
	if err := id.save(cfg.DataDir); err != nil {
		return nil, err
	}
	if err := finishJoin(cfg.DataDir); err != nil {
		return nil, err
	}
	s.id = id
	s.rotated = make(chan struct{}, 1)
	if s.td, err = id.trustDomain(); err != nil {
		return nil, err
	}
	if s.authorizer == nil {
		s.authorizer = entryAuthorizer{td: s.td}
	}
	s.issuance.cacheSize = cfg.IssuanceDecisionCache
	s.authorizer = &policyAuthorizer{base: s.authorizer, td: s.td, ip: &s.issuance}
	s.tlsID = cluster.NewIdentity(s.td, cfg.Clock)
	// A server back from a long stop may find its intermediates due: what
	// rotation can do without the cluster (activate a prepared successor,
	// or certify one with the roots if the active one expired) it does now,
	// so that it can authenticate to its peers.
	s.mu.Lock()
	err = s.installIssuersLocked()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := s.rotateLocally(); err != nil {
		return nil, err
	}
	if _, err := s.refreshCertificate(false); err != nil {
		return nil, err
	}
	s.admission = newAdmission(cfg.Clock, admissionLimits{concurrency: cfg.SignConcurrency, queue: cfg.SignQueue,
		node: limit(cfg.NodeSignRate), nodeBurst: cfg.NodeSignBurst, operator: limit(cfg.OperatorMintRate), operatorBurst: cfg.OperatorMintBurst,
		wait: cfg.AdmissionWait})
	s.installAttestors(cfg.NodeAttestors)

	if s.stores, err = store.OpenRaft(cfg.DataDir, store.RaftConfig{Logger: cfg.RaftLogger}); err != nil {
		return nil, err
	}
	s.fsm = raftfsm.New()
	// The metrics exist before Raft applies anything (it reports apply times).
	if s.registry = cfg.Registry; s.registry == nil {
		s.registry = metrics.NewRegistry()
	}
	s.metrics = newServerMetrics(s.registry, s)
	s.node, err = cluster.Start(cluster.Config{
		NodeID: cfg.NodeID, RaftListener: s.raftLn, RaftAdvertise: raftAdvertise, Identity: s.tlsID, FSM: s.fsm, Stores: s.stores,
		Dial: cfg.Dial, Logger: s.log, RaftLogger: cfg.RaftLogger, Timing: cfg.Timing, Clock: cfg.Clock,
		ApplyObserver: func(entries int, d time.Duration) { s.metrics.apply.Observe(d.Seconds()) },
	})
	if err != nil {
		return nil, err
	}
	if s.id.Bootstrap != nil && !hasState {
		if err := s.node.Bootstrap(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}

	// Every API maps its handlers' errors to status codes in one place.
	s.api = grpc.NewServer(append(rpcerr.ServerOptions(nil, nil),
		grpc.Creds(credentials.NewTLS(s.tlsID.APIServerTLS())), grpc.MaxRecvMsgSize(maxRequestSize), keepaliveEnforcement,
		grpc.NumStreamWorkers(apiStreamWorkers), grpc.InitialWindowSize(apiFlowWindow), grpc.InitialConnWindowSize(apiFlowWindow))...)
	clusterpb.RegisterClusterServer(s.api, cluster.NewService(s.node, cluster.Handlers{Join: s.handleJoin, AuthenticateJoin: s.authenticateJoin, Certify: s.certifyIntermediate}))
	nodepb.RegisterNodeServer(s.api, &nodeService{s: s})
	if s.adminLn, err = listenAdmin(s.cfg.AdminSocket); err != nil {
		return nil, err
	}
	s.admin = grpc.NewServer(append(rpcerr.ServerOptions(nil, nil), grpc.MaxRecvMsgSize(maxRequestSize))...)
	operatorpb.RegisterOperatorServer(s.admin, &operatorService{s: s})
	if cfg.History != nil {
		s.registry.MustRegister(&historyCollector{s: s}) // issue 15: the export's lag
	}
	if cfg.HTTPAddr != "" {
		if s.httpSrv, err = metrics.Listen(cfg.HTTPAddr, metrics.Handler(s.registry, s.Readiness)); err != nil {
			return nil, err
		}
		s.cfg.HTTPAddr = s.httpSrv.Addr()
	}
	if cfg.AdminAddr != "" {
		if s.adminTCP, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			return nil, fmt.Errorf("admin address: %w", err)
		}
		s.cfg.AdminAddr = s.adminTCP.Addr().String()
		s.adminTLS = grpc.NewServer(append(rpcerr.ServerOptions([]grpc.UnaryServerInterceptor{s.requireAdminUnary}, []grpc.StreamServerInterceptor{s.requireAdminStream}),
			grpc.Creds(credentials.NewTLS(s.tlsID.AdminServerTLS())), grpc.MaxRecvMsgSize(maxRequestSize))...)
		operatorpb.RegisterOperatorServer(s.adminTLS, &operatorService{s: s})
	}
	if err := s.listenCRL(); err != nil {
		return nil, err
	}
	if cfg.BundleAddr != "" {
		if s.bundles, err = s.newBundleServer(); err != nil {
			return nil, err
		}
	}
	if err := writeTrustBundle(cfg.DataDir, s.TrustBundle()); err != nil {
		return nil, err
	}
	if cfg.History != nil {
		if err := s.historyCheck(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// keepaliveEnforcement lets clients (agents, peers) ping often enough to
// notice a server that stopped answering on an open connection.
var keepaliveEnforcement = grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true})

// listenAdmin listens on the operator socket, readable and writable by
// this user only. A stale socket left by a crash is replaced; one in use is not.
func listenAdmin(path string) (net.Listener, error) {
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s is in use by another server", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}

func (s *Server) attestorNames() string {
	var names []string
	for n := range *s.attestors.Load() {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// installAttestors makes join_token and as the enabled node attestors, at
// once: an attestation uses the set of one moment.
func (s *Server) installAttestors(as []attest.NodeAttestor) {
	m := map[string]attest.NodeAttestor{}
	for _, a := range append([]attest.NodeAttestor{jointoken.New(s.td)}, as...) {
		m[a.Name()] = a
	}
	s.attestors.Store(&m)
}

// SetNodeAttestors replaces the node attestors besides join_token (a
// reload: a rotated k8s_psat JWKS, new x509pop CAs), for the attestations
// that start from now on, and audits it.
func (s *Server) SetNodeAttestors(as []attest.NodeAttestor) {
	s.installAttestors(as)
	s.events.Record(audit.Event{Actor: "operator", Action: "config.reload", Subject: "node_attestors", Decision: audit.Info,
		Details: map[string]string{"node_attestors": s.attestorNames()}})
}

// RaftAddr and APIAddr are the addresses the server listens on.
func (s *Server) RaftAddr() string { return s.cfg.RaftAddr }

// APIAddr is the address of the cluster API.
func (s *Server) APIAddr() string { return s.cfg.APIAddr }

// HTTPAddr is the address of the metrics and health endpoints, or empty
// when they are not served.
func (s *Server) HTTPAddr() string { return s.cfg.HTTPAddr }

// AdminAddr is the address of the operator API over mTLS, if configured.
func (s *Server) AdminAddr() string { return s.cfg.AdminAddr }

// AdminSocket is the path of the operator API's socket.
func (s *Server) AdminSocket() string { return s.cfg.AdminSocket }

// Node returns the server's cluster node.
func (s *Server) Node() *cluster.Node { return s.node }

// TrustBundle returns the trust domain's ECDSA roots, for joining servers:
// the active one first, then the other roots of the bundle (a prepared or
// an old one, during a root rotation).
func (s *Server) TrustBundle() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	ders := [][]byte{s.id.Roots[ca.ProfileECDSA]}
	for _, c := range s.peerRootsLocked() {
		if !bytes.Equal(c.Raw, ders[0]) {
			ders = append(ders, c.Raw)
		}
	}
	return ca.EncodePEM(ders...)
}

// Run serves until ctx ends, then shuts down: it stops accepting, stops
// Raft without transferring leadership, and closes the stores. It returns
// nil when ctx ends, and the error (or panic) of the part of the server
// that failed, named, if one did: the server has stopped then too.
func (s *Server) Run(ctx context.Context) error {
	g := run.New(ctx)
	serve := func(name string, srv *grpc.Server, ln net.Listener) {
		g.Go(name, func(context.Context) error {
			// Serve returns when close stops srv.
			if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return err
			}
			return nil
		})
	}
	serve("API", s.api, s.apiLn)
	serve("admin socket", s.admin, s.adminLn)
	if s.adminTLS != nil {
		serve("admin address", s.adminTLS, s.adminTCP)
	}
	if s.httpSrv != nil {
		g.Go("metrics and health endpoints", s.httpSrv.Serve)
	}
	if s.crlHTTP != nil {
		g.Go("CRL endpoint", func(context.Context) error { return s.serveCRL() })
	}
	g.Go("bootstrap", func(ctx context.Context) error { s.writeBootstrapState(ctx); return nil })
	g.Go("admin seed", s.seedAdmins)
	g.Go("rotation", s.rotateLoop)
	g.Go("ledger pruning", s.pruneLoop)
	g.Go("membership", func(ctx context.Context) error { s.keepMembership(ctx); return nil })
	if s.cfg.History != nil {
		g.Go("ledger export", func(ctx context.Context) error { return s.exportLoop(ctx, "ledger", s.exportLedgerStep) })
		if s.auditLog != nil {
			g.Go("audit export", func(ctx context.Context) error { return s.exportLoop(ctx, "audit", s.exportAuditStep) })
		}
	}
	g.Go("issuance policy", s.policyLoop)
	if s.bundles != nil {
		g.Go("bundle service", func(context.Context) error {
			if err := s.bundles.srv.ServeTLS(s.bundles.ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	s.log.Info("server running", "trust_domain", s.td.Name(), "raft", s.cfg.RaftAddr, "api", s.cfg.APIAddr, "admin_socket", s.cfg.AdminSocket)
	<-g.Context().Done()
	s.close()
	return g.Wait()
}

// Close releases everything New acquired, for a server that will not Run
// (Run releases it when it returns). It may be called more than once.
func (s *Server) Close() { s.close() }

// close releases everything New acquired, in reverse order, once.
func (s *Server) close() { s.closeOnce.Do(s.closeLocked) }

func (s *Server) closeLocked() {
	if s.httpSrv != nil {
		s.httpSrv.Close() // Serve has returned, or never ran
	}
	if s.crlHTTP != nil {
		s.crlHTTP.Close()
	} else if s.crlLn != nil {
		s.crlLn.Close()
	}
	if s.bundles != nil {
		s.bundles.srv.Close() // ends long polls too
		s.bundles.ln.Close()
	}
	if s.adminTLS != nil {
		s.adminTLS.Stop()
	} else if s.adminTCP != nil {
		s.adminTCP.Close()
	}
	if s.admin != nil {
		s.admin.Stop()
	} else if s.adminLn != nil {
		s.adminLn.Close()
	}
	if s.adminLn != nil {
		os.Remove(s.cfg.AdminSocket)
	}
	if s.api != nil {
		stopped := make(chan struct{})
		go func() { s.api.GracefulStop(); close(stopped) }()
		grace := alarm.Retry(s.cfg.Clock, 2*time.Second)
		select {
		case <-stopped:
		case <-grace.C():
			s.api.Stop()
		}
		grace.Stop()
	} else if s.apiLn != nil {
		s.apiLn.Close()
	}
	if s.node != nil {
		s.node.Shutdown()
	} else if s.raftLn != nil {
		s.raftLn.Close()
	}
	if s.stores != nil {
		s.stores.Close()
	}
	if s.auditLog != nil {
		if err := s.auditLog.Close(); err != nil {
			s.log.Error("closing the audit log", "err", err)
		}
	}
}

// authorityID names an authority in the replicated state.
func authorityID(c *ca.Certificate, kind raftpb.AuthorityKind) string {
	k := "intermediate"
	if kind == raftpb.AuthorityKind_ROOT {
		k = "root"
	}
	return c.Profile + "/" + k + "/" + hex.EncodeToString(c.SerialNumber.Bytes())
}

// clearInterruptedBootstrap removes the Raft state a first start left if it
// was stopped before writing the bootstrap entry (a term without entries:
// Raft would refuse to bootstrap on it and never elect itself).
func clearInterruptedBootstrap(dataDir string) error {
	stores, err := store.OpenRaft(dataDir, store.RaftConfig{Logger: hclog.NewNullLogger()})
	if err != nil {
		return err
	}
	hasState, err := stores.HasState()
	if err != nil {
		stores.Close()
		return err
	}
	hasEntries, err := stores.HasEntries()
	if err := errors.Join(err, stores.Close()); err != nil {
		return err
	}
	if hasState && !hasEntries {
		return store.RemoveRaft(dataDir)
	}
	return nil
}

// writeBootstrapState writes what the first server created into the
// replicated state, once it leads the new cluster. It retries until it has
// succeeded or ctx ends: a failure (an election, a snapshot restore that
// aborts pending writes, a restart) must not stop the server. Every command
// it writes is idempotent, and what it writes is in identity.json until it
// is committed.
func (s *Server) writeBootstrapState(ctx context.Context) {
	for backoff := 20 * time.Millisecond; ; backoff = min(backoff*2, 2*time.Second) {
		s.mu.Lock()
		pending := s.id.Bootstrap != nil
		s.mu.Unlock()
		if !pending {
			return
		}
		if s.node.IsLeader() {
			err := s.tryWriteBootstrapState(ctx)
			if err == nil {
				return
			}
			if ctx.Err() == nil {
				s.log.Warn("writing the bootstrap state failed; retrying", "err", err)
			}
		}
		if alarm.Sleep(ctx, s.cfg.Clock, backoff) != nil {
			return
		}
	}
}

func (s *Server) tryWriteBootstrapState(ctx context.Context) error {
	s.mu.Lock()
	id := s.id
	bs := id.Bootstrap
	s.mu.Unlock()
	if bs == nil {
		return nil
	}
	cmds := []*raftpb.Command{{Op: &raftpb.Command_SetTrustDomain{SetTrustDomain: &raftpb.SetTrustDomain{TrustDomain: &raftpb.TrustDomain{
		Name: s.td.Name(), KekId: s.cfg.KEK.ID(), CreatedUnixNano: bs.CreatedUnixNano}}}}}
	for _, p := range ca.Profiles() {
		root, err := p.ParseCertificate(id.Roots[p.Name()])
		if err != nil {
			return err
		}
		sealed, err := json.Marshal(id.RootKeys[p.Name()])
		if err != nil {
			return err
		}
		rootID := authorityID(root, raftpb.AuthorityKind_ROOT)
		cmds = append(cmds, &raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: &raftpb.Authority{
			Id: rootID, Profile: p.Name(), Kind: raftpb.AuthorityKind_ROOT, State: raftpb.AuthorityState_ACTIVE,
			Certificate: root.Raw, SealedKey: sealed, NotAfterUnix: root.NotAfter.Unix()}}}})
		inter, err := p.ParseCertificate(id.Intermediates[p.Name()].Certificate)
		if err != nil {
			return err
		}
		cmds = append(cmds, putIntermediate(inter, rootID, s.cfg.NodeID, raftpb.AuthorityState_ACTIVE))
	}
	var jwtKey raftpb.JWTKey
	if err := protojson.Unmarshal(bs.JWTKey, &jwtKey); err != nil {
		return fmt.Errorf("bootstrap JWT key: %w", err)
	}
	cmds = append(cmds, &raftpb.Command{Op: &raftpb.Command_PutJwtKey{PutJwtKey: &raftpb.PutJWTKey{Key: &jwtKey}}})
	cmds = append(cmds, s.putSelf())
	for _, c := range cmds {
		if _, err := s.node.Apply(ctx, c); err != nil {
			return fmt.Errorf("write bootstrap state: %w", err)
		}
	}
	s.mu.Lock()
	s.id.Bootstrap = nil
	err := s.id.save(s.cfg.DataDir)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.log.Info("cluster bootstrapped", "trust_domain", s.td.Name())
	s.Rotate() // the steps that waited for the bootstrap state
	return nil
}

// Ready reports whether this server can serve writes now (see Readiness).
func (s *Server) Ready() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ready, _ := s.Readiness(ctx)
	return ready
}

func intermediateRecord(c *ca.Certificate, parentID, nodeID string, state raftpb.AuthorityState) *raftpb.Authority {
	return &raftpb.Authority{Id: authorityID(c, raftpb.AuthorityKind_INTERMEDIATE), Profile: c.Profile, Kind: raftpb.AuthorityKind_INTERMEDIATE,
		State: state, Certificate: c.Raw, ServerId: nodeID, ParentId: parentID, NotAfterUnix: c.NotAfter.Unix()}
}

func putIntermediate(c *ca.Certificate, parentID, nodeID string, state raftpb.AuthorityState) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: intermediateRecord(c, parentID, nodeID, state)}}}
}

func (s *Server) putSelf() *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PutServer{PutServer: &raftpb.PutServer{Server: &raftpb.Server{
		NodeId: s.cfg.NodeID, RaftAddr: s.cfg.RaftAddr, ApiAddr: s.cfg.APIAddr, JoinedUnixNano: s.cfg.Clock.Now().UnixNano()}}}}
}

// refreshCertificate installs the server's TLS certificate, reissuing it
// from the active ECDSA intermediate when renew is set, it is past
// half-life, or it was not issued by the active intermediate. It returns
// when the certificate next falls due.
func (s *Server) refreshCertificate(renew bool) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refreshCertificateLocked(renew)
}

func (s *Server) refreshCertificateLocked(renew bool) (time.Time, error) {
	iss, ok := s.issuer(ca.ProfileECDSA)
	if !ok {
		return time.Time{}, errors.New("no ECDSA intermediate")
	}
	cert, notBefore, notAfter, err := s.id.tlsCertificate(s.cfg.KEK)
	now := s.cfg.Clock.Now()
	stale := err != nil || len(cert.Certificate) < 2 || !bytes.Equal(cert.Certificate[1], iss.Certificate().Raw)
	if renew || stale || !now.Before(notBefore.Add(notAfter.Sub(notBefore)/2)) {
		if err := s.id.issueServerCertificate(s.cfg.KEK, iss.Authority); err != nil {
			return time.Time{}, err
		}
		if err := s.id.save(s.cfg.DataDir); err != nil {
			return time.Time{}, err
		}
		if cert, notBefore, notAfter, err = s.id.tlsCertificate(s.cfg.KEK); err != nil {
			return time.Time{}, err
		}
		s.log.Info("server certificate renewed", "not_after", cert.Leaf.NotAfter)
	}
	if err := s.tlsID.Update(cert, s.peerRootsLocked()); err != nil {
		return time.Time{}, err
	}
	return notBefore.Add(notAfter.Sub(notBefore) / 2), nil
}

// pruneLoop has the leader drop ledger records of certificates expired for
// longer than the grace period, and expired intermediates, JWT keys and
// remembered request IDs. Followers wait: pruning is a Raft command.
func (s *Server) pruneLoop(ctx context.Context) error {
	t := s.cfg.Clock.NewTicker(s.cfg.PruneInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.Chan():
		}
		if !s.node.IsLeader() {
			continue
		}
		now := s.cfg.Clock.Now()
		cutoff := now.Add(-s.cfg.LedgerGrace).Unix()
		op := &raftpb.PruneLedger{ExpiredBeforeUnix: cutoff, AuthoritiesExpiredBeforeUnix: cutoff}
		op.HoldUnexported, op.ExportedIndex, op.UnexportedExpiredBeforeUnix = s.pruneHold(cutoff, now)
		res, err := s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PruneLedger{PruneLedger: op}})
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("ledger pruning failed; retrying next interval", "err", err)
		case err == nil && res.Value > 0:
			s.log.Info("ledger pruned", "records", res.Value, "expired_before", time.Unix(cutoff, 0).UTC())
		}
		s.pruneHistory(ctx, now)
	}
}

// apiStreamWorkers is how many goroutines of the node API are kept to run
// calls, so that a call does not start a goroutine and grow its stack
// through the signing code (gRPC starts one when all are busy).
const apiStreamWorkers = 64

// apiFlowWindow is the node API's fixed HTTP/2 stream and connection
// window. A fixed window turns off gRPC's bandwidth-delay probing, a PING
// (and its answer) after received data, nearly one per signing call.
const apiFlowWindow = 1 << 20

// quietAllows are the issuance actions whose allows are mirrored to the
// server's log at debug level only (see audit.Config.QuietAllows).
var quietAllows = []string{KindWorkloadSVID.action(), KindJWTSVID.action()}
