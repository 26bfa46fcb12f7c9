package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// JWT signing keys an operator taints and revokes (issue 13): "jwt/<kid>"
// in meshca authority show. Taint: a successor becomes active at once (the
// prepared key, or a new one), the tainted key signs nothing more but
// stays in every JWT bundle, and agents re-sign the JWT-SVIDs it signed
// (they live DefaultJWTSVIDTTL at most); revoke removes it from every JWT
// bundle, refused (unless forced) until the JWT-SVIDs it signed expired.

func jwtKid(id string) (string, bool) { return strings.CutPrefix(id, "jwt/") }

// jwtKeyByKid returns a JWT key of the state, or nil.
func jwtKeyByKid(r *raftfsm.Reader, kid string) *raftpb.JWTKey {
	for _, k := range r.JWTKeys() {
		if k.Kid == kid {
			return k
		}
	}
	return nil
}

// jwtKeyState is a JWT key's state, with keys written before states ACTIVE.
func jwtKeyState(k *raftpb.JWTKey) raftpb.AuthorityState {
	if raftfsm.JWTKeyActive(k) {
		return raftpb.AuthorityState_ACTIVE
	}
	return k.State
}

// jwtLiveUntil is when the last JWT-SVID a tainted key signed expires.
func jwtLiveUntil(k *raftpb.JWTKey) time.Time {
	return time.Unix(0, k.TaintedUnixNano).Add(DefaultJWTSVIDTTL)
}

// jwtReport is a JWT key as the operator API shows it.
func jwtReport(k *raftpb.JWTKey, now time.Time) *operatorpb.Authority {
	state := jwtKeyState(k)
	out := &operatorpb.Authority{Id: "jwt/" + k.Kid, Kind: "jwt", Profile: ca.ProfileECDSA, State: int32(state), StateName: state.String(),
		NotBeforeUnix: k.CreatedUnix, NotAfterUnix: k.NotAfterUnix}
	at := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	switch state {
	case raftpb.AuthorityState_ACTIVE:
		sched := ca.ScheduleOf(time.Unix(k.CreatedUnix, 0), time.Unix(k.NotAfterUnix, 0))
		out.PrepareAtUnix, out.ActivateAtUnix = sched.PrepareAt.Unix(), sched.ActivateAt.Unix()
	case raftpb.AuthorityState_PREPARED:
		out.NextStep = "in every JWT bundle; activated by the leader on schedule"
	case raftpb.AuthorityState_OLD:
		out.NextStep = "in every JWT bundle until it expires at " + at(time.Unix(k.NotAfterUnix, 0))
	case raftpb.AuthorityState_TAINTED:
		if until := jwtLiveUntil(k); now.Before(until) {
			out.NextStep = "signs nothing; agents re-sign what it signed; the JWT-SVIDs it signed expire by " + at(until) + ", then revoke it"
		} else {
			out.NextStep = "every JWT-SVID it signed has expired: revoke it (meshca authority revoke jwt/" + k.Kid + ")"
		}
	case raftpb.AuthorityState_REVOKED:
		out.NextStep = "removed from every JWT bundle"
	}
	return out
}

// jwtRead reads a JWT key at a linearizable point.
func (o *operatorService) jwtRead(ctx context.Context, kid string) (*raftpb.JWTKey, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	k := jwtKeyByKid(o.s.fsm.Read(), kid)
	if k == nil {
		return nil, status.Errorf(codes.NotFound, "no JWT key %q", kid)
	}
	return k, nil
}

// taintJWT taints a JWT key.
func (o *operatorService) taintJWT(ctx context.Context, req *operatorpb.AuthorityStepRequest, kid string) (*operatorpb.AuthorityStepResponse, error) {
	const action = "authority.taint"
	k, err := o.jwtRead(ctx, kid)
	if err != nil {
		return nil, err
	}
	now := o.s.cfg.Clock.Now()
	resp := &operatorpb.AuthorityStepResponse{DryRun: req.DryRun}
	op := &raftpb.TaintJWTKey{Kid: kid}
	if jwtKeyState(k) == raftpb.AuthorityState_ACTIVE {
		if op.Successor, err = newJWTKey(o.s.cfg.KEK, now, raftpb.AuthorityState_ACTIVE); err != nil {
			return nil, fmt.Errorf("taint %s: %w", req.Id, err)
		}
	}
	cmd := &raftpb.Command{Op: &raftpb.Command_TaintJwtKey{TaintJwtKey: op}}
	if req.DryRun {
		if err := o.s.fsm.CheckCommand(cmd); err != nil {
			return nil, o.refuseFSM(ctx, action, req.Id, err)
		}
		resp.Authority = jwtReport(k, now)
		resp.Authority.StateName, resp.Authority.State = raftpb.AuthorityState_TAINTED.String(), int32(raftpb.AuthorityState_TAINTED)
		return resp, nil
	}
	if _, err := o.s.node.Apply(ctx, cmd); err != nil {
		return nil, o.refuseFSM(ctx, action, req.Id, err)
	}
	o.s.auditOp(ctx, action, req.Id, audit.Allow, "", map[string]string{"kind": "jwt"})
	if cur, err := o.jwtRead(ctx, kid); err == nil {
		k = cur
	}
	resp.Authority = jwtReport(k, now)
	return resp, nil
}

// revokeJWT revokes a tainted JWT key once the JWT-SVIDs it signed have
// expired (or with force).
func (o *operatorService) revokeJWT(ctx context.Context, req *operatorpb.AuthorityStepRequest, kid string) (*operatorpb.AuthorityStepResponse, error) {
	const action = "authority.revoke"
	k, err := o.jwtRead(ctx, kid)
	if err != nil {
		return nil, err
	}
	now := o.s.cfg.Clock.Now()
	switch state := jwtKeyState(k); {
	case state == raftpb.AuthorityState_REVOKED:
	case state != raftpb.AuthorityState_TAINTED:
		return nil, o.refuse(ctx, action, req.Id, codes.FailedPrecondition, "%s is %s: only a tainted JWT key can be revoked (meshca authority taint %s first)", req.Id, state, req.Id)
	case now.Before(jwtLiveUntil(k)) && !req.Force:
		return nil, o.refuse(ctx, action, req.Id, codes.FailedPrecondition,
			"JWT-SVIDs %s signed may be in use until %s (they live %s): revoking it now makes them fail validation; wait, or pass --force",
			req.Id, jwtLiveUntil(k).UTC().Format(time.RFC3339), DefaultJWTSVIDTTL)
	}
	resp := &operatorpb.AuthorityStepResponse{DryRun: req.DryRun}
	if req.DryRun || k.State == raftpb.AuthorityState_REVOKED {
		resp.Authority = jwtReport(k, now)
		if req.DryRun {
			resp.Authority.StateName, resp.Authority.State = raftpb.AuthorityState_REVOKED.String(), int32(raftpb.AuthorityState_REVOKED)
		}
		return resp, nil
	}
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_RevokeJwtKey{RevokeJwtKey: &raftpb.RevokeJWTKey{Kid: kid}}}); err != nil {
		return nil, o.refuseFSM(ctx, action, req.Id, err)
	}
	o.s.auditOp(ctx, action, req.Id, audit.Allow, "", map[string]string{"kind": "jwt", "forced": fmt.Sprint(req.Force)})
	if cur, err := o.jwtRead(ctx, kid); err == nil {
		k = cur
	}
	resp.Authority = jwtReport(k, now)
	return resp, nil
}
