package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/internal/rpcerr"
	"github.com/meshca/meshca/internal/wallclock"
	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Timing holds Raft's timeouts and the bounds of requests that need the
// leader. Zero fields take DefaultTiming's.
type Timing struct {
	Heartbeat   time.Duration
	Election    time.Duration
	LeaderLease time.Duration
	Commit      time.Duration
	// Forward bounds one attempt to forward a request to the leader: a
	// frozen leader holds its connections open, so nothing else would end
	// it. An attempt also ends as soon as the leader changes.
	Forward time.Duration
	// NoLeader is how long a request waits for a leader once this server has
	// lost contact with one (about the longest an election takes); after
	// that it is refused at once with an UnavailableError naming the cause,
	// instead of waiting for the caller's deadline.
	NoLeader time.Duration
}

// DefaultTiming detects a dead leader and elects another well within 3 s on
// a LAN, where hashicorp/raft's own defaults (1 s heartbeat and election
// timeouts) take up to about 3 s; a server cut off from the leader refuses
// writes within about 2 s of losing it.
var DefaultTiming = Timing{Heartbeat: 500 * time.Millisecond, Election: 500 * time.Millisecond, LeaderLease: 250 * time.Millisecond,
	Commit: 20 * time.Millisecond, Forward: 2 * time.Second, NoLeader: 1500 * time.Millisecond}

// resolve fills zero fields from DefaultTiming.
func (t Timing) resolve() Timing {
	d := DefaultTiming
	return Timing{Heartbeat: pick(t.Heartbeat, d.Heartbeat), Election: pick(t.Election, d.Election),
		LeaderLease: pick(t.LeaderLease, d.LeaderLease), Commit: pick(t.Commit, d.Commit),
		Forward: pick(t.Forward, d.Forward), NoLeader: pick(t.NoLeader, d.NoLeader)}
}

// Config configures a cluster node.
type Config struct {
	// NodeID is the server's stable ID in the Raft configuration.
	NodeID string
	// RaftListener accepts Raft connections. Its address is advertised to
	// peers unless RaftAdvertise is set.
	RaftListener net.Listener
	// RaftAdvertise is the host:port peers dial, when it is not the
	// listener's address; a host name is kept as a name.
	RaftAdvertise string
	Identity      *Identity
	FSM           *raftfsm.FSM
	// ApplyObserver, if set, is told how long each batch of committed
	// entries took to apply to FSM (for metrics).
	ApplyObserver func(entries int, d time.Duration)
	Stores        *store.RaftStores
	// Dial opens connections to peers (Raft and API); nil: a net.Dialer.
	Dial DialFunc
	// Logger receives the node's logs; nil: slog.Default().
	Logger *slog.Logger
	// RaftLogger receives hashicorp/raft's logs; nil: warnings to stderr.
	RaftLogger hclog.Logger
	Timing     Timing
	// SnapshotThreshold and TrailingLogs tune snapshots (0: raft's defaults).
	SnapshotThreshold uint64
	TrailingLogs      uint64
	SnapshotInterval  time.Duration
	// LedgerBatch bounds the records of one group commit (0: 1024).
	LedgerBatch int
	// LedgerGap is the least time between the starts of two group commits
	// (0: DefaultLedgerGap; negative: none), so that under load one Raft
	// entry and one fsync carry many records. A record that arrives when
	// the last commit started at least this long ago is sent at once.
	LedgerGap time.Duration
	// Clock stamps proposed commands; nil: the real clock.
	Clock clockwork.Clock
}

// restoreIndexGap is how far past the last log index an operator's
// snapshot is restored (see Restore).
const restoreIndexGap = 1 << 16

// logCacheSize is how many recent log entries are kept in memory for
// replication.
const logCacheSize = 1024

// Node is this server's member of the Raft cluster.
type Node struct {
	cfg     Config
	timing  Timing
	log     *slog.Logger
	raft    *raft.Raft
	trans   *raft.NetworkTransport
	fsm     *raftfsm.FSM
	barrier coalescer
	peers   *peerClients
	ledger  *ledgerBatcher
	lead    *leadership

	membershipMu sync.Mutex // serialises configuration changes on the leader

	stop     context.CancelFunc
	wg       sync.WaitGroup
	shutdown sync.Once
}

// Start starts the Raft node on existing stores. A new cluster is formed
// with Bootstrap; a new member waits for the leader to add it.
func Start(cfg Config) (*Node, error) {
	switch {
	case cfg.NodeID == "" || cfg.RaftListener == nil || cfg.Identity == nil || cfg.FSM == nil || cfg.Stores == nil:
		return nil, errors.New("cluster: config needs NodeID, RaftListener, Identity, FSM and Stores")
	}
	if cfg.Dial == nil {
		cfg.Dial = defaultDial
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	switch {
	case cfg.LedgerGap == 0:
		cfg.LedgerGap = DefaultLedgerGap
	case cfg.LedgerGap < 0:
		cfg.LedgerGap = 0
	}
	if cfg.LedgerBatch <= 0 {
		cfg.LedgerBatch = 1024
	}
	t := cfg.Timing.resolve()
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = t.Heartbeat
	rc.ElectionTimeout = t.Election
	rc.LeaderLeaseTimeout = t.LeaderLease
	rc.CommitTimeout = t.Commit
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	// A server removed from the configuration stays up, as a follower that
	// knows it was removed, so that add-voter can bring it back.
	rc.ShutdownOnRemove = false
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	rc.Logger = cfg.RaftLogger
	if rc.Logger == nil {
		rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("cluster: raft config: %w", err)
	}

	advertise := cfg.RaftListener.Addr()
	if cfg.RaftAdvertise != "" {
		// Kept as given: a DNS name (a StatefulSet pod's) stays valid when
		// the address behind it changes, and is resolved at every dial.
		if h, p, err := net.SplitHostPort(cfg.RaftAdvertise); err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("cluster: raft advertise address %q: want host:port", cfg.RaftAdvertise)
		}
		advertise = advertiseAddr(cfg.RaftAdvertise)
	}
	serverTLS, clientTLS := cfg.Identity.PeerTLS()
	layer := &tlsStreamLayer{ln: cfg.RaftListener, advertise: advertise, serverCfg: serverTLS, clientCfg: clientTLS, dial: cfg.Dial, log: cfg.Logger}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: layer, MaxPool: 3, Timeout: 10 * time.Second, Logger: rc.Logger,
	})
	// Recent entries are replicated from memory, not read back from disk.
	logs, err := raft.NewLogCache(logCacheSize, cfg.Stores.Log)
	if err != nil {
		trans.Close()
		return nil, fmt.Errorf("cluster: log cache: %w", err)
	}
	var fsm raft.FSM = cfg.FSM
	if cfg.ApplyObserver != nil {
		fsm = timedFSM{FSM: cfg.FSM, observe: cfg.ApplyObserver}
	}
	r, err := raft.NewRaft(rc, fsm, logs, cfg.Stores.Stable, cfg.Stores.Snapshots, trans)
	if err != nil {
		trans.Close()
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	n := &Node{cfg: cfg, timing: t, log: cfg.Logger, raft: r, trans: trans, fsm: cfg.FSM, stop: stop,
		peers: newPeerClients(cfg.Identity, cfg.Dial)}
	n.lead = newLeadership(r, t, n.leaderChanged)
	n.barrier.run = n.runBarrier
	n.ledger = newLedgerBatcher(n, cfg.LedgerBatch, cfg.LedgerGap)
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		n.lead.watch(ctx)
	}()
	go func() {
		defer n.wg.Done()
		n.ledger.run(ctx)
	}()
	return n, nil
}

// leaderChanged has the connection to a new leader's API retried at once,
// whatever backoff failed attempts built up while it was away.
func (n *Node) leaderChanged(id raft.ServerID) {
	if string(id) == n.cfg.NodeID {
		return
	}
	if srv := n.fsm.Read().Server(string(id)); srv != nil && srv.ApiAddr != "" {
		n.peers.resetBackoff(srv.ApiAddr)
	}
}

func pick(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}

// Bootstrap forms a new single-voter cluster of this node. It returns
// raft.ErrCantBootstrap if the node already has state.
func (n *Node) Bootstrap() error {
	return n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter, ID: raft.ServerID(n.cfg.NodeID), Address: n.trans.LocalAddr(),
	}}}).Error()
}

// Raft exposes the underlying Raft node, for status and tests.
func (n *Node) Raft() *raft.Raft { return n.raft }

// FSM returns the state machine.
func (n *Node) FSM() *raftfsm.FSM { return n.fsm }

// NodeID returns this node's ID.
func (n *Node) NodeID() string { return n.cfg.NodeID }

// RaftAddr is the address peers reach this node's Raft at.
func (n *Node) RaftAddr() string { return string(n.trans.LocalAddr()) }

// LeaderChanges returns a channel that is closed at the next change of
// the leader this node knows, or of its Raft state.
func (n *Node) LeaderChanges() <-chan struct{} { return n.lead.changes() }

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// WaitLeader blocks until the cluster has a leader, and returns its ID.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	for {
		changed := n.lead.changes()
		if _, id := n.raft.LeaderWithID(); id != "" {
			return string(id), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("cluster: no leader: %w", ctx.Err())
		case <-changed:
		}
	}
}

// Shutdown stops the node: the ledger batcher, Raft and its transport.
// Pending group commits fail. It does not close the stores.
func (n *Node) Shutdown() error {
	var err error
	n.shutdown.Do(func() {
		n.stop()
		n.wg.Wait()
		err = n.raft.Shutdown().Error()
		n.trans.Close()
		n.peers.close()
	})
	return err
}

// NewRequestID returns a random request ID for a command header.
func NewRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (n *Node) stamp(cmd *raftpb.Command) {
	if cmd.Header == nil {
		cmd.Header = &raftpb.Header{}
	}
	if cmd.Header.RequestId == "" {
		cmd.Header.RequestId = NewRequestID()
	}
	if cmd.Header.TimeUnixNano == 0 {
		cmd.Header.TimeUnixNano = n.cfg.Clock.Now().UnixNano()
	}
	if cmd.Header.Proposer == "" {
		cmd.Header.Proposer = n.cfg.NodeID
	}
}

// defaultApplyTimeout bounds an Apply whose context has no deadline.
const defaultApplyTimeout = 30 * time.Second

// Apply stamps cmd's header where empty and applies it through Raft, on the
// leader or forwarded to it, retrying while a leader is being elected, and
// after a leader was lost with the command in flight: the state machine
// applies a command at most once per request ID (ledger records per
// record), so a retry returns the first application's result. The error is
// the command's refusal (raftfsm.Error); an UnavailableError when this
// server cannot reach a leader (refused within Timing.NoLeader of losing
// it, not at the deadline); or the context's error.
func (n *Node) Apply(ctx context.Context, cmd *raftpb.Command) (*raftpb.Result, error) {
	return n.apply(ctx, cmd, true)
}

// ApplyIdempotent is Apply; it remains for callers that say so explicitly.
func (n *Node) ApplyIdempotent(ctx context.Context, cmd *raftpb.Command) (*raftpb.Result, error) {
	return n.apply(ctx, cmd, true)
}

func (n *Node) apply(ctx context.Context, cmd *raftpb.Command, idempotent bool) (*raftpb.Result, error) {
	n.stamp(cmd)
	data, err := raftfsm.Encode(cmd)
	if err != nil {
		return nil, fmt.Errorf("cluster: encode command: %w", err)
	}
	var res *raftpb.Result
	err = n.withRetry(ctx, "apply", func(ctx context.Context, lv leaderView) error {
		var err error
		res, err = n.tryApply(ctx, lv, data)
		if errors.Is(err, ErrUnknownOutcome) && !idempotent {
			return permanent{err}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, raftfsm.ResultError(res)
}

// permanent marks an error withRetry must not retry.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// withRetry calls try until it succeeds or fails for good. While the leader
// is being elected it retries, at the latest at every change of leader;
// once this server has been without a reachable leader for longer than an
// election takes (Timing.NoLeader), or its forwards have failed that long,
// it returns an UnavailableError instead of waiting for ctx's deadline.
// Without a deadline in ctx it gives up after defaultApplyTimeout. try gets
// the leader as of the attempt, and the channel of its next change.
func (n *Node) withRetry(ctx context.Context, what string, try func(ctx context.Context, lv leaderView) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultApplyTimeout)
		defer cancel()
	}
	var failing time.Time // since when every attempt failed
	for backoff := 5 * time.Millisecond; ; backoff = min(backoff*2, 100*time.Millisecond) {
		lv := n.lead.view()
		err := try(ctx, lv)
		var p permanent
		switch {
		case err == nil:
			return nil
		case errors.As(err, &p):
			return p.error
		case ctx.Err() != nil:
			return fmt.Errorf("cluster: %s: %w (last error: %v)", what, ctx.Err(), err)
		case !retryable(err):
			return err
		}
		if failing.IsZero() {
			// Real time: the window is Raft's election and forwarding
			// timing, which hashicorp/raft runs on the real clock.
			failing = wallclock.Now()
		}
		if refused := n.refusal(err); refused != nil {
			return refused
		}
		if wallclock.Since(failing) > n.timing.Forward+n.timing.NoLeader {
			_, leader := n.raft.LeaderWithID()
			return &UnavailableError{Cause: CauseLeaderUnreachable, For: wallclock.Since(failing), Err: err,
				Detail: fmt.Sprintf("every attempt to reach leader %q failed", leader)}
		}
		again := alarm.Retry(n.cfg.Clock, backoff)
		select {
		case <-ctx.Done():
			again.Stop()
			return fmt.Errorf("cluster: %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-lv.changed:
			backoff = 5 * time.Millisecond
		case <-again.C():
		}
		again.Stop()
	}
}

// retryable reports whether an attempt's failure may pass: an election, a
// leader that changed or did not answer, a leader not reachable yet.
func retryable(err error) bool {
	switch {
	case errors.Is(err, errNoLeaderYet), errors.Is(err, ErrUnknownOutcome),
		errors.Is(err, errLeaderChanged), errors.Is(err, errAttemptTimeout):
		return true
	}
	return rpcerr.Code(err) == codes.Unavailable
}

// forwardErr classifies the failure of a forward attempt made with
// attempt's context actx: an attempt cut short by a leader change or its
// timeout says so, for withRetry.
func forwardErr(actx context.Context, err error) error {
	if cause := context.Cause(actx); errors.Is(cause, errLeaderChanged) || errors.Is(cause, errAttemptTimeout) {
		return fmt.Errorf("%w: %v", cause, err)
	}
	return err
}

func (n *Node) tryApply(ctx context.Context, lv leaderView, data []byte) (*raftpb.Result, error) {
	if n.IsLeader() {
		res, _, err := n.applyLocal(ctx, data)
		return res, err
	}
	client, err := n.clientOf(lv.leader)
	if err != nil {
		return nil, err
	}
	actx, cancel := attempt(ctx, lv.changed, n.timing.Forward)
	defer cancel()
	resp, err := client.Apply(actx, &clusterpb.ApplyRequest{Command: data})
	if err != nil {
		err = forwardErr(actx, err)
		switch {
		case rpcerr.Code(err) == codes.Aborted:
			return nil, &UnknownOutcomeError{Err: err}
		case errors.Is(err, errLeaderChanged), errors.Is(err, errAttemptTimeout):
			// Sent, and not answered: the leader may have applied it.
			return nil, &UnknownOutcomeError{Err: err}
		}
		return nil, err
	}
	var res raftpb.Result
	if err := proto.Unmarshal(resp.Result, &res); err != nil {
		return nil, fmt.Errorf("cluster: leader's result: %w", err)
	}
	return &res, nil
}

// applyLocal applies on this node, which must be the leader.
func (n *Node) applyLocal(ctx context.Context, data []byte) (*raftpb.Result, uint64, error) {
	f := n.raft.Apply(data, 5*time.Second)
	done := make(chan error, 1)
	go func() { done <- f.Error() }() // raft resolves every future, at the latest on shutdown
	select {
	case err := <-done:
		switch {
		case errors.Is(err, raft.ErrLeadershipLost):
			return nil, 0, &UnknownOutcomeError{Err: err}
		case err != nil:
			return nil, 0, err
		}
	case <-ctx.Done():
		return nil, 0, &UnknownOutcomeError{Err: ctx.Err()}
	}
	res, ok := f.Response().(*raftpb.Result)
	if !ok {
		return nil, 0, fmt.Errorf("cluster: state machine returned %T", f.Response())
	}
	return res, f.Index(), nil
}

// LeaderClient returns a client of the leader's cluster API, or an error
// while no leader (or its API address) is known.
func (n *Node) LeaderClient() (clusterpb.ClusterClient, error) {
	return n.clientOf(n.lead.view().leader)
}

// clientOf returns a client of the cluster API of leader id.
func (n *Node) clientOf(id raft.ServerID) (clusterpb.ClusterClient, error) {
	if id == "" {
		return nil, errNoLeaderYet
	}
	srv := n.fsm.Read().Server(string(id))
	if srv == nil || srv.ApiAddr == "" {
		return nil, fmt.Errorf("%w: leader %s's API address is not known yet", errNoLeaderYet, id)
	}
	return n.peers.get(srv.ApiAddr)
}

// Forward calls f with a client of the leader's cluster API, retrying as
// Apply does (each attempt bounded by timeout and cut short when the
// leader changes). f must be safe to call again after a failure.
func (n *Node) Forward(ctx context.Context, timeout time.Duration, f func(ctx context.Context, leader clusterpb.ClusterClient) error) error {
	return n.withRetry(ctx, "forward", func(ctx context.Context, lv leaderView) error {
		client, err := n.clientOf(lv.leader)
		if err != nil {
			return err
		}
		actx, cancel := attempt(ctx, lv.changed, timeout)
		defer cancel()
		return forwardErr(actx, f(actx, client))
	})
}

// ReadIndex makes the local state reflect every write committed before the
// call: a linearizable read point. On the leader it runs a Raft barrier
// (coalesced with concurrent readers); a follower asks the leader for the
// barrier's index and waits until it has applied it.
func (n *Node) ReadIndex(ctx context.Context) error {
	var index uint64
	if err := n.withRetry(ctx, "read index", func(ctx context.Context, lv leaderView) error {
		var err error
		index, err = n.tryReadIndex(ctx, lv)
		return err
	}); err != nil {
		return err
	}
	return n.fsm.WaitApplied(ctx, index)
}

func (n *Node) tryReadIndex(ctx context.Context, lv leaderView) (uint64, error) {
	if n.IsLeader() {
		return n.barrier.do(ctx)
	}
	client, err := n.clientOf(lv.leader)
	if err != nil {
		return 0, err
	}
	actx, cancel := attempt(ctx, lv.changed, n.timing.Forward)
	defer cancel()
	resp, err := client.ReadIndex(actx, &clusterpb.ReadIndexRequest{})
	if err != nil {
		return 0, forwardErr(actx, err)
	}
	return resp.Index, nil
}

// Writable reports whether this server can serve writes now, with one
// round trip and without retrying: it leads and a quorum confirms it, or it
// follows a leader that answers a read barrier. The error says why not (an
// UnavailableError, mostly).
func (n *Node) Writable(ctx context.Context) error {
	if n.removed() {
		return &UnavailableError{Cause: CauseRemoved, Detail: "this server is not in the Raft configuration; `meshca operator raft add-voter` on a member puts it back"}
	}
	ctx, cancel := context.WithTimeout(ctx, n.timing.Forward)
	defer cancel()
	if n.IsLeader() {
		done := make(chan error, 1)
		go func() { done <- n.raft.VerifyLeader().Error() }() // resolved within the leader lease
		select {
		case err := <-done:
			if err != nil {
				return &UnavailableError{Cause: CauseNoQuorum, Detail: "this server leads but a quorum does not confirm it", Err: err}
			}
			return nil
		case <-ctx.Done():
			return &UnavailableError{Cause: CauseNoQuorum, Detail: "this server leads but a quorum does not confirm it", Err: ctx.Err()}
		}
	}
	lv := n.lead.view()
	id := lv.leader
	if id == "" {
		if err := n.refusal(nil); err != nil {
			return err
		}
		return &UnavailableError{Cause: CauseNoLeader, Detail: "an election is under way"}
	}
	if _, err := n.tryReadIndex(ctx, lv); err != nil {
		if refused := n.refusal(err); refused != nil {
			return refused
		}
		return &UnavailableError{Cause: CauseLeaderUnreachable, Detail: fmt.Sprintf("leader %s did not answer a read barrier", id), Err: err}
	}
	return nil
}

// runBarrier returns the state machine's index once every entry before the
// barrier is applied. Both leader and followers feed their state machines
// the same entries, so a follower that reached this index has applied the
// same commands.
func (n *Node) runBarrier() (uint64, error) {
	if err := n.raft.Barrier(10 * time.Second).Error(); err != nil {
		return 0, err
	}
	return n.fsm.AppliedIndex(), nil
}

// AddVoter adds a server to the Raft configuration (on the leader, or
// forwarded to it).
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	return n.membership(ctx, &clusterpb.MembershipRequest{Op: clusterpb.MembershipRequest_ADD_VOTER, Id: id, Address: addr})
}

// AddNonvoter adds a server to the Raft configuration without a vote: it
// replicates, and counts toward no quorum until it is promoted with
// AddVoter. A server that is already a voter stays one. This is how a new
// server joins: added as a voter before its Raft runs and catches up, it
// would raise the quorum with a vote that cannot be cast, and a cluster
// already missing a server would lose its majority.
func (n *Node) AddNonvoter(ctx context.Context, id, addr string) error {
	return n.membership(ctx, &clusterpb.MembershipRequest{Op: clusterpb.MembershipRequest_ADD_NONVOTER, Id: id, Address: addr})
}

// Promote makes the non-voter id (at addr) a voter, on the leader, if it
// still is a non-voter of the configuration and recorded in the state;
// otherwise it is refused (FailedPrecondition, not retried).
func (n *Node) Promote(ctx context.Context, id, addr string) error {
	return n.membership(ctx, &clusterpb.MembershipRequest{Op: clusterpb.MembershipRequest_PROMOTE, Id: id, Address: addr})
}

// RemoveServer removes a server from the Raft configuration.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	return n.membership(ctx, &clusterpb.MembershipRequest{Op: clusterpb.MembershipRequest_REMOVE, Id: id})
}

func (n *Node) membership(ctx context.Context, req *clusterpb.MembershipRequest) error {
	return n.withRetry(ctx, "membership change", func(ctx context.Context, lv leaderView) error {
		if n.IsLeader() {
			return n.membershipLocal(req)
		}
		client, err := n.clientOf(lv.leader)
		if err != nil {
			return err
		}
		// A configuration change commits once the leader has replicated it.
		actx, cancel := attempt(ctx, lv.changed, 10*time.Second)
		defer cancel()
		_, err = client.Membership(actx, req)
		return forwardErr(actx, err)
	})
}

// ErrNotPromotable refuses a promotion: the server is not a non-voter of
// the configuration, or not recorded in the state (it was removed).
var ErrNotPromotable = errors.New("cluster: not a recorded non-voter of the configuration")

func (n *Node) membershipLocal(req *clusterpb.MembershipRequest) error {
	// One change at a time, so that a promotion's check and its change are
	// not separated by a removal.
	n.membershipMu.Lock()
	defer n.membershipMu.Unlock()
	switch req.Op {
	case clusterpb.MembershipRequest_PROMOTE:
		if req.Id == "" || req.Address == "" {
			return status.Error(codes.InvalidArgument, "promote needs an ID and an address")
		}
		servers, err := n.Peers()
		if err != nil {
			return err
		}
		nonvoter := slices.ContainsFunc(servers, func(s raft.Server) bool { return string(s.ID) == req.Id && s.Suffrage == raft.Nonvoter })
		if !nonvoter || n.fsm.Read().Server(req.Id) == nil {
			return status.Errorf(codes.FailedPrecondition, "promote %s: %v", req.Id, ErrNotPromotable)
		}
		return n.raft.AddVoter(raft.ServerID(req.Id), raft.ServerAddress(req.Address), 0, 10*time.Second).Error()
	case clusterpb.MembershipRequest_ADD_VOTER:
		if req.Id == "" || req.Address == "" {
			return status.Error(codes.InvalidArgument, "add-voter needs an ID and an address")
		}
		return n.raft.AddVoter(raft.ServerID(req.Id), raft.ServerAddress(req.Address), 0, 10*time.Second).Error()
	case clusterpb.MembershipRequest_ADD_NONVOTER:
		if req.Id == "" || req.Address == "" {
			return status.Error(codes.InvalidArgument, "add-nonvoter needs an ID and an address")
		}
		return n.raft.AddNonvoter(raft.ServerID(req.Id), raft.ServerAddress(req.Address), 0, 10*time.Second).Error()
	case clusterpb.MembershipRequest_REMOVE:
		if req.Id == "" {
			return status.Error(codes.InvalidArgument, "remove needs an ID")
		}
		return n.raft.RemoveServer(raft.ServerID(req.Id), 0, 10*time.Second).Error()
	}
	return status.Errorf(codes.InvalidArgument, "unknown membership operation %v", req.Op)
}

// Peers returns the Raft configuration.
func (n *Node) Peers() ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	return f.Configuration().Servers, nil
}

// Restore replaces the cluster's state with the snapshot in r, after
// verifying it whole: a corrupt snapshot changes nothing. It runs on the
// leader (a follower forwards the stream). It returns the restored state's hash.
func (n *Node) Restore(ctx context.Context, r io.Reader) ([32]byte, error) {
	tmp, err := os.CreateTemp("", "meshca-restore-*")
	if err != nil {
		return [32]byte{}, fmt.Errorf("cluster: restore: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	size, err := io.Copy(tmp, r)
	if err != nil {
		return [32]byte{}, fmt.Errorf("cluster: restore: read snapshot: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return [32]byte{}, err
	}
	_, hash, err := raftfsm.VerifySnapshot(tmp)
	if err != nil {
		return hash, err
	}
	if !n.IsLeader() {
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return hash, err
		}
		return hash, n.forwardRestore(ctx, tmp)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return hash, err
	}
	// The snapshot's own index is its source's: another cluster's, or this
	// one's past. It is restored at the index this log gives it instead, so
	// that no replica's applied index moves backwards or ahead of its log.
	// Raft restores at max(last index, meta.Index)+1; the gap leaves room
	// for entries appended while the snapshot is rewritten (if more come,
	// the stated index is lower than the real one, which only makes
	// readers wait for the next entry).
	index := n.raft.LastIndex() + restoreIndexGap
	re, err := os.CreateTemp("", "meshca-restore-*")
	if err != nil {
		return hash, fmt.Errorf("cluster: restore: %w", err)
	}
	defer os.Remove(re.Name())
	defer re.Close()
	if _, err := raftfsm.Reindex(tmp, re, index+1); err != nil {
		return hash, fmt.Errorf("cluster: restore: %w", err)
	}
	if size, err = re.Seek(0, io.SeekCurrent); err != nil {
		return hash, err
	}
	if _, err := re.Seek(0, io.SeekStart); err != nil {
		return hash, err
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size, Index: index}
	if err := n.raft.Restore(meta, re, 30*time.Second); err != nil {
		return hash, fmt.Errorf("cluster: restore: %w", err)
	}
	// A no-op moves every replica past the restored index.
	if _, err := n.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_Noop{Noop: &raftpb.Noop{}}}); err != nil {
		return hash, fmt.Errorf("cluster: restore: %w", err)
	}
	return hash, nil
}

func (n *Node) forwardRestore(ctx context.Context, r io.Reader) error {
	lv := n.lead.view()
	client, err := n.clientOf(lv.leader)
	if err != nil {
		return &UnavailableError{Cause: CauseNoLeader, Detail: "no leader to restore the snapshot", Err: err}
	}
	// One attempt (the snapshot is read once), cut short if the leader
	// changes; its length is the caller's.
	ctx, cancel := attempt(ctx, lv.changed, 24*time.Hour)
	defer cancel()
	stream, err := client.Restore(ctx)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if err := stream.Send(&clusterpb.RestoreChunk{Data: buf[:k]}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	_, err = stream.CloseAndRecv()
	return err
}

// timedFSM is the state machine, timed: Raft applies through it and the
// observer learns how long each batch took, on the monotonic clock (a
// latency, not a time of the CA's).
type timedFSM struct {
	*raftfsm.FSM
	observe func(entries int, d time.Duration)
}

// Apply applies one entry.
func (t timedFSM) Apply(l *raft.Log) any {
	began := wallclock.Now()
	r := t.FSM.Apply(l)
	t.observe(1, wallclock.Since(began))
	return r
}

// ApplyBatch applies a batch of entries (raft.BatchingFSM).
func (t timedFSM) ApplyBatch(logs []*raft.Log) []any {
	began := wallclock.Now()
	r := t.FSM.ApplyBatch(logs)
	t.observe(len(logs), wallclock.Since(began))
	return r
}

var _ raft.BatchingFSM = timedFSM{}
