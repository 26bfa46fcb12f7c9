package server

import (
	"context"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ListAuthorities lists the roots, the intermediates of every server and
// the JWT keys, with their state and, for active ones, when their
// successors are prepared and activated. It reads at a linearizable point.
func (o *operatorService) ListAuthorities(ctx context.Context, _ *operatorpb.ListAuthoritiesRequest) (*operatorpb.ListAuthoritiesResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	resp := &operatorpb.ListAuthoritiesResponse{}
	for _, a := range r.Authorities() {
		resp.Authorities = append(resp.Authorities, o.authorityReport(r, a))
	}
	now := o.s.cfg.Clock.Now()
	for _, k := range r.JWTKeys() {
		resp.Authorities = append(resp.Authorities, jwtReport(k, now))
	}
	return resp, nil
}

// toOperatorAuthority is an authority record as the operator API shows it,
// with its successor's schedule for an active intermediate.
func toOperatorAuthority(a *raftpb.Authority) *operatorpb.Authority {
	out := &operatorpb.Authority{Id: a.Id, Profile: a.Profile, State: int32(a.State), StateName: a.State.String(),
		ServerId: a.ServerId, NotAfterUnix: a.NotAfterUnix, Kind: "intermediate", Certificate: a.Certificate, ParentId: a.ParentId}
	if a.Kind == raftpb.AuthorityKind_ROOT {
		out.Kind = "root"
	}
	if p, err := ca.ProfileByName(a.Profile); err == nil {
		if c, err := p.ParseCertificate(a.Certificate); err == nil {
			out.NotBeforeUnix = c.NotBefore.Unix()
			if a.State == raftpb.AuthorityState_ACTIVE && a.Kind == raftpb.AuthorityKind_INTERMEDIATE {
				v := ca.ValidityOf(c)
				sched := ca.ScheduleOf(v.NotBefore, v.NotAfter)
				out.PrepareAtUnix, out.ActivateAtUnix = sched.PrepareAt.Unix(), sched.ActivateAt.Unix()
			}
		}
	}
	return out
}
