// Package devmode runs a whole meshca trust domain in one process, for
// development (`meshca dev`): a single-node CA server, a node agent serving
// the Workload API and Envoy SDS, and a registration entry that gives the
// user running it an X509-SVID.
//
// The first run of a data directory bootstraps the trust domain and
// attests the agent with a join token made through the server's own
// operator API; later runs reopen it (the same roots, the agent's stored
// identity, the same entries). Run returns once ctx ends or a part stops;
// the agent stops before the server, so that it does not log the server's
// shutdown as an outage.
//
// The caller (cmd/meshca) owns flags, the data directory's lock, the KEK
// and the printing of the Report.
package devmode

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/internal/run"
	"github.com/meshca/meshca/internal/wlapi"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// NodeID is the node ID of dev's server.
const NodeID = "dev"

// DefaultStartTimeout bounds each step of the start when
// Config.StartTimeout is zero: the server becoming ready, and the Workload
// API serving the caller's SVID.
const DefaultStartTimeout = time.Minute

// Config configures Run.
type Config struct {
	// DataDir holds the server's and the agent's state. It exists, and the
	// caller holds its lock.
	DataDir string
	// Socket is the agent's Workload API and SDS socket; AdminSocket the
	// server's operator API.
	Socket, AdminSocket string
	// RaftAddr and APIAddr are the server's listen addresses (host:port;
	// port 0 picks one).
	RaftAddr, APIAddr string
	// KEK opens (or, on bootstrap, seals) the server's keys.
	KEK *ca.KEK
	// Bootstrap creates the trust domain TrustDomain: set when DataDir has
	// no server identity yet.
	Bootstrap   bool
	TrustDomain string
	// UID is the user whose entry Run makes sure of:
	// spiffe://<td>/dev/uid/<UID>, selector unix:uid:<UID>.
	UID int
	// WorkloadAttestors attest the agent's callers.
	WorkloadAttestors []attest.WorkloadAttestor
	// Logger and RaftLogger receive the logs.
	Logger     *slog.Logger
	RaftLogger hclog.Logger
	// StartTimeout: DefaultStartTimeout when zero.
	StartTimeout time.Duration
}

// Report says where everything is, once dev runs.
type Report struct {
	DataDir      string
	TrustDomain  spiffeid.TrustDomain
	Bootstrapped bool
	// The server.
	NodeID, RaftAddr, APIAddr, AdminSocket string
	// TrustBundlePath is the file holding the trust bundle (ECDSA roots).
	TrustBundlePath string
	// AgentID is the agent's SPIFFE ID; AgentAttestation is
	// jointoken.Name when this run attested it, "stored" when it had its
	// identity already.
	AgentID, AgentAttestation string
	// Socket is the agent's Workload API and SDS socket.
	Socket string
	// Entry is the caller's entry; EntryCreated says whether this run made
	// it.
	Entry        *operatorpb.Entry
	EntryCreated bool
	// SVID is the caller's X509-SVID, as the Workload API served it.
	SVID *wlapi.SVID
}

// AttestationStored is Report.AgentAttestation for an agent that had its
// identity already.
const AttestationStored = "stored"

// ErrStopped means a part of dev (the server or the agent) stopped by
// itself while dev ran.
var ErrStopped = errors.New("devmode: stopped unexpectedly")

// Run starts the server and the agent, makes sure of the agent's identity
// and the caller's entry, waits until the Workload API serves the caller's
// SVID, calls started with the report, and runs until ctx ends (nil) or a
// part fails (its error, naming it). An error of started stops dev and is
// returned. Interrupted while starting, Run stops cleanly and returns nil.
// A wrong KEK is reported as ca.ErrWrongKEK (wrapped).
func Run(ctx context.Context, cfg Config, started func(Report) error) error {
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv, err := server.New(server.Config{
		DataDir: cfg.DataDir, NodeID: NodeID, RaftAddr: cfg.RaftAddr, APIAddr: cfg.APIAddr, AdminSocket: cfg.AdminSocket,
		KEK: cfg.KEK, Bootstrap: cfg.Bootstrap, TrustDomain: cfg.TrustDomain, Logger: log, RaftLogger: cfg.RaftLogger,
	})
	if err != nil {
		return fmt.Errorf("start the server: %w", err)
	}

	g := run.New(ctx)
	agentDone := make(chan struct{}) // closed once the agent has stopped, or will never start
	closeAgentDone := sync.OnceFunc(func() { close(agentDone) })
	g.Go("server", func(ctx context.Context) error {
		// The server outlives the group's stop until the agent is down.
		sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		defer stop()
		done := make(chan error, 1)
		go func() { done <- srv.Run(sctx) }() // waited for below, in every case
		select {
		case err := <-done:
			return stopped(err)
		case <-ctx.Done():
			<-agentDone
			stop()
			return <-done
		}
	})
	g.Go("start", func(ctx context.Context) error {
		rep, ag, err := prepare(ctx, cfg, srv, log)
		if err != nil {
			closeAgentDone()
			return err
		}
		g.Go("agent", func(ctx context.Context) error {
			defer closeAgentDone()
			return stopped(ag.Run(ctx))
		})
		// The caller is attested like any workload: once the Workload API
		// serves its SVID, what the caller prints next works as printed.
		svid, err := callerSVID(ctx, cfg, rep.Entry.SpiffeId)
		if err != nil {
			return fmt.Errorf("dev started, but the Workload API did not serve your X509-SVID: %w", err)
		}
		rep.SVID = svid
		if err := started(rep); err != nil {
			return err
		}
		log.Info("meshca dev running", "socket", cfg.Socket, "admin_socket", cfg.AdminSocket)
		return nil
	})
	<-g.Context().Done()
	if ctx.Err() != nil {
		log.Info("shutting down")
	}
	err = g.Wait()
	log.Info("meshca dev stopped")
	return err
}

// stopped is the error of a part that returned err while dev ran: a part
// that returns at all before dev stops has stopped unexpectedly.
func stopped(err error) error {
	if err == nil {
		return ErrStopped
	}
	return err
}

// prepare waits for the server, makes sure the agent has an identity (or a
// join token to get one) and the caller has an entry, and makes the agent.
func prepare(ctx context.Context, cfg Config, srv *server.Server, log *slog.Logger) (Report, *agent.Agent, error) {
	var rep Report
	wait, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	for !srv.Ready() {
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-wait.Done():
			t.Stop()
			if ctx.Err() != nil {
				return rep, nil, ctx.Err()
			}
			return rep, nil, fmt.Errorf("the server is not ready after %s; run with --log-level info to see why", cfg.StartTimeout)
		case <-t.C:
		}
	}
	bundle, err := server.ParseTrustBundle("of the server", srv.TrustBundle())
	if err != nil {
		return rep, nil, err
	}
	td, err := ca.TrustDomainOfRoots(bundle)
	if err != nil {
		return rep, nil, fmt.Errorf("the server's trust bundle: %w", err)
	}
	rep = Report{DataDir: cfg.DataDir, TrustDomain: td, Bootstrapped: cfg.Bootstrap,
		NodeID: NodeID, RaftAddr: srv.RaftAddr(), APIAddr: srv.APIAddr(), AdminSocket: srv.AdminSocket(),
		TrustBundlePath: server.TrustBundlePath(cfg.DataDir), Socket: cfg.Socket}

	conn, err := grpc.NewClient("unix://"+srv.AdminSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return rep, nil, fmt.Errorf("the server's admin socket: %w", err)
	}
	defer conn.Close()
	op := operatorpb.NewOperatorClient(conn)
	octx, ocancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer ocancel()

	// The agent keeps its SVID in DataDir/agent; it needs a join token only
	// when it has none (or it expired while dev was stopped).
	var evidence attest.NodeEvidence
	rep.AgentID, err = agent.StoredID(cfg.DataDir, clockwork.NewRealClock())
	if err != nil {
		return rep, nil, err
	}
	rep.AgentAttestation = AttestationStored
	if rep.AgentID == "" {
		resp, err := op.CreateJoinToken(octx, &operatorpb.CreateJoinTokenRequest{Kind: server.TokenKindAgent, TtlSeconds: int64(server.DefaultJoinTokenTTL / time.Second)})
		if err != nil {
			return rep, nil, fmt.Errorf("create the agent's join token: %w", err)
		}
		evidence = jointoken.NewEvidence(resp.Token)
		id, err := jointoken.AgentID(td, resp.Token)
		if err != nil {
			return rep, nil, fmt.Errorf("the agent's SPIFFE ID: %w", err)
		}
		rep.AgentID, rep.AgentAttestation = id.String(), jointoken.Name
	}
	rep.Entry, rep.EntryCreated, err = ensureEntry(octx, op, td, rep.AgentID, cfg.UID)
	if err != nil {
		return rep, nil, err
	}
	ag, err := newAgent(cfg, srv.APIAddr(), bundle, evidence, log)
	if err != nil {
		return rep, nil, err
	}
	return rep, ag, nil
}

func newAgent(cfg Config, server string, bundle []*x509.Certificate, evidence attest.NodeEvidence, log *slog.Logger) (*agent.Agent, error) {
	ag, err := agent.New(agent.Config{
		Servers: []string{server}, TrustBundle: bundle, DataDir: cfg.DataDir, SocketPath: cfg.Socket,
		Evidence: evidence, WorkloadAttestors: cfg.WorkloadAttestors, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("start the agent: %w", err)
	}
	return ag, nil
}

// EntryID is the SPIFFE ID of the entry dev makes for uid.
func EntryID(td spiffeid.TrustDomain, uid int) string {
	return "spiffe://" + td.Name() + "/dev/uid/" + strconv.Itoa(uid)
}

// ensureEntry returns the caller's dev entry under agentID, creating it if
// there is none: EntryID, selector unix:uid:<uid>, profile ecdsa. created
// says whether it was made now. An entry left under an earlier dev agent
// (whose identity expired while dev was stopped, so the agent attested
// anew) is moved to this one rather than duplicated.
func ensureEntry(ctx context.Context, op operatorpb.OperatorClient, td spiffeid.TrustDomain, agentID string, uid int) (*operatorpb.Entry, bool, error) {
	spiffeID, sel := EntryID(td, uid), "uid:"+strconv.Itoa(uid)
	list, err := op.ListEntries(ctx, &operatorpb.ListEntriesRequest{SpiffeId: spiffeID})
	if err != nil {
		return nil, false, fmt.Errorf("list entries: %w", err)
	}
	earlierAgent := td.IDString() + naming.AgentPathPrefix(jointoken.Name)
	for _, e := range list.Entries {
		if len(e.Selectors) != 1 || e.Selectors[0].Type != "unix" || e.Selectors[0].Value != sel {
			continue
		}
		if e.ParentId == agentID {
			return e, false, nil
		}
		if strings.HasPrefix(e.ParentId, earlierAgent) {
			e.ParentId = agentID
			resp, err := op.UpdateEntry(ctx, &operatorpb.UpdateEntryRequest{Entry: e})
			if err != nil {
				return nil, false, fmt.Errorf("move the entry for %s to the new agent: %w", spiffeID, err)
			}
			return resp.Entry, false, nil
		}
	}
	resp, err := op.CreateEntry(ctx, &operatorpb.CreateEntryRequest{Entry: &operatorpb.Entry{
		SpiffeId: spiffeID, ParentId: agentID, Profile: ca.ProfileECDSA,
		Selectors: []*operatorpb.Selector{{Type: "unix", Value: sel}},
	}})
	if err != nil {
		return nil, false, fmt.Errorf("create the entry for %s: %w", spiffeID, err)
	}
	return resp.Entry, true, nil
}

// callerSVID waits until the Workload API serves this process the SVID of
// id, and returns it.
func callerSVID(ctx context.Context, cfg Config, id string) (*wlapi.SVID, error) {
	c, err := wlapi.New(wlapi.Config{Socket: cfg.Socket})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	fctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	svids, err := c.FetchX509SVIDs(fctx)
	if err != nil {
		return nil, err
	}
	picked, ok := wlapi.Pick(svids, id)
	if !ok {
		return nil, fmt.Errorf("the Workload API served this process no X509-SVID for %s", id)
	}
	return picked[0], nil
}
