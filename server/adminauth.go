package server

import (
	"context"
	"slices"

	"github.com/meshca/meshca/server/cluster"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// requireAdmin admits callers of the operator API over mTLS whose verified
// X509-SVID names one of the configured admin IDs. Refusals are audited.
func (s *Server) requireAdmin(ctx context.Context, method string) error {
	id, ok := cluster.PeerID(ctx)
	if !ok || !slices.Contains(s.cfg.AdminIDs, id.String()) {
		who := "no certificate"
		if ok {
			who = id.String()
		}
		s.audit.Warn("operator api", "decision", "deny", "caller", who, "method", method, "reason", "not an admin ID")
		return status.Errorf(codes.PermissionDenied, "%s is not an admin of this server", who)
	}
	return nil
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
