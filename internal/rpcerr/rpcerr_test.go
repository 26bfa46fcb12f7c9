package rpcerr

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/internal/retryinfo"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type unavailableErr struct{ error }

func (unavailableErr) Unavailable() bool { return true }

type unknownErr struct{ error }

func (unknownErr) OutcomeUnknown() bool { return true }

func TestCode(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("record the certificate: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"ok/nil", nil, codes.OK},
		{"unavailable/declared", wrap(unavailableErr{errors.New("no leader")}), codes.Unavailable},
		{"unavailable/declared, wrapping an unknown outcome", unavailableErr{unknownErr{errors.New("x")}}, codes.Unavailable},
		{"aborted/unknown outcome", wrap(unknownErr{errors.New("leadership lost")}), codes.Aborted},
		{"unavailable/raft not leader", wrap(raft.ErrNotLeader), codes.Unavailable},
		{"unavailable/raft leadership lost", raft.ErrLeadershipLost, codes.Unavailable},
		{"unavailable/raft shut down", wrap(raft.ErrRaftShutdown), codes.Unavailable},
		{"unavailable/attestation backend down", attest.NewError(attest.KindUnavailable, "k8s_psat", "kubelet", nil), codes.Unavailable},
		{"invalid/attestation evidence", wrap(attest.NewError(attest.KindInvalidEvidence, "join_token", "bad", nil)), codes.InvalidArgument},
		{"denied/attestation refused", attest.NewError(attest.KindNotAuthorized, "join_token", "used", nil), codes.PermissionDenied},
		{"invalid/bad CSR", wrap(&ca.RequestError{Reason: ca.ReasonMalformedCSR}), codes.InvalidArgument},
		{"unavailable/expired issuer", wrap(&ca.RequestError{Reason: ca.ReasonAuthorityExpired}), codes.Unavailable},
		{"denied/token consumed", wrap(&raftfsm.Error{Code: raftpb.ErrorCode_TOKEN_CONSUMED}), codes.PermissionDenied},
		{"not found/fsm", &raftfsm.Error{Code: raftpb.ErrorCode_NOT_FOUND}, codes.NotFound},
		{"exists/fsm", &raftfsm.Error{Code: raftpb.ErrorCode_ALREADY_EXISTS}, codes.AlreadyExists},
		{"invalid/corrupt snapshot", wrap(raftfsm.ErrCorruptSnapshot), codes.InvalidArgument},
		{"invalid/duration out of range", wrap(&duration.RangeError{Field: "ttl_seconds", Value: -1}), codes.InvalidArgument},
		{"deadline/context", wrap(context.DeadlineExceeded), codes.DeadlineExceeded},
		{"canceled/context", context.Canceled, codes.Canceled},
		{"status/passed through", wrap(status.Error(codes.FailedPrecondition, "batch too large")), codes.FailedPrecondition},
		{"status/retry hint passed through", retryinfo.Exhausted(time.Second, "busy"), codes.ResourceExhausted},
		{"internal/unknown", errors.New("boom"), codes.Internal},
	} {
		if got := Code(tc.err); got != tc.want {
			t.Errorf("%s: Code(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// Status keeps a status error's details: a retry hint survives wrapping.
func TestStatusKeepsDetails(t *testing.T) {
	err := Status(fmt.Errorf("sign: %w", retryinfo.Exhausted(2*time.Second, "queue full")))
	if d, ok := retryinfo.After(err); !ok || d != 2*time.Second {
		t.Errorf("retry hint after Status = %v, %v; want 2s", d, ok)
	}
	if st := status.Convert(Status(unavailableErr{errors.New("cluster: no leader")})); st.Code() != codes.Unavailable || st.Message() != "cluster: no leader" {
		t.Errorf("Status = %v %q", st.Code(), st.Message())
	}
}
