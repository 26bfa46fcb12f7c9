package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/agent/peercred"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/retryinfo"
	"github.com/meshca/meshca/internal/run"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/sds"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Agent is a node agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	td    spiffeid.TrustDomain
	id    *identity
	store *store
	ln    net.Listener
	gs    *grpc.Server
	// sds serves Envoy's Secret Discovery Service on the socket.
	sds *sds.Server
	// events is the audit trail; auditLog is it when the agent opened its
	// own (closed when Run returns).
	events   audit.Recorder
	auditLog *audit.Log
	kick     chan struct{} // wakes the signer
	jwts     jwtCache

	// bundleLn and bundleSrv serve the OPA bundle service (issue 12).
	bundleLn  net.Listener
	bundleSrv *http.Server

	clientMu sync.Mutex
	client   nodepb.NodeClient // of the running session; guarded by clientMu

	// metrics counts renewals and Sync updates; registry holds them and
	// the state collectors; httpSrv serves /metrics, /healthz and /readyz
	// when Config.HTTPAddr is set.
	metrics  *agentMetrics
	registry *prometheus.Registry
	httpSrv  *metrics.Server
	// synced is set once a Sync update arrived since the agent started;
	// serving while Run serves the socket.
	synced, serving atomic.Bool
}

// New prepares an agent and listens on its Workload API socket; Run works.
func New(cfg Config) (*Agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	td, err := ca.TrustDomainOfRoots(cfg.TrustBundle)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, td: td, id: newIdentity(td, cfg.DataDir, cfg.TrustBundle, cfg.Clock), store: newStore(),
		kick: make(chan struct{}, 1), jwts: jwtCache{tokens: map[string]cachedJWT{}}}
	a.store.now, a.store.jitter = cfg.Clock.Now, cfg.ReissueJitter
	// Everything the agent must keep is written here: make sure it can be,
	// before a join token is spent on an identity that could not be saved.
	if err := os.MkdirAll(a.id.dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent data directory: %w", err)
	}
	if a.events = cfg.Audit; a.events == nil {
		if a.auditLog, err = audit.Open(audit.Config{Dir: filepath.Join(a.id.dir, "audit"), Source: cfg.AuditSource, Clock: cfg.Clock,
			Logger: cfg.Logger}); err != nil {
			return nil, fmt.Errorf("agent audit log: %w", err)
		}
		a.events = a.auditLog
	}
	opened := false
	defer func() {
		if !opened && a.auditLog != nil {
			a.auditLog.Close()
		}
	}()
	if _, err := a.id.load(cfg.Clock.Now(), cfg.RenewFraction); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.SocketPath), 0o755); err != nil {
		return nil, fmt.Errorf("agent socket directory: %w", err)
	}
	if c, err := net.Dial("unix", cfg.SocketPath); err == nil {
		c.Close()
		return nil, fmt.Errorf("agent socket %s is in use by another agent", cfg.SocketPath)
	}
	os.Remove(cfg.SocketPath)
	if a.ln, err = net.Listen("unix", cfg.SocketPath); err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	// Any local process may ask; each is attested and gets only what its
	// selectors earn.
	if err := os.Chmod(cfg.SocketPath, 0o666); err != nil {
		a.ln.Close()
		return nil, err
	}
	if a.registry = cfg.Registry; a.registry == nil {
		a.registry = metrics.NewRegistry()
	}
	a.metrics = newAgentMetrics(a.registry, a)
	a.gs = grpc.NewServer(grpc.Creds(peercred.New()), grpc.MaxRecvMsgSize(1<<20), grpc.ChainStreamInterceptor(a.metrics.streamCounter))
	workload.RegisterSpiffeWorkloadAPIServer(a.gs, &workloadAPI{a: a})
	// Envoy SDS on the same socket, as SPIRE's agent serves it.
	g := newSDSAgent(a)
	if a.sds, err = sds.New(sds.Config{Secrets: g.secrets, Audit: g.audit, Log: cfg.Logger.With("api", "sds")}); err != nil {
		a.ln.Close()
		return nil, fmt.Errorf("agent SDS: %w", err)
	}
	a.sds.Register(a.gs)
	a.store.topics = a.sds.Notify
	a.store.now, a.store.wakeSigner = cfg.Clock.Now, a.wake // issue 12: derived identities
	if cfg.ExtAuthzBundle != "" {                           // issue 12
		authv3.RegisterAuthorizationServer(a.gs, &extAuthz{a: a, bundle: cfg.ExtAuthzBundle, decision: cfg.ExtAuthzDecision})
	}
	if cfg.BundleAddr != "" {
		if a.bundleLn, a.bundleSrv, err = a.newBundleServer(); err != nil {
			a.ln.Close()
			return nil, err
		}
	}
	if cfg.HTTPAddr != "" {
		if a.httpSrv, err = metrics.Listen(cfg.HTTPAddr, metrics.Handler(a.registry, a.Readiness)); err != nil {
			a.ln.Close()
			if a.bundleLn != nil {
				a.bundleLn.Close()
			}
			return nil, err
		}
	}
	opened = true
	return a, nil
}

// SVIDStatus reports how many of the node's entries the agent holds a
// valid SVID for, and how many entries it has.
func (a *Agent) SVIDStatus() (valid, entries int) {
	valid, entries, _ = a.store.stats(a.cfg.Clock.Now())
	return valid, entries
}

// HTTPAddr is the address of the metrics and health endpoints, or empty
// when they are not served.
func (a *Agent) HTTPAddr() string {
	if a.httpSrv == nil {
		return ""
	}
	return a.httpSrv.Addr()
}

// SocketPath is the Workload API socket.
func (a *Agent) SocketPath() string { return a.cfg.SocketPath }

// Run serves the Workload API and keeps the node's SVIDs current until ctx
// ends. Server outages are retried forever, with jittered backoff; cached
// SVIDs are served meanwhile.
//
// Run returns nil when ctx ends. It returns the error of what stopped it
// otherwise, named: ErrAttestationRefused (wrapped) when the servers
// refuse the node's evidence, or the failure of the Workload API's
// listener.
func (a *Agent) Run(ctx context.Context) error {
	g := run.New(ctx)
	a.serving.Store(true)
	g.Go("Workload API", func(context.Context) error { return a.gs.Serve(a.ln) }) // until Stop
	if a.httpSrv != nil {
		g.Go("metrics and health endpoints", a.httpSrv.Serve)
	}
	g.Go("server session", a.serverLoop)
	if a.bundleSrv != nil {
		g.Go("bundle service", func(context.Context) error {
			if err := a.bundleSrv.Serve(a.bundleLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	<-g.Context().Done()
	a.serving.Store(false)
	if a.bundleSrv != nil {
		a.bundleSrv.Close()
	}
	a.gs.Stop()
	a.sds.Close()
	os.Remove(a.cfg.SocketPath)
	err := g.Wait()
	if a.auditLog != nil {
		if err := a.auditLog.Close(); err != nil {
			a.log.Error("closing the audit log", "err", err)
		}
	}
	return err
}

// ErrAttestationRefused means the servers refused this node's evidence
// (for example a join token that is unknown, used or expired): retrying
// cannot help, and Run returns.
var ErrAttestationRefused = errors.New("agent: node attestation refused")

// StoredID returns the SPIFFE ID of the agent SVID kept in dataDir, or ""
// when there is none or it has expired by clock (the agent must then attest
// again, with new evidence).
func StoredID(dataDir string, clock clockwork.Clock) (string, error) {
	now := clock.Now()
	path := filepath.Join(dataDir, "agent", "svid.pem")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("agent: stored SVID: %w", err)
	}
	chain, err := ca.ParseCertificatesPEM(b) // the leaf, then intermediates
	if err != nil {
		return "", fmt.Errorf("agent: stored SVID %s: %w", path, err)
	}
	leaf := chain[0]
	if !now.Before(leaf.NotAfter) || len(leaf.URIs) != 1 {
		return "", nil
	}
	return leaf.URIs[0].String(), nil
}

// serverLoop keeps a session with one of the servers, moving to the next
// on failure after a jittered backoff.
func (a *Agent) serverLoop(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for i := 0; ctx.Err() == nil; i++ {
		addr := a.cfg.Servers[i%len(a.cfg.Servers)]
		start := a.cfg.Clock.Now()
		err := a.session(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrAttestationRefused) {
			a.log.Error("node attestation refused; not retrying", "server", addr, "err", err)
			return err
		}
		if a.cfg.Clock.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond // a long session resets the backoff
		}
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
		if hint, busy := retryinfo.After(err); busy {
			wait = hint + time.Duration(rand.Int64N(int64(hint)/2+1))
		}
		a.log.Warn("server session ended; reconnecting", "server", addr, "err", err, "retry_in", wait.Round(time.Millisecond))
		if alarm.Sleep(ctx, a.cfg.Clock, wait) != nil {
			return nil
		}
		backoff = min(backoff*2, 30*time.Second)
	}
	return nil
}

func (a *Agent) dial(addr string, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, s string) (net.Conn, error) { return a.cfg.Dial(ctx, s) })}, dialOptions...)...)
}

// session attests if needed, then follows the server's Sync stream,
// signing what is due and renewing the agent's SVID, until an error.
func (a *Agent) session(ctx context.Context, addr string) error {
	if _, err := a.id.GetX509SVID(); err != nil {
		conn, err := a.dial(addr, credentials.NewTLS(a.id.attestTLS()))
		if err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, time.Minute)
		err = a.attestNode(actx, nodepb.NewNodeClient(conn))
		cancel()
		conn.Close()
		if err != nil {
			return err
		}
	}
	conn, err := a.dial(addr, credentials.NewTLS(a.id.mTLS()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := nodepb.NewNodeClient(conn)
	a.setClient(client)
	defer a.setClient(nil)
	sctx, cancel := context.WithCancelCause(ctx)
	var signing sync.WaitGroup
	defer signing.Wait() // the signer ends with the session
	defer cancel(nil)
	stream, err := client.Sync(sctx, &nodepb.SyncRequest{Known: a.store.known()})
	if err != nil {
		return err
	}
	signing.Add(2)
	go func() {
		defer signing.Done()
		a.signer(sctx, cancel, client)
	}()
	a.metrics.connected.Store(true)
	defer a.metrics.connected.Store(false)
	go func() {
		defer signing.Done()
		a.shipAudit(sctx, client) // issue 15: the agent's audit log to the history database
	}()
	for {
		u, err := stream.Recv()
		if err != nil {
			if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
				return cause
			}
			return err
		}
		if b := a.applySync(u); b != nil {
			if err := a.id.setBundle(b); err != nil {
				return err
			}
		}
		a.metrics.syncs.Inc()
		a.synced.Store(true)
		a.checkOwnSVID()
		a.wake()
	}
}

func (a *Agent) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// signer signs due SVIDs and renews the agent's own, for one session.
func (a *Agent) signer(ctx context.Context, fail context.CancelCauseFunc, client nodepb.NodeClient) {
	for {
		now := a.cfg.Clock.Now()
		if !now.Before(a.id.renewTime()) {
			if err := a.renewAgentSVID(ctx, client); err != nil {
				fail(fmt.Errorf("renew the agent SVID: %w", err))
				return
			}
		}
		due, next := a.store.due(now)
		if len(due) > 0 {
			err := a.signDue(ctx, client, due)
			if hint, busy := retryinfo.After(err); busy {
				// The server is shedding load: come back when it says,
				// spread out so that agents do not return together.
				wait := hint + time.Duration(rand.Int64N(int64(hint)/2+1))
				a.log.Info("server busy; retrying", "retry_in", wait.Round(time.Millisecond))
				if alarm.Sleep(ctx, a.cfg.Clock, wait) != nil {
					return
				}
				continue
			}
			if err != nil {
				fail(fmt.Errorf("sign SVIDs: %w", err))
				return
			}
			due, next = a.store.due(a.cfg.Clock.Now())
		}
		// Renewals are due by the clock; refused entries are retried
		// after an alarm.Retry wait.
		wake := a.id.renewTime()
		if !next.IsZero() && next.Before(wake) {
			wake = next
		}
		var retry <-chan time.Time
		var again *alarm.Alarm
		if len(due) > 0 {
			again = alarm.Retry(a.cfg.Clock, 5*time.Second)
			retry = again.C()
			// Those due now were refused: do not spin on them.
			if soon := a.cfg.Clock.Now().Add(10 * time.Millisecond); wake.Before(soon) {
				wake = soon
			}
		}
		al := alarm.At(a.cfg.Clock, wake)
		select {
		case <-ctx.Done():
		case <-a.kick:
		case <-al.C():
		case <-retry:
		}
		al.Stop()
		if again != nil {
			again.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

func (a *Agent) renewAgentSVID(ctx context.Context, client nodepb.NodeClient) error {
	key, csr, err := agentKey()
	if err != nil {
		return err
	}
	var resp *nodepb.RenewAgentSVIDResponse
	if err := callServer(ctx, a.cfg.Clock, func(ctx context.Context) error {
		resp, err = client.RenewAgentSVID(ctx, &nodepb.RenewAgentSVIDRequest{Csr: csr})
		return err
	}); err != nil {
		return err
	}
	if err := a.id.setSVID(resp.SvidChain, key, a.cfg.Clock.Now(), a.cfg.RenewFraction); err != nil {
		return err
	}
	a.log.Info("agent SVID renewed")
	return nil
}
