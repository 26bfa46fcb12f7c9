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
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Timing holds Raft's timeouts. Zero fields take DefaultTiming's.
type Timing struct {
	Heartbeat   time.Duration
	Election    time.Duration
	LeaderLease time.Duration
	Commit      time.Duration
}

// DefaultTiming detects a dead leader and elects another well within 3 s on
// a LAN, where hashicorp/raft's own defaults (1 s heartbeat and election
// timeouts) take up to about 3 s.
var DefaultTiming = Timing{Heartbeat: 500 * time.Millisecond, Election: 500 * time.Millisecond, LeaderLease: 250 * time.Millisecond, Commit: 20 * time.Millisecond}

// Config configures a cluster node.
type Config struct {
	// NodeID is the server's stable ID in the Raft configuration.
	NodeID string
	// RaftListener accepts Raft connections. Its address is advertised to
	// peers unless RaftAdvertise is set.
	RaftListener  net.Listener
	RaftAdvertise string
	Identity      *Identity
	FSM           *raftfsm.FSM
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
	log     *slog.Logger
	raft    *raft.Raft
	trans   *raft.NetworkTransport
	fsm     *raftfsm.FSM
	barrier coalescer
	peers   *peerClients
	ledger  *ledgerBatcher

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
	if cfg.LedgerBatch <= 0 {
		cfg.LedgerBatch = 1024
	}
	t := cfg.Timing
	d := DefaultTiming
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = pick(t.Heartbeat, d.Heartbeat)
	rc.ElectionTimeout = pick(t.Election, d.Election)
	rc.LeaderLeaseTimeout = pick(t.LeaderLease, d.LeaderLease)
	rc.CommitTimeout = pick(t.Commit, d.Commit)
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
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
		a, err := net.ResolveTCPAddr("tcp", cfg.RaftAdvertise)
		if err != nil {
			return nil, fmt.Errorf("cluster: raft advertise address: %w", err)
		}
		advertise = a
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
	r, err := raft.NewRaft(rc, cfg.FSM, logs, cfg.Stores.Stable, cfg.Stores.Snapshots, trans)
	if err != nil {
		trans.Close()
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	n := &Node{cfg: cfg, log: cfg.Logger, raft: r, trans: trans, fsm: cfg.FSM, stop: stop,
		peers: newPeerClients(cfg.Identity, cfg.Dial)}
	n.barrier.run = n.runBarrier
	n.ledger = newLedgerBatcher(n, cfg.LedgerBatch)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.ledger.run(ctx)
	}()
	return n, nil
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

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// WaitLeader blocks until the cluster has a leader, and returns its ID.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	for {
		if _, id := n.raft.LeaderWithID(); id != "" {
			return string(id), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("cluster: no leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
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
// leader or forwarded to it, retrying while no leader is known. The error
// is a transport or Raft error, or the command's refusal (raftfsm.Error).
// A command whose outcome is unknown (the leader was lost after it was
// sent) is not retried unless idempotent: the error says so.
func (n *Node) Apply(ctx context.Context, cmd *raftpb.Command) (*raftpb.Result, error) {
	return n.apply(ctx, cmd, false)
}

// ApplyIdempotent is Apply for commands that are safe to apply twice (the
// state machine deduplicates them), so unknown outcomes are retried.
func (n *Node) ApplyIdempotent(ctx context.Context, cmd *raftpb.Command) (*raftpb.Result, error) {
	return n.apply(ctx, cmd, true)
}

// errUnknownOutcome marks a command that may or may not have been applied.
var errUnknownOutcome = errors.New("cluster: leadership lost while applying; the command may or may not have been applied")

func (n *Node) apply(ctx context.Context, cmd *raftpb.Command, idempotent bool) (*raftpb.Result, error) {
	n.stamp(cmd)
	data, err := raftfsm.Encode(cmd)
	if err != nil {
		return nil, fmt.Errorf("cluster: encode command: %w", err)
	}
	var res *raftpb.Result
	err = withRetry(ctx, "apply", func(ctx context.Context) error {
		var err error
		res, err = n.tryApply(ctx, data)
		if errors.Is(err, errUnknownOutcome) && !idempotent {
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

// withRetry calls try until it succeeds or fails for good, backing off while
// an election is under way or the leader is unreachable. Without a deadline
// in ctx it gives up after defaultApplyTimeout.
func withRetry(ctx context.Context, what string, try func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultApplyTimeout)
		defer cancel()
	}
	for backoff := 5 * time.Millisecond; ; backoff = min(backoff*2, 200*time.Millisecond) {
		err := try(ctx)
		var p permanent
		switch {
		case err == nil:
			return nil
		case errors.As(err, &p):
			return p.error
		case !retryable(err):
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: %s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(backoff):
		}
	}
}

// errNoLeader is retried: an election is under way.
var errNoLeader = errors.New("cluster: no leader")

func retryable(err error) bool {
	if errors.Is(err, errNoLeader) || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, errUnknownOutcome) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.FailedPrecondition, codes.Aborted, codes.DeadlineExceeded:
		return true
	}
	return false
}

func (n *Node) tryApply(ctx context.Context, data []byte) (*raftpb.Result, error) {
	if n.IsLeader() {
		res, _, err := n.applyLocal(ctx, data)
		return res, err
	}
	client, err := n.leaderClient()
	if err != nil {
		return nil, err
	}
	resp, err := client.Apply(ctx, &clusterpb.ApplyRequest{Command: data})
	if err != nil {
		if status.Code(err) == codes.Aborted {
			return nil, fmt.Errorf("%w: %v", errUnknownOutcome, err)
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
			return nil, 0, errUnknownOutcome
		case err != nil:
			return nil, 0, err
		}
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("%w: %v", errUnknownOutcome, ctx.Err())
	}
	res, ok := f.Response().(*raftpb.Result)
	if !ok {
		return nil, 0, fmt.Errorf("cluster: state machine returned %T", f.Response())
	}
	return res, f.Index(), nil
}

// LeaderClient returns a client of the leader's cluster API, or an error
// while no leader (or its API address) is known.
func (n *Node) LeaderClient() (clusterpb.ClusterClient, error) { return n.leaderClient() }

func (n *Node) leaderClient() (clusterpb.ClusterClient, error) {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return nil, errNoLeader
	}
	srv := n.fsm.Read().Server(string(id))
	if srv == nil || srv.ApiAddr == "" {
		return nil, fmt.Errorf("%w: leader %s's API address is not known yet", errNoLeader, id)
	}
	return n.peers.get(srv.ApiAddr)
}

// ReadIndex makes the local state reflect every write committed before the
// call: a linearizable read point. On the leader it runs a Raft barrier
// (coalesced with concurrent readers); a follower asks the leader for the
// barrier's index and waits until it has applied it.
func (n *Node) ReadIndex(ctx context.Context) error {
	var index uint64
	if err := withRetry(ctx, "read index", func(ctx context.Context) error {
		var err error
		index, err = n.tryReadIndex(ctx)
		return err
	}); err != nil {
		return err
	}
	return n.fsm.WaitApplied(ctx, index)
}

func (n *Node) tryReadIndex(ctx context.Context) (uint64, error) {
	if n.IsLeader() {
		return n.barrier.do(ctx)
	}
	client, err := n.leaderClient()
	if err != nil {
		return 0, err
	}
	resp, err := client.ReadIndex(ctx, &clusterpb.ReadIndexRequest{})
	if err != nil {
		return 0, err
	}
	return resp.Index, nil
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

// RemoveServer removes a server from the Raft configuration.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	return n.membership(ctx, &clusterpb.MembershipRequest{Op: clusterpb.MembershipRequest_REMOVE, Id: id})
}

func (n *Node) membership(ctx context.Context, req *clusterpb.MembershipRequest) error {
	return withRetry(ctx, "membership change", func(ctx context.Context) error {
		if n.IsLeader() {
			return n.membershipLocal(req)
		}
		client, err := n.leaderClient()
		if err != nil {
			return err
		}
		_, err = client.Membership(ctx, req)
		return err
	})
}

func (n *Node) membershipLocal(req *clusterpb.MembershipRequest) error {
	switch req.Op {
	case clusterpb.MembershipRequest_ADD_VOTER:
		if req.Id == "" || req.Address == "" {
			return status.Error(codes.InvalidArgument, "add-voter needs an ID and an address")
		}
		return n.raft.AddVoter(raft.ServerID(req.Id), raft.ServerAddress(req.Address), 0, 10*time.Second).Error()
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
	client, err := n.leaderClient()
	if err != nil {
		return err
	}
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
