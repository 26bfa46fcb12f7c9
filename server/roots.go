package server

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"google.golang.org/grpc/codes"
)

// Root rotation (issue 13 roots), per profile, through Raft.
//
//   - prepare: the server an operator asks makes the next root (its key
//     sealed under the cluster's KEK, as the active root's) and records it
//     PREPARED. At once every server trusts it (peerRoots); the leader
//     publishes its CRL, and with it the root joins the agents' trust
//     bundle (Sync), so every SDS validation context and Workload API
//     bundle (bundleRoots). It signs nothing yet.
//   - activate: refused until its CRL is published; it becomes ACTIVE and
//     the previous root OLD. Every server then replaces its intermediate
//     with one the new root certifies (prepared, its CRL published, then
//     activated, as a scheduled rotation does), so new leaves chain to the
//     new root while old ones, chained to the OLD root that is still in
//     every bundle, verify until they are re-issued or expire.
//   - taint (the old root): the intermediates it signed are tainted with
//     it, so agents re-issue every SVID chained to it, spread by their
//     jitter and the servers' admission limits.
//   - revoke: refused (unless forced) while unexpired certificates chain to
//     it; it and its intermediates leave every bundle and CRL push.
//
// No cross-signing. The new root is distributed in every bundle before it
// signs anything, so every relying party in the mesh trusts both roots for
// as long as both sign live certificates: every meshca relying party (agent,
// proxy over SDS, workload over the Workload API, server) gets its roots
// from the replicated bundle, none pins a single root. A cross-signed
// certificate would add a second chain for every leaf, which go-spiffe's
// x509svid.Verify (it takes the chain the peer sent, leaf then
// intermediates) and Envoy's validation would have to be handed
// explicitly, and it would make old-root chains one CA longer than the
// roots' path-length limit (1) allows.

// liveRoot reports whether a root is in the trust bundle: every state but
// REVOKED.
func liveRoot(a *raftpb.Authority) bool {
	return a.Kind == raftpb.AuthorityKind_ROOT && a.State != raftpb.AuthorityState_REVOKED &&
		a.State != raftpb.AuthorityState_AUTHORITY_STATE_UNSPECIFIED
}

// trustedRoots returns the roots of a profile that the trust bundle holds
// (all profiles when profile is ""), by profile and ID.
func trustedRoots(r *raftfsm.Reader, profile string) []*raftpb.Authority {
	var out []*raftpb.Authority
	for _, a := range r.Authorities() {
		if liveRoot(a) && (profile == "" || a.Profile == profile) {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Profile != out[j].Profile {
			return out[i].Profile < out[j].Profile
		}
		return out[i].Id < out[j].Id
	})
	return out
}

// bundleRoots returns the roots of a profile the trust bundle agents get
// holds (all profiles when profile is ""): trustedRoots, but a prepared
// root only once its CRL is published. A validation context with the CRLs
// of some roots but not of all carries no CRLs at all (see the agent's
// validationParams), so the root arrives together with its CRL.
func bundleRoots(r *raftfsm.Reader, profile string) []*raftpb.Authority {
	var out []*raftpb.Authority
	for _, a := range trustedRoots(r, profile) {
		if a.State != raftpb.AuthorityState_PREPARED || r.CRL(a.Id) != nil {
			out = append(out, a)
		}
	}
	return out
}

// rootOf returns a profile's root in state, or nil.
func rootOf(r *raftfsm.Reader, profile string, state raftpb.AuthorityState) *raftpb.Authority {
	for _, a := range r.Authorities() {
		if a.Kind == raftpb.AuthorityKind_ROOT && a.Profile == profile && a.State == state {
			return a
		}
	}
	return nil
}

// openRoot opens a root record's sealed key as an authority.
func (s *Server) openRoot(rec *raftpb.Authority) (*ca.Authority, crypto.Signer, error) {
	p, err := ca.ProfileByName(rec.Profile)
	if err != nil {
		return nil, nil, err
	}
	var sk ca.SealedKey
	if err := json.Unmarshal(rec.SealedKey, &sk); err != nil {
		return nil, nil, fmt.Errorf("root %s: sealed key: %w", rec.Id, err)
	}
	key, err := sk.Open(s.cfg.KEK)
	if err != nil {
		return nil, nil, fmt.Errorf("root %s: %w", rec.Id, err)
	}
	cert, err := p.ParseCertificate(rec.Certificate)
	if err != nil {
		return nil, nil, fmt.Errorf("root %s: %w", rec.Id, err)
	}
	a, err := ca.NewAuthority(ca.AuthorityConfig{Profile: p, TrustDomain: s.td, Certificate: cert, Signer: key, Clock: s.cfg.Clock})
	if err != nil {
		return nil, nil, fmt.Errorf("root %s: %w", rec.Id, err)
	}
	return a, key, nil
}

// peerRootsLocked returns the ECDSA roots the server trusts for TLS: the
// replicated bundle's, the ones it kept from it (a restarted server trusts
// them before its state is replayed) and its own. It holds s.mu.
func (s *Server) peerRootsLocked() []*x509.Certificate {
	ders := append([][]byte{s.id.Roots[ca.ProfileECDSA]}, s.id.PeerRoots...)
	if s.fsm != nil {
		for _, a := range trustedRoots(s.fsm.Read(), ca.ProfileECDSA) {
			ders = append(ders, a.Certificate)
		}
	}
	var out []*x509.Certificate
	seen := map[string]bool{}
	for _, der := range ders {
		if len(der) == 0 || seen[string(der)] {
			continue
		}
		seen[string(der)] = true
		if c, err := x509.ParseCertificate(der); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// rootSigned reports whether an intermediate (local) was certified by the
// replicated state's active root of its profile; true when the state has
// none yet (not replayed, or bootstrapping).
func (s *Server) rootSigned(r *raftfsm.Reader, li *localIntermediate, p ca.Profile) bool {
	root := rootOf(r, p.Name(), raftpb.AuthorityState_ACTIVE)
	if root == nil || li == nil || len(li.Certificate) == 0 {
		return true
	}
	rc, err := p.ParseCertificate(root.Certificate)
	if err != nil {
		return true
	}
	c, err := p.ParseCertificate(li.Certificate)
	if err != nil {
		return false
	}
	return ca.CheckSignedBy(c, rc) == nil
}

// usableLocal reports whether a local intermediate may sign (or be
// activated): not tainted or revoked, and certified by the active root.
// It holds s.mu.
func (s *Server) usableLocal(li *localIntermediate, p ca.Profile) bool {
	if li == nil || len(li.Certificate) == 0 || s.fsm == nil {
		return li != nil && len(li.Certificate) > 0
	}
	r := s.fsm.Read()
	c, err := p.ParseCertificate(li.Certificate)
	if err != nil {
		return false
	}
	if a := r.Authority(authorityID(c, raftpb.AuthorityKind_INTERMEDIATE)); a != nil &&
		(a.State == raftpb.AuthorityState_TAINTED || a.State == raftpb.AuthorityState_REVOKED) {
		return false
	}
	return s.rootSigned(r, li, p)
}

// prepareRoot makes and records the successor of an active root.
func (o *operatorService) prepareRoot(ctx context.Context, req *operatorpb.AuthorityStepRequest, r *raftfsm.Reader, a *raftpb.Authority) (*operatorpb.AuthorityStepResponse, error) {
	const action = "authority.prepare"
	switch p := rootOf(r, a.Profile, raftpb.AuthorityState_PREPARED); {
	case a.State == raftpb.AuthorityState_PREPARED:
		return nil, o.refuse(ctx, action, a.Id, codes.FailedPrecondition, "%s is prepared already: activate it (meshca authority activate %s)", a.Id, a.Id)
	case a.State != raftpb.AuthorityState_ACTIVE:
		return nil, o.refuse(ctx, action, a.Id, codes.FailedPrecondition, "%s is %s: name the active %s root whose successor to prepare", a.Id, a.State, a.Profile)
	case p != nil:
		return nil, o.refuse(ctx, action, a.Id, codes.AlreadyExists, "%s is already prepared to succeed %s: activate it (meshca authority activate %s)", p.Id, a.Id, p.Id)
	}
	s := o.s
	now := s.cfg.Clock.Now()
	resp := &operatorpb.AuthorityStepResponse{DryRun: req.DryRun}
	if req.DryRun {
		resp.Authority = o.authorityReport(r, a)
		resp.Successor = &operatorpb.Authority{Kind: "root", Profile: a.Profile, State: int32(raftpb.AuthorityState_PREPARED),
			StateName: raftpb.AuthorityState_PREPARED.String(), NotBeforeUnix: now.Add(-ca.Backdate).Unix(), NotAfterUnix: now.Add(ca.DefaultRootTTL).Unix(),
			NextStep: "would join every trust bundle at once; then activate it"}
		return resp, nil
	}
	p, err := ca.ProfileByName(a.Profile)
	if err != nil {
		return nil, fmt.Errorf("prepare a root: %w", err)
	}
	cert, key, err := ca.NewRoot(ca.CAParams{Profile: p, TrustDomain: s.td, Name: "root " + now.UTC().Format("20060102T150405Z"), Now: now})
	if err != nil {
		return nil, fmt.Errorf("prepare a root: %w", err)
	}
	sealed, err := ca.SealKey(s.cfg.KEK, p, p.Name()+"/root", key)
	if err != nil {
		return nil, fmt.Errorf("prepare a root: %w", err)
	}
	sk, err := json.Marshal(sealed)
	if err != nil {
		return nil, fmt.Errorf("prepare a root: %w", err)
	}
	rec := &raftpb.Authority{Id: authorityID(cert, raftpb.AuthorityKind_ROOT), Profile: p.Name(), Kind: raftpb.AuthorityKind_ROOT,
		State: raftpb.AuthorityState_PREPARED, Certificate: cert.Raw, SealedKey: sk, NotAfterUnix: cert.NotAfter.Unix()}
	if _, err := s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PrepareRoot{PrepareRoot: &raftpb.PrepareRoot{Root: rec, SuccessorOf: a.Id}}}); err != nil {
		return nil, o.refuseFSM(ctx, action, a.Id, err)
	}
	o.s.auditOp(ctx, action, rec.Id, audit.Allow, "", map[string]string{"kind": "root", "profile": rec.Profile, "successor_of": a.Id,
		"not_after": cert.NotAfter.UTC().Format(time.RFC3339)})
	s.Rotate() // the leader publishes its CRL; every server trusts it
	if err := s.node.ReadIndex(ctx); err == nil {
		r = s.fsm.Read()
	}
	resp.Authority = o.authorityReport(r, a)
	if cur := r.Authority(rec.Id); cur != nil {
		rec = cur
	}
	resp.Successor = o.authorityReport(r, rec)
	return resp, nil
}

// activateRoot activates a prepared root, publishing its CRL first if the
// leader has not yet.
func (o *operatorService) activateRoot(ctx context.Context, req *operatorpb.AuthorityStepRequest, r *raftfsm.Reader, a *raftpb.Authority) (*operatorpb.AuthorityStepResponse, error) {
	const action = "authority.activate"
	s := o.s
	cmd := &raftpb.Command{Op: &raftpb.Command_ActivateRoot{ActivateRoot: &raftpb.ActivateRoot{Id: a.Id}}}
	if a.State == raftpb.AuthorityState_PREPARED && r.CRL(a.Id) == nil && !req.DryRun {
		ra, _, err := s.openRoot(a)
		if err != nil {
			return nil, fmt.Errorf("activate %s: %w", a.Id, err)
		}
		if err := s.signCRL(ctx, ra, a.Id, r); err != nil {
			return nil, fmt.Errorf("activate %s: %w", a.Id, err)
		}
		if err := s.node.ReadIndex(ctx); err != nil {
			return nil, fmt.Errorf("activate %s: %w", a.Id, err)
		}
		r = s.fsm.Read()
	}
	resp := &operatorpb.AuthorityStepResponse{DryRun: req.DryRun}
	if req.DryRun {
		if a.State != raftpb.AuthorityState_PREPARED || r.CRL(a.Id) != nil {
			if err := s.fsm.CheckCommand(cmd); err != nil {
				return nil, o.refuseFSM(ctx, action, a.Id, err)
			}
		}
		resp.Authority = o.authorityReport(r, a)
		resp.Authority.StateName, resp.Authority.State = raftpb.AuthorityState_ACTIVE.String(), int32(raftpb.AuthorityState_ACTIVE)
		resp.Authority.NextStep = "would sign from then on: every server would replace its intermediate with one it certifies"
		return resp, nil
	}
	if _, err := s.node.Apply(ctx, cmd); err != nil {
		return nil, o.refuseFSM(ctx, action, a.Id, err)
	}
	o.s.auditOp(ctx, action, a.Id, audit.Allow, "", map[string]string{"kind": "root", "profile": a.Profile})
	if err := s.node.ReadIndex(ctx); err == nil {
		r = s.fsm.Read()
		if cur := r.Authority(a.Id); cur != nil {
			a = cur
		}
	}
	resp.Authority = o.authorityReport(r, a)
	return resp, nil
}

// refuseFSM audits and returns a refusal of the state machine with its
// code, or wraps another failure.
func (o *operatorService) refuseFSM(ctx context.Context, action, subject string, err error) error {
	var fe *raftfsm.Error
	if !errors.As(err, &fe) {
		return fmt.Errorf("%s %s: %w", action, subject, err)
	}
	code := codes.FailedPrecondition
	switch {
	case errors.Is(err, raftfsm.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, raftfsm.ErrNotFound):
		code = codes.NotFound
	}
	return o.refuse(ctx, action, subject, code, "%s", fe.Msg)
}

// rootChildren returns the IDs of the intermediates a root signed.
func rootChildren(r *raftfsm.Reader, rootID string) []string {
	var out []string
	for _, a := range r.Authorities() {
		if a.Kind == raftpb.AuthorityKind_INTERMEDIATE && a.ParentId == rootID {
			out = append(out, a.Id)
		}
	}
	return out
}
