package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// operatorService is the operator API, served on the admin socket: whoever
// can open the socket (mode 0600) is the server's operator. Every call that
// changes something is audited.
type operatorService struct {
	operatorpb.UnimplementedOperatorServer
	s *Server
}

// Join token lifetimes.
const (
	DefaultJoinTokenTTL = 10 * time.Minute
	MaxJoinTokenTTL     = 7 * 24 * time.Hour
)

// Status reports this server's view. The applied index, state hash and
// ledger size are of one moment (one read view); ready says whether this
// server can serve writes now, and ready_reason why not.
func (o *operatorService) Status(ctx context.Context, _ *operatorpb.StatusRequest) (*operatorpb.StatusResponse, error) {
	n := o.s.node
	ready, reason := o.s.Readiness(ctx)
	addr, leader := n.Raft().LeaderWithID()
	r := o.s.fsm.Read()
	hash, err := r.StateHash()
	if err != nil {
		return nil, fmt.Errorf("state hash: %w", err)
	}
	resp := &operatorpb.StatusResponse{
		NodeId: o.s.cfg.NodeID, TrustDomain: o.s.td.Name(), RaftState: n.Raft().State().String(),
		LeaderId: string(leader), LeaderAddr: string(addr), AppliedIndex: r.AppliedIndex(),
		CommitIndex: n.Raft().CommitIndex(), StateHash: hex.EncodeToString(hash[:]), LedgerRecords: uint64(r.LedgerLen()),
		Ready: ready, ReadyReason: reason, SignQueueDepth: o.s.admission.QueueDepth(),
		AttestedNodes: uint64(len(r.Nodes())), Entries: uint64(len(r.Entries())),
		IssuancePolicyRevision: r.IssuancePolicy().GetRevision(),
		History:                o.s.historyStatus(ctx),
	}
	for _, b := range r.OPABundleNames() {
		resp.Bundles = append(resp.Bundles, &operatorpb.BundleRevision{Name: b.Name, Revision: b.Revision})
	}
	for _, a := range r.Authorities() {
		kind := "root"
		if a.Kind == raftpb.AuthorityKind_INTERMEDIATE {
			kind = "intermediate"
		}
		resp.Authorities = append(resp.Authorities, &operatorpb.AuthorityStatus{Id: a.Id, Kind: kind, Profile: a.Profile,
			State: a.State.String(), ServerId: a.ServerId, NotAfterUnix: a.NotAfterUnix})
	}
	// The members after the local read: theirs are later, never earlier.
	members, err := n.Members(ctx)
	if err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	for _, m := range members {
		pm := &operatorpb.Member{NodeId: string(m.Server.ID), RaftAddr: string(m.Server.Address), Suffrage: m.Server.Suffrage.String(),
			Reachable: m.Status != nil}
		if m.Status != nil {
			st := m.Status
			pm.RaftState, pm.AppliedIndex, pm.CommitIndex, pm.LeaderId, pm.LastContactMillis = st.RaftState, st.AppliedIndex, st.CommitIndex, st.LeaderId, st.LastContactMillis
		} else if m.Err != nil {
			pm.Error = m.Err.Error()
		}
		resp.Members = append(resp.Members, pm)
	}
	return resp, nil
}

func (o *operatorService) RaftListPeers(ctx context.Context, _ *operatorpb.RaftListPeersRequest) (*operatorpb.RaftListPeersResponse, error) {
	servers, err := o.s.node.Peers()
	if err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	_, leader := o.s.node.Raft().LeaderWithID()
	resp := &operatorpb.RaftListPeersResponse{}
	for _, sv := range servers {
		resp.Peers = append(resp.Peers, &operatorpb.Peer{Id: string(sv.ID), Address: string(sv.Address),
			Suffrage: sv.Suffrage.String(), Leader: sv.ID == leader})
	}
	return resp, nil
}

func (o *operatorService) RaftAddVoter(ctx context.Context, req *operatorpb.RaftAddVoterRequest) (*operatorpb.RaftAddVoterResponse, error) {
	if !ValidNodeID(req.Id) || !validHostPort(req.Address) {
		return nil, status.Error(codes.InvalidArgument, "add-voter needs a node ID and the server's raft host:port")
	}
	if err := o.s.node.AddVoter(ctx, req.Id, req.Address); err != nil {
		return nil, fmt.Errorf("add voter %s: %w", req.Id, err)
	}
	o.s.auditOp(ctx, "raft.add_voter", req.Id, audit.Allow, "", map[string]string{"address": req.Address})
	return &operatorpb.RaftAddVoterResponse{}, nil
}

func (o *operatorService) RaftRemovePeer(ctx context.Context, req *operatorpb.RaftRemovePeerRequest) (*operatorpb.RaftRemovePeerResponse, error) {
	servers, err := o.s.node.Peers()
	if err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	found := false
	for _, sv := range servers {
		found = found || string(sv.ID) == req.Id
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "no peer %q in the Raft configuration", req.Id)
	}
	if err := checkNotLastVoter(servers, req.Id); err != nil {
		return nil, err
	}
	if err := o.s.node.RemoveServer(ctx, req.Id); err != nil {
		return nil, fmt.Errorf("remove peer %s: %w", req.Id, err)
	}
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_RemoveServer{RemoveServer: &raftpb.RemoveServer{NodeId: req.Id}}}); err != nil && !errors.Is(err, raftfsm.ErrNotFound) {
		return nil, fmt.Errorf("forget server %s: %w", req.Id, err)
	}
	o.s.auditOp(ctx, "raft.remove_peer", req.Id, audit.Allow, "", nil)
	return &operatorpb.RaftRemovePeerResponse{}, nil
}

// snapshotChunk is the size of the chunks a snapshot streams in.
const snapshotChunk = 1 << 20

// SnapshotSave streams the replicated state as of a linearizable read.
func (o *operatorService) SnapshotSave(_ *operatorpb.SnapshotSaveRequest, stream operatorpb.Operator_SnapshotSaveServer) error {
	ctx := stream.Context()
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return fmt.Errorf("reach the leader for an up-to-date snapshot: %w", err)
	}
	snap, err := o.s.fsm.Snapshot()
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(snap.Persist(&pipeSink{pw}))
	}()
	defer pr.Close()
	buf := make([]byte, snapshotChunk)
	for {
		n, err := io.ReadFull(pr, buf)
		if n > 0 {
			if err := stream.Send(&operatorpb.SnapshotChunk{Data: buf[:n]}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			o.s.auditOp(ctx, "snapshot.save", "", audit.Allow, "", nil)
			return nil
		}
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
	}
}

// pipeSink adapts a pipe to raft.SnapshotSink for FSMSnapshot.Persist.
type pipeSink struct{ *io.PipeWriter }

func (p *pipeSink) ID() string    { return "operator" }
func (p *pipeSink) Cancel() error { return p.CloseWithError(errors.New("snapshot cancelled")) }
func (p *pipeSink) Close() error  { return nil }

var _ raft.SnapshotSink = (*pipeSink)(nil)

// SnapshotRestore replaces the cluster's state with an uploaded snapshot,
// verified whole first: a corrupt snapshot changes nothing.
func (o *operatorService) SnapshotRestore(stream operatorpb.Operator_SnapshotRestoreServer) error {
	pr, pw := io.Pipe()
	go func() {
		for {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				pw.Close()
				return
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := pw.Write(chunk.Data); err != nil {
				return
			}
		}
	}()
	hash, err := o.s.node.Restore(stream.Context(), pr)
	pr.Close()
	if errors.Is(err, raftfsm.ErrCorruptSnapshot) {
		o.s.auditOp(stream.Context(), "snapshot.restore", "", audit.Deny, err.Error(), nil)
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	o.s.auditOp(stream.Context(), "snapshot.restore", "", audit.Allow, "", map[string]string{"state_hash": hex.EncodeToString(hash[:])})
	return stream.SendAndClose(&operatorpb.SnapshotRestoreResponse{StateHash: hex.EncodeToString(hash[:])})
}

// CreateJoinToken makes a single-use join token. Only its SHA-256 is
// stored; the token itself is returned once, here.
func (o *operatorService) CreateJoinToken(ctx context.Context, req *operatorpb.CreateJoinTokenRequest) (*operatorpb.CreateJoinTokenResponse, error) {
	if req.Kind != TokenKindServer && req.Kind != TokenKindAgent {
		return nil, status.Errorf(codes.InvalidArgument, "token kind %q: want %q or %q", req.Kind, TokenKindServer, TokenKindAgent)
	}
	ttl := DefaultJoinTokenTTL
	if req.TtlSeconds != 0 {
		var err error
		if ttl, err = duration.Seconds("token ttl_seconds", req.TtlSeconds, time.Second, MaxJoinTokenTTL); err != nil {
			return nil, err
		}
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])
	hash := sha256.Sum256([]byte(token))
	expires := o.s.cfg.Clock.Now().Add(ttl)
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_CreateJoinToken{CreateJoinToken: &raftpb.CreateJoinToken{
		Token: &raftpb.JoinToken{Hash: hash[:], Kind: req.Kind, ExpiresUnixNano: expires.UnixNano()}}}}); err != nil {
		return nil, fmt.Errorf("create join token: %w", err)
	}
	o.s.auditOp(ctx, "token.create", req.Kind, audit.Allow, "", map[string]string{"expires": expires.UTC().Format(time.RFC3339),
		"token_sha256": hex.EncodeToString(hash[:8])})
	return &operatorpb.CreateJoinTokenResponse{Token: token, ExpiresUnix: expires.Unix()}, nil
}
