package server

import (
	"context"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/server/cluster"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// requireAdmin admits callers of the operator API over mTLS whose verified
// X509-SVID names one of the cluster's admins (see seedAdmins). Refusals
// are audited.
func (s *Server) requireAdmin(ctx context.Context, method string) error {
	id, ok := cluster.PeerID(ctx)
	if !ok || !s.isAdmin(id.String()) {
		who := "no certificate"
		if ok {
			who = id.String()
		}
		s.events.Record(audit.Event{Actor: who, Action: "operator.call", Subject: method, Decision: audit.Deny, Reason: "not an admin ID"})
		return status.Errorf(codes.PermissionDenied, "%s is not an admin of this server", who)
	}
	return nil
}

// adminActor names the operator of a call: "operator" on the admin socket,
// the admin's SPIFFE ID over mutual TLS.
func adminActor(ctx context.Context) string {
	if id, ok := cluster.PeerID(ctx); ok {
		return id.String()
	}
	return operatorNodeID
}

func (s *Server) requireAdminUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := s.requireAdmin(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (s *Server) requireAdminStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := s.requireAdmin(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

// auditOp records an operator's action or a refusal of it, with the admin
// who asked as the actor.
func (s *Server) auditOp(ctx context.Context, action, subject string, d audit.Decision, reason string, details map[string]string) {
	s.events.Record(audit.Event{Actor: adminActor(ctx), Action: action, Subject: subject, Decision: d, Reason: reason, Details: details})
}
