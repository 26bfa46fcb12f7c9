package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// JoinFunc admits a new server; see clusterpb.ClusterServer.Join.
type JoinFunc func(ctx context.Context, req *clusterpb.JoinRequest) (*clusterpb.JoinResponse, error)

// CertifyFunc certifies the next intermediate of the member server nodeID,
// on the leader; see clusterpb.ClusterServer.CertifyIntermediate.
type CertifyFunc func(ctx context.Context, nodeID, profile string, csr []byte) ([]byte, error)

// JoinAuthFunc authenticates a joining server at the member it contacted,
// before a Join is forwarded to the leader: it may mark req as checked
// there, and returns what completes the answer on the way back (nil:
// nothing to add).
type JoinAuthFunc func(ctx context.Context, req *clusterpb.JoinRequest) (func(*clusterpb.JoinResponse), error)

// Handlers are the methods of the cluster API that the server implements.
type Handlers struct {
	Join JoinFunc
	// AuthenticateJoin, if set, runs first on every Join the member
	// receives, forwarded or not.
	AuthenticateJoin JoinAuthFunc
	Certify          CertifyFunc
}

// Service is the cluster's gRPC API. Apply, ReadIndex, Membership and
// Restore admit only servers of the trust domain; Join admits anyone with a
// valid server join token (checked by the JoinFunc, on the leader).
//
// Its handlers return domain errors: register it on a grpc.Server with
// internal/rpcerr's interceptors, which map them to status codes (a server
// that is not the leader answers Unavailable, which the forwarding
// follower retries; an unknown outcome is Aborted).
type Service struct {
	clusterpb.UnimplementedClusterServer
	node *Node
	h    Handlers
}

// NewService returns the gRPC API of node; h handles what the server does.
func NewService(node *Node, h Handlers) *Service { return &Service{node: node, h: h} }

// joinTimeout bounds one attempt to forward a Join to the leader, which
// signs intermediates and commits several commands.
const joinTimeout = 30 * time.Second

// PeerID returns the SPIFFE ID of a gRPC caller that presented a
// certificate. Only connections accepted with Identity.APIServerTLS or
// PeerTLS may be asked: their handshake verified the chain against the
// roots, once per connection, so this reads the ID without verifying again.
func PeerID(ctx context.Context) (spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(info.State.PeerCertificates[0])
	return id, err == nil
}

func (s *Service) requireServer(ctx context.Context) error {
	id, ok := PeerID(ctx)
	if !ok || !naming.IsServerID(s.node.cfg.Identity.TrustDomain(), id) {
		return status.Error(codes.PermissionDenied, "only servers of the trust domain may call this")
	}
	return nil
}

func (s *Service) requireLeader() error {
	if !s.node.IsLeader() {
		return fmt.Errorf("cluster: %s: %w", s.node.cfg.NodeID, raft.ErrNotLeader)
	}
	return nil
}

// Apply applies a command forwarded by a follower. It never forwards again.
func (s *Service) Apply(ctx context.Context, req *clusterpb.ApplyRequest) (*clusterpb.ApplyResponse, error) {
	if err := s.requireServer(ctx); err != nil {
		return nil, err
	}
	if err := s.requireLeader(); err != nil {
		return nil, err
	}
	var cmd raftpb.Command
	if err := proto.Unmarshal(req.Command, &cmd); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "not a command: %v", err)
	}
	if al := cmd.GetAppendLedger(); al != nil {
		// Cluster-wide group commit: a follower's records join the
		// leader's own in its next ledger entry.
		res, err := s.node.commitRecords(ctx, al.Records)
		if err != nil {
			return nil, err
		}
		b, err := proto.Marshal(res)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode result: %v", err)
		}
		return &clusterpb.ApplyResponse{Result: b}, nil
	}
	res, index, err := s.node.applyLocal(ctx, req.Command)
	if err != nil {
		return nil, err
	}
	b, err := proto.Marshal(res)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode result: %v", err)
	}
	return &clusterpb.ApplyResponse{Index: index, Result: b}, nil
}

// ReadIndex runs a barrier on the leader for a follower's linearizable read.
func (s *Service) ReadIndex(ctx context.Context, _ *clusterpb.ReadIndexRequest) (*clusterpb.ReadIndexResponse, error) {
	if err := s.requireServer(ctx); err != nil {
		return nil, err
	}
	if err := s.requireLeader(); err != nil {
		return nil, err
	}
	index, err := s.node.barrier.do(ctx)
	if err != nil {
		return nil, err
	}
	return &clusterpb.ReadIndexResponse{Index: index}, nil
}

// Membership changes the Raft configuration for a follower's operator.
func (s *Service) Membership(ctx context.Context, req *clusterpb.MembershipRequest) (*clusterpb.MembershipResponse, error) {
	if err := s.requireServer(ctx); err != nil {
		return nil, err
	}
	if err := s.requireLeader(); err != nil {
		return nil, err
	}
	if err := s.node.membershipLocal(req); err != nil {
		return nil, err
	}
	return &clusterpb.MembershipResponse{}, nil
}

// maxRestoreSize bounds a snapshot uploaded for restore.
const maxRestoreSize = 4 << 30

// Restore restores a snapshot a follower's operator uploaded.
func (s *Service) Restore(stream clusterpb.Cluster_RestoreServer) error {
	if err := s.requireServer(stream.Context()); err != nil {
		return err
	}
	if err := s.requireLeader(); err != nil {
		return err
	}
	var buf bytes.Buffer
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if buf.Len()+len(chunk.Data) > maxRestoreSize {
			return status.Error(codes.ResourceExhausted, "snapshot too large")
		}
		buf.Write(chunk.Data)
	}
	hash, err := s.node.Restore(stream.Context(), &buf)
	if err != nil {
		return err
	}
	return stream.SendAndClose(&clusterpb.RestoreResponse{StateHash: hash[:]})
}

// Join admits a new server: on the leader by the JoinFunc, elsewhere
// forwarded to the leader (each attempt bounded, and cut short when the
// leader changes).
func (s *Service) Join(ctx context.Context, req *clusterpb.JoinRequest) (*clusterpb.JoinResponse, error) {
	if s.h.Join == nil {
		return nil, status.Error(codes.Unimplemented, "this server does not admit new servers")
	}
	var finish func(*clusterpb.JoinResponse)
	if s.h.AuthenticateJoin != nil {
		var err error
		if finish, err = s.h.AuthenticateJoin(ctx, req); err != nil {
			return nil, err
		}
	}
	var resp *clusterpb.JoinResponse
	var err error
	if s.node.IsLeader() {
		resp, err = s.h.Join(ctx, req)
	} else {
		err = s.node.Forward(ctx, joinTimeout, func(ctx context.Context, leader clusterpb.ClusterClient) error {
			var err error
			resp, err = leader.Join(ctx, req)
			return err
		})
	}
	if err == nil && finish != nil {
		finish(resp)
	}
	return resp, err
}

// CertifyIntermediate certifies the calling server's next intermediate, on
// the leader.
func (s *Service) CertifyIntermediate(ctx context.Context, req *clusterpb.CertifyIntermediateRequest) (*clusterpb.CertifyIntermediateResponse, error) {
	if err := s.requireServer(ctx); err != nil {
		return nil, err
	}
	if s.h.Certify == nil {
		return nil, status.Error(codes.Unimplemented, "this server does not certify intermediates")
	}
	if err := s.requireLeader(); err != nil {
		return nil, err
	}
	id, _ := PeerID(ctx)
	nodeID, _ := naming.ServerNodeID(s.node.cfg.Identity.TrustDomain(), id) // checked by requireServer
	der, err := s.h.Certify(ctx, nodeID, req.Profile, req.Csr)
	if err != nil {
		return nil, err
	}
	return &clusterpb.CertifyIntermediateResponse{Certificate: der}, nil
}
