// Package rpcerr is the one place where meshca's errors become gRPC status
// codes. Every server API (cluster, node, operator) maps the errors its
// handlers return through Status, installed as interceptors on each
// grpc.Server; a handler picks a code itself only for a refusal it makes
// itself (a malformed request, a caller not allowed).
//
// The code says what a client may do:
//
//   - Unavailable: nothing was carried out, and retrying later or through
//     another server may succeed: no leader, no quorum, the leader
//     unreachable, a server shutting down, Raft refusing a write before it
//     was committed, attestation evidence that could not be checked now.
//   - Aborted: a write may or may not have been applied (leadership was lost
//     while it was in flight); retry it only if it is idempotent.
//   - ResourceExhausted: the server sheds load; retry after the hint (see
//     internal/retryinfo).
//   - InvalidArgument, PermissionDenied, NotFound, AlreadyExists,
//     FailedPrecondition: a refusal; the same request will be refused again.
//   - DeadlineExceeded, Canceled: the caller's context ended first.
//   - Internal: anything else, a bug or an unexpected failure.
//
// A Raft or commit failure is therefore never a refusal. Errors from
// packages this one cannot import (it sits below them) declare their class
// with a method: Unavailable() bool, OutcomeUnknown() bool or
// InvalidArgument() bool.
package rpcerr

import (
	"context"
	"errors"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// unavailable is implemented by errors meaning that nothing was carried out
// and retrying later, or through another server, may succeed.
type unavailable interface{ Unavailable() bool }

// outcomeUnknown is implemented by errors meaning that a write may or may
// not have been applied.
type outcomeUnknown interface{ OutcomeUnknown() bool }

// invalidArgument is implemented by errors refusing a request's content
// (internal/duration's range errors).
type invalidArgument interface{ InvalidArgument() bool }

// raftUnavailable are hashicorp/raft's errors for a write or read that was
// not carried out (or, for ErrLeadershipLost outside an Apply, a read or
// membership change that is safe to retry).
var raftUnavailable = []error{
	raft.ErrNotLeader, raft.ErrLeadershipLost, raft.ErrLeadershipTransferInProgress, raft.ErrRaftShutdown,
	raft.ErrEnqueueTimeout, raft.ErrAbortedByRestore, raft.ErrNotVoter, raft.ErrTransportShutdown,
}

// Code returns the gRPC code for err; see the package documentation.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	// A status made by a handler, or relayed from another server.
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Code()
	}
	if c, ok := declared(err); ok {
		return c
	}
	var (
		fsm *raftfsm.Error
		att *attest.Error
		req *ca.RequestError
	)
	switch {
	case errors.As(err, &fsm):
		return fsmCode(fsm.Code)
	case errors.Is(err, raftfsm.ErrCorruptSnapshot):
		return codes.InvalidArgument
	case errors.As(err, &att):
		return attestCode(att.Kind)
	case errors.Is(err, ca.ErrAuthorityExpired):
		// This server's issuer expired: not the request's fault, and
		// another server (or this one after rotation) can serve it.
		return codes.Unavailable
	case errors.As(err, &req), errors.Is(err, ca.ErrUnknownProfile):
		return codes.InvalidArgument
	case isRaftUnavailable(err):
		return codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Internal
}

// declared returns the class the outermost error of err's chain that
// declares one declares: an Unavailable refusal wrapping the unknown
// outcome of its last attempt (of an idempotent command) is Unavailable.
func declared(err error) (codes.Code, bool) {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if u, ok := e.(unavailable); ok && u.Unavailable() {
			return codes.Unavailable, true
		}
		if o, ok := e.(outcomeUnknown); ok && o.OutcomeUnknown() {
			return codes.Aborted, true
		}
		if i, ok := e.(invalidArgument); ok && i.InvalidArgument() {
			return codes.InvalidArgument, true
		}
	}
	return 0, false
}

func isRaftUnavailable(err error) bool {
	for _, e := range raftUnavailable {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func fsmCode(c raftpb.ErrorCode) codes.Code {
	switch c {
	case raftpb.ErrorCode_NOT_FOUND:
		return codes.NotFound
	case raftpb.ErrorCode_ALREADY_EXISTS:
		return codes.AlreadyExists
	case raftpb.ErrorCode_TOKEN_CONSUMED, raftpb.ErrorCode_TOKEN_EXPIRED:
		return codes.PermissionDenied
	case raftpb.ErrorCode_CONFLICT:
		return codes.Aborted
	case raftpb.ErrorCode_INVALID:
		return codes.InvalidArgument
	}
	return codes.FailedPrecondition
}

func attestCode(k attest.Kind) codes.Code {
	switch k {
	case attest.KindInvalidEvidence, attest.KindInvalidSelector:
		return codes.InvalidArgument
	case attest.KindNotAuthorized:
		return codes.PermissionDenied
	case attest.KindUnavailable, attest.KindProcessChanged:
		return codes.Unavailable
	}
	return codes.Internal
}

// Status returns err as a gRPC status error with Code(err) and err's
// message. A status error (retry hints and other details included) is
// returned as it is.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Err()
	}
	return status.Error(Code(err), err.Error())
}

// UnaryServerInterceptor maps the errors of unary handlers through Status.
func UnaryServerInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, Status(err)
}

// StreamServerInterceptor maps the errors of stream handlers through Status.
func StreamServerInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return Status(handler(srv, ss))
}

// ServerOptions are the grpc.ServerOptions that install the mapping on a
// server; other interceptors given are chained after it (they see the
// handler's own errors).
func ServerOptions(unary []grpc.UnaryServerInterceptor, stream []grpc.StreamServerInterceptor) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{UnaryServerInterceptor}, unary...)...),
		grpc.ChainStreamInterceptor(append([]grpc.StreamServerInterceptor{StreamServerInterceptor}, stream...)...),
	}
}
