package server

import (
	"context"
	"errors"
	"fmt"
	"sort"
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

// Authority lifecycle steps an operator takes (issue 13): taint and
// revoke. Taint marks an authority compromised: the server holding an
// active intermediate stops signing with it and activates a successor at
// once (see rotateIntermediate), agents learn of it with its CRL resource
// and re-issue every SVID chained to it, spread by jitter and the servers'
// admission limits. Revoke, refused while certificates that were not
// re-issued still chain to it, marks it REVOKED: its CRL is no longer
// pushed or served, and its serial is listed in its parent's CRL.

// Safety and progress figures of authority show.
const (
	// maxPendingNodes bounds the nodes a progress report or refusal names.
	maxPendingNodes = 20
	// rootWarning is how long before a root's expiry show warns.
	rootWarning = 365 * 24 * time.Hour
)

// chainStats are the ledger's figures of one authority.
type chainStats struct {
	live, pending int
	nodes         []string // of the pending certificates, sorted
}

// authorityStats counts the live certificates an authority signed and,
// of those, the ones not re-issued under another usable authority for the
// same SPIFFE ID and node since.
//
// A root's figures are those of the intermediates it signed (issue 13
// roots): what chains to it chains through them.
func authorityStats(r *raftfsm.Reader, id string, now time.Time) chainStats {
	var st chainStats
	nodes := map[string]bool{}
	bad := func(a *raftpb.Authority) bool {
		return a == nil || a.State == raftpb.AuthorityState_TAINTED || a.State == raftpb.AuthorityState_REVOKED
	}
	usable := func(issuer string) bool {
		a := r.Authority(issuer)
		return !bad(a) && (a.ParentId == "" || !bad(r.Authority(a.ParentId)))
	}
	issuers := []string{id}
	if a := r.Authority(id); a != nil && a.Kind == raftpb.AuthorityKind_ROOT {
		issuers = rootChildren(r, id)
	}
	mine := map[string]bool{}
	for _, i := range issuers {
		mine[i] = true
	}
	for _, issuer := range issuers {
		for _, rec := range r.LedgerByIssuer(issuer) {
			if rec.NotAfterUnix <= now.Unix() || r.Revoked(issuer, rec.Serial) {
				continue
			}
			st.live++
			superseded := false
			for _, o := range r.LedgerBySPIFFEID(rec.SpiffeId) {
				if o.NodeId == rec.NodeId && !mine[o.IssuerId] && o.NotBeforeUnix >= rec.NotBeforeUnix && o.NotAfterUnix > now.Unix() &&
					!r.Revoked(o.IssuerId, o.Serial) && usable(o.IssuerId) {
					superseded = true
					break
				}
			}
			if !superseded {
				st.pending++
				nodes[rec.NodeId] = true
			}
		}
	}
	for n := range nodes {
		st.nodes = append(st.nodes, n)
	}
	sort.Strings(st.nodes)
	return st
}

// describeAuthority fills in the figures and next step of an authority.
func describeAuthority(r *raftfsm.Reader, a *raftpb.Authority, out *operatorpb.Authority, now time.Time) {
	st := authorityStats(r, a.Id, now)
	out.LiveCertificates, out.PendingCertificates, out.PendingNodeCount = int64(st.live), int64(st.pending), int64(len(st.nodes))
	out.PendingNodes = st.nodes[:min(len(st.nodes), maxPendingNodes)]
	at := func(u int64) string { return time.Unix(u, 0).UTC().Format(time.RFC3339) }
	switch a.State {
	case raftpb.AuthorityState_PREPARED:
		out.NextStep = "activated by its server on schedule"
		switch {
		case a.Kind == raftpb.AuthorityKind_INTERMEDIATE:
			out.NextStep = "activated by " + a.ServerId + " on schedule (publishing its CRL first)"
		case r.CRL(a.Id) == nil:
			out.NextStep = "in every trust bundle, signing nothing; its CRL is being published, then activate it (meshca authority activate " + a.Id + ")"
		default:
			out.NextStep = "in every trust bundle, signing nothing: activate it (meshca authority activate " + a.Id + ")"
		}
	case raftpb.AuthorityState_ACTIVE:
		switch {
		case out.PrepareAtUnix > now.Unix():
			out.NextStep = "successor prepared at " + at(out.PrepareAtUnix)
		case out.ActivateAtUnix > now.Unix():
			out.NextStep = "successor activated at " + at(out.ActivateAtUnix)
		case a.Kind == raftpb.AuthorityKind_ROOT:
			out.NextStep = "signs until " + at(a.NotAfterUnix)
		default:
			out.NextStep = "successor due now"
		}
		if a.Kind == raftpb.AuthorityKind_ROOT && time.Unix(a.NotAfterUnix, 0).Sub(now) < rootWarning {
			out.Warning = fmt.Sprintf("the root expires in %d days, on %s: plan its rotation", int(time.Unix(a.NotAfterUnix, 0).Sub(now).Hours()/24), at(a.NotAfterUnix))
		}
	case raftpb.AuthorityState_OLD:
		out.NextStep = "kept until it expires at " + at(a.NotAfterUnix) + ", then pruned"
		if a.Kind == raftpb.AuthorityKind_ROOT {
			out.NextStep = fmt.Sprintf("in every trust bundle until it expires at %s; %d live certificate(s) chain to it: to retire it, meshca authority taint %s, then revoke",
				at(a.NotAfterUnix), st.live, a.Id)
		}
	case raftpb.AuthorityState_TAINTED:
		if st.pending > 0 {
			out.NextStep = fmt.Sprintf("re-issuing: %d of %d re-issued, %d nodes pending", st.live-st.pending, st.live, len(st.nodes))
		} else {
			out.NextStep = "every certificate re-issued: revoke it (meshca authority revoke " + a.Id + ")"
		}
	case raftpb.AuthorityState_REVOKED:
		out.NextStep = "listed in its parent's CRL; pruned after it expires at " + at(a.NotAfterUnix)
		if a.Kind == raftpb.AuthorityKind_ROOT {
			out.NextStep = "removed from every trust bundle, with the intermediates it signed"
		}
	}
}

func (o *operatorService) authorityOf(ctx context.Context, id string) (*raftfsm.Reader, *raftpb.Authority, error) {
	if id == "" {
		return nil, nil, status.Error(codes.InvalidArgument, "which authority? (an ID of meshca authority show)")
	}
	if strings.HasPrefix(id, "jwt/") {
		return nil, nil, status.Error(codes.FailedPrecondition, "JWT signing keys are prepared and activated by the leader on schedule; taint one to replace it at once (meshca authority taint "+id+")")
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	a := r.Authority(id)
	if a == nil {
		return nil, nil, status.Errorf(codes.NotFound, "no authority %q", id)
	}
	return r, a, nil
}

func (o *operatorService) authorityReport(r *raftfsm.Reader, a *raftpb.Authority) *operatorpb.Authority {
	out := toOperatorAuthority(a)
	describeAuthority(r, a, out, o.s.cfg.Clock.Now())
	return out
}

// TaintAuthority marks an authority compromised.
func (o *operatorService) TaintAuthority(ctx context.Context, req *operatorpb.AuthorityStepRequest) (*operatorpb.AuthorityStepResponse, error) {
	if kid, ok := jwtKid(req.Id); ok {
		return o.taintJWT(ctx, req, kid)
	}
	r, a, err := o.authorityOf(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	switch {
	case a.State == raftpb.AuthorityState_TAINTED:
	case a.Kind == raftpb.AuthorityKind_ROOT && a.State == raftpb.AuthorityState_ACTIVE:
		return nil, o.refuse(ctx, "authority.taint", a.Id, codes.FailedPrecondition,
			"%s is the active %s root: a root can be tainted only once a successor is active (meshca authority prepare %s, then activate)", a.Id, a.Profile, a.Id)
	case a.State != raftpb.AuthorityState_ACTIVE && a.State != raftpb.AuthorityState_OLD:
		return nil, o.refuse(ctx, "authority.taint", a.Id, codes.FailedPrecondition, "%s is %s: only an active or old authority can be tainted", a.Id, a.State)
	}
	resp := &operatorpb.AuthorityStepResponse{DryRun: req.DryRun}
	if req.DryRun {
		resp.Authority = o.authorityReport(r, a)
		resp.Authority.StateName, resp.Authority.State = raftpb.AuthorityState_TAINTED.String(), int32(raftpb.AuthorityState_TAINTED)
		return resp, nil
	}
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_TaintAuthority{TaintAuthority: &raftpb.TaintAuthority{Id: a.Id}}}); err != nil {
		o.s.auditOp(ctx, "authority.taint", a.Id, audit.Deny, err.Error(), nil)
		return nil, fsmStatus(err)
	}
	o.s.auditOp(ctx, "authority.taint", a.Id, audit.Allow, "", map[string]string{"kind": a.Kind.String(), "profile": a.Profile, "server": a.ServerId})
	if err := o.s.node.ReadIndex(ctx); err == nil { // report the state this server applied
		r = o.s.fsm.Read()
		if cur := r.Authority(a.Id); cur != nil {
			a = cur
		}
	}
	resp.Authority = o.authorityReport(r, a)
	return resp, nil
}

// RevokeAuthority revokes a tainted authority once nothing that was not
// re-issued chains to it (or with force).
func (o *operatorService) RevokeAuthority(ctx context.Context, req *operatorpb.AuthorityStepRequest) (*operatorpb.AuthorityStepResponse, error) {
	if kid, ok := jwtKid(req.Id); ok {
		return o.revokeJWT(ctx, req, kid)
	}
	r, a, err := o.authorityOf(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	switch a.State {
	case raftpb.AuthorityState_REVOKED, raftpb.AuthorityState_TAINTED:
	default:
		return nil, o.refuse(ctx, "authority.revoke", a.Id, codes.FailedPrecondition, "%s is %s: only a tainted authority can be revoked (meshca authority taint %s first)", a.Id, a.State, a.Id)
	}
	now := o.s.cfg.Clock.Now()
	st := authorityStats(r, a.Id, now)
	if st.pending > 0 && !req.Force {
		nodes := st.nodes[:min(len(st.nodes), maxPendingNodes)]
		more := ""
		if len(st.nodes) > len(nodes) {
			more = fmt.Sprintf(" and %d more", len(st.nodes)-len(nodes))
		}
		return nil, o.refuse(ctx, "authority.revoke", a.Id, codes.FailedPrecondition,
			"%d unexpired certificate(s) not re-issued yet still chain to %s, held by %d node(s): %s%s; wait for the re-issue (meshca authority show --watch) or pass --force",
			st.pending, a.Id, len(st.nodes), strings.Join(nodes, ", "), more)
	}
	resp := &operatorpb.AuthorityStepResponse{DryRun: req.DryRun}
	if req.DryRun || a.State == raftpb.AuthorityState_REVOKED {
		resp.Authority = o.authorityReport(r, a)
		if req.DryRun {
			resp.Authority.StateName, resp.Authority.State = raftpb.AuthorityState_REVOKED.String(), int32(raftpb.AuthorityState_REVOKED)
		}
		return resp, nil
	}
	op := &raftpb.RevokeAuthority{Id: a.Id}
	if a.ParentId != "" {
		if p, err := ca.ProfileByName(a.Profile); err == nil {
			if c, err := p.ParseCertificate(a.Certificate); err == nil {
				op.Revocation = &raftpb.Revocation{IssuerId: a.ParentId, Serial: c.SerialNumber.Bytes(), RevokedUnixNano: now.UnixNano(),
					Reason: 2 /* cACompromise */, NotAfterUnix: a.NotAfterUnix}
			}
		}
	}
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_RevokeAuthority{RevokeAuthority: op}}); err != nil {
		o.s.auditOp(ctx, "authority.revoke", a.Id, audit.Deny, err.Error(), nil)
		return nil, fsmStatus(err)
	}
	o.s.auditOp(ctx, "authority.revoke", a.Id, audit.Allow, "", map[string]string{"forced": fmt.Sprint(req.Force), "pending": fmt.Sprint(st.pending)})
	if err := o.s.node.ReadIndex(ctx); err == nil { // report the state this server applied
		r = o.s.fsm.Read()
		if cur := r.Authority(a.Id); cur != nil {
			a = cur
		}
	}
	resp.Authority = o.authorityReport(r, a)
	return resp, nil
}

// refuse audits a refusal and returns it as a status error.
func (o *operatorService) refuse(ctx context.Context, action, subject string, code codes.Code, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	o.s.auditOp(ctx, action, subject, audit.Deny, msg, nil)
	return status.Error(code, msg)
}

// PrepareAuthority asks the server holding an active intermediate to
// prepare its successor now, or makes the successor of an active root.
func (o *operatorService) PrepareAuthority(ctx context.Context, req *operatorpb.AuthorityStepRequest) (*operatorpb.AuthorityStepResponse, error) {
	return o.requestStep(ctx, req, raftfsm.StepPrepare)
}

// ActivateAuthority asks the server holding a prepared intermediate to
// activate it now (publishing its CRL first), or activates a prepared root.
func (o *operatorService) ActivateAuthority(ctx context.Context, req *operatorpb.AuthorityStepRequest) (*operatorpb.AuthorityStepResponse, error) {
	return o.requestStep(ctx, req, raftfsm.StepActivate)
}

func (o *operatorService) requestStep(ctx context.Context, req *operatorpb.AuthorityStepRequest, step string) (*operatorpb.AuthorityStepResponse, error) {
	r, a, err := o.authorityOf(ctx, req.Id)
	if err != nil {
		return nil, err
	}
	if a.Kind == raftpb.AuthorityKind_ROOT { // issue 13 roots
		if step == raftfsm.StepPrepare {
			return o.prepareRoot(ctx, req, r, a)
		}
		return o.activateRoot(ctx, req, r, a)
	}
	resp := &operatorpb.AuthorityStepResponse{DryRun: req.DryRun}
	cmd := &raftpb.Command{Op: &raftpb.Command_RequestAuthorityStep{RequestAuthorityStep: &raftpb.RequestAuthorityStep{Id: a.Id, Step: step}}}
	if req.DryRun {
		// Decided as the state machine would, on this read.
		if err := o.s.fsm.CheckCommand(cmd); err != nil {
			return nil, o.refuse(ctx, "authority."+step, a.Id, codes.FailedPrecondition, "%s", err.(*raftfsm.Error).Msg)
		}
		resp.Authority = o.authorityReport(r, a)
		return resp, nil
	}
	if _, err := o.s.node.Apply(ctx, cmd); err != nil {
		var fe *raftfsm.Error
		if errors.As(err, &fe) {
			code := codes.FailedPrecondition
			if errors.Is(err, raftfsm.ErrAlreadyExists) {
				code = codes.AlreadyExists
			}
			return nil, o.refuse(ctx, "authority."+step, a.Id, code, "%s", fe.Msg)
		}
		return nil, fmt.Errorf("%s %s: %w", step, a.Id, err)
	}
	o.s.auditOp(ctx, "authority."+step, a.Id, audit.Allow, "", map[string]string{"server": a.ServerId, "profile": a.Profile})
	if err := o.s.node.ReadIndex(ctx); err == nil {
		r = o.s.fsm.Read()
		if cur := r.Authority(a.Id); cur != nil {
			a = cur
		}
	}
	resp.Authority = o.authorityReport(r, a)
	resp.Authority.NextStep = step + " requested of " + a.ServerId + "; it takes it within moments"
	return resp, nil
}
