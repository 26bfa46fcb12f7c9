package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/server/cluster"
	"github.com/meshca/meshca/server/joinsecret"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// joinProofKey is the gRPC metadata key of a joining server's proof that it
// holds a server-join secret (binary: "-bin").
const joinProofKey = "meshca-join-proof-bin"

// joinProofCreds adds a joining server's proof of its server-join secret
// to each call, computed over the exported key of the very connection the
// call travels on.
type joinProofCreds struct{ secret joinsecret.Secret }

func (c joinProofCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	ri, ok := credentials.RequestInfoFromContext(ctx)
	if !ok {
		return nil, errors.New("join: no connection information for the server-join proof")
	}
	info, ok := ri.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, errors.New("join: the server-join proof needs TLS")
	}
	ekm, err := joinsecret.ExportedKey(info.State)
	if err != nil {
		return nil, err
	}
	return map[string]string{joinProofKey: string(c.secret.JoinerProof(ekm))}, nil
}

func (joinProofCreds) RequireTransportSecurity() bool { return true }

// checkMemberProof checks that the member that answered a join on
// connection member holds secret too.
func checkMemberProof(secret joinsecret.Secret, member *peer.Peer, resp *clusterpb.JoinResponse) error {
	info, ok := member.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return errors.New("no TLS connection to the member")
	}
	ekm, err := joinsecret.ExportedKey(info.State)
	if err != nil {
		return err
	}
	if !secret.VerifyMember(ekm, resp.MemberProof) {
		return fmt.Errorf("the member did not prove it holds the server-join secret %s: it is not a server of this cluster, or it no longer admits that secret", secret.ID)
	}
	return nil
}

// authenticateJoin runs on the member a joining server contacted, before
// the join is forwarded to the leader. A join forwarded by another server
// of the trust domain keeps what that server checked. Otherwise a proof of
// a server-join secret in the call's metadata is checked against this
// server's secret file, read now (so a rotated or revoked secret counts at
// once); a join with a token is left to the leader.
func (s *Server) authenticateJoin(ctx context.Context, req *clusterpb.JoinRequest) (func(*clusterpb.JoinResponse), error) {
	if id, ok := cluster.PeerID(ctx); ok && naming.IsServerID(s.td, id) {
		return nil, nil
	}
	req.SecretVerified, req.SecretId = false, ""
	md, _ := metadata.FromIncomingContext(ctx)
	proofs := md.Get(joinProofKey)
	if len(proofs) == 0 {
		return nil, nil
	}
	from := ""
	p, _ := peer.FromContext(ctx)
	if p != nil {
		from = p.Addr.String()
	}
	deny := func(code codes.Code, reason string) error {
		s.events.Record(audit.Event{Actor: from, Action: "server.join", Subject: req.NodeId, Decision: audit.Deny, Reason: reason})
		return status.Error(code, reason)
	}
	switch {
	case len(proofs) != 1:
		return nil, deny(codes.InvalidArgument, "one server-join proof per call")
	case req.Token != "":
		return nil, deny(codes.InvalidArgument, "a join token or a server-join secret, not both")
	case s.cfg.ServerJoinSecretFile == "":
		return nil, deny(codes.FailedPrecondition, "this server admits no server-join secret (it has no server-join secret file): join with a token from `meshca token create --kind server`")
	}
	secrets, err := joinsecret.Load(s.cfg.ServerJoinSecretFile)
	if err != nil {
		// The member's own file: the joining server may retry once it is fixed.
		s.log.Error("cannot read the server-join secret file; refusing server joins until it is fixed", "error", err)
		return nil, status.Error(codes.Unavailable, "the member cannot read its server-join secret file; retry")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, deny(codes.InvalidArgument, "the server-join proof needs TLS")
	}
	ekm, err := joinsecret.ExportedKey(info.State)
	if err != nil {
		return nil, deny(codes.InvalidArgument, err.Error())
	}
	secret, ok := joinsecret.MatchJoiner(secrets, ekm, []byte(proofs[0]))
	if !ok {
		return nil, deny(codes.PermissionDenied, "the server-join proof does not verify: the joining server holds no secret this member admits (revoked, another cluster's, or not the same file)")
	}
	req.SecretVerified, req.SecretId = true, secret.ID
	return func(resp *clusterpb.JoinResponse) { resp.MemberProof = secret.MemberProof(ekm) }, nil
}
