package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Rotation in a running cluster.
//
// Each server holds its own intermediate per profile, whose key never
// leaves it. On the schedule of ca.PlanRotation (successor prepared at half
// of the active intermediate's life, activated at two thirds) the server
//
//  1. makes a new key and saves it in identity.json,
//  2. has the leader certify it with the active root; the leader records
//     it PREPARED in the replicated state before answering (a server whose
//     intermediate expired while it was down, and so cannot authenticate to
//     its peers, certifies it itself with the roots it keeps),
//  3. at activation time switches its issuers to it in one atomic step,
//     renews its TLS certificate from it, and records the switch through
//     Raft (the previous intermediate becomes OLD); the old one is kept
//     until it expires, because the SVIDs it signed are still in use.
//
// The trust bundle agents see does not change: it holds roots only. Every
// step is saved before the next one and repeated until the replicated state
// agrees, so leader changes, restarts and long outages are resumed from
// where they stopped. The leader rotates the cluster's JWT signing keys on
// the same schedule.

// Rotation timing that is not a lifetime: how often the loop re-checks
// (leadership moves, records not yet replicated) and how long one call to
// the leader may take.
const (
	rotationReconcileInterval = 10 * time.Second
	rotationCallTimeout       = 30 * time.Second
)

// rotateLoop keeps this server's intermediates and TLS certificate, and on
// the leader the JWT keys, on schedule, until ctx ends. Due times are read
// from the clock; retries after failures and the periodic re-check are
// alarm.Retry waits.
func (s *Server) rotateLoop(ctx context.Context) error {
	retry := time.Second
	for {
		lead, roots, inters := s.node.LeaderChanges(), s.fsm.Watch(raftfsm.ScopeBundle), s.fsm.Watch(raftfsm.ScopeIntermediates)
		revoked := s.fsm.Watch(raftfsm.ScopeRevocations)
		next, err := s.rotate(ctx)
		if ctx.Err() != nil {
			return nil
		}
		// A failed step is retried with backoff; the periodic re-check
		// catches what no watch reported.
		again := alarm.Retry(s.cfg.Clock, rotationReconcileInterval)
		if err != nil {
			s.log.Warn("rotation step failed; retrying", "err", err, "retry_in", retry)
			again.Stop()
			again = alarm.Retry(s.cfg.Clock, min(retry, rotationReconcileInterval))
			retry = min(2*retry, time.Minute)
		} else {
			retry = time.Second
		}
		if err != nil {
			// Not before the retry: a failed step is due again at once.
			if soon := s.cfg.Clock.Now().Add(time.Millisecond); next.Before(soon) {
				next = soon
			}
		}
		al := alarm.At(s.cfg.Clock, next)
		select {
		case <-ctx.Done():
			al.Stop()
			again.Stop()
			return nil
		case <-al.C():
		case <-again.C():
		case <-s.rotated:
		case <-lead: // a new leader signs the roots' CRLs, rotates JWT keys
		case <-roots: // bootstrapped, or a root changed
		case <-inters: // a server joined, an intermediate changed
		case <-revoked: // the CRLs of the revoking issuers are signed again
		}
		al.Stop()
		again.Stop()
	}
}

// rotate runs every rotation step that is due and returns when the next
// one falls due.
func (s *Server) rotate(ctx context.Context) (time.Time, error) {
	next := s.cfg.Clock.Now().Add(24 * time.Hour)
	earlier := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}
	var errs []error
	// First: the roots decide which intermediates are usable (issue 13 roots).
	if err := s.syncRoots(); err != nil {
		errs = append(errs, err)
	}
	for _, p := range ca.Profiles() {
		n, err := s.rotateIntermediate(ctx, p, false)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s intermediate: %w", p.Name(), err))
		}
		earlier(n)
	}
	n, err := s.refreshCertificate(false)
	if err != nil {
		errs = append(errs, fmt.Errorf("server certificate: %w", err))
	}
	earlier(n)
	if err := s.syncIntermediateRecords(ctx); err != nil {
		errs = append(errs, fmt.Errorf("record intermediates: %w", err))
	}
	if n, err := s.publishCRLs(ctx); err != nil {
		errs = append(errs, fmt.Errorf("CRLs: %w", err))
	} else {
		earlier(n)
	}
	if s.node.IsLeader() {
		n, err := s.rotateJWTKeys(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("JWT keys: %w", err))
		}
		earlier(n)
	}
	return next, errors.Join(errs...)
}

// rotateLocally does, before the server joins its peers, the rotation steps
// that need no cluster: activating a successor that is due and, if the
// active intermediate has expired, certifying a new one with the roots.
func (s *Server) rotateLocally() error {
	for _, p := range ca.Profiles() {
		if _, err := s.rotateIntermediate(context.Background(), p, true); err != nil {
			return fmt.Errorf("%s intermediate: %w", p.Name(), err)
		}
	}
	return nil
}

// rotateIntermediate runs the due steps of one profile's intermediate (a
// long outage can make several due at once). With localOnly, a preparation
// is done only if the active intermediate has expired (certified locally);
// otherwise it waits for the cluster.
func (s *Server) rotateIntermediate(ctx context.Context, p ca.Profile, localOnly bool) (time.Time, error) {
	for range 4 {
		now := s.cfg.Clock.Now()
		s.mu.Lock()
		active := validity(s.id.Intermediates[p.Name()], p.Name())
		step, next := ca.PlanRotation(now, active, validity(s.id.Prepared[p.Name()], p.Name()))
		prepared := s.id.Prepared[p.Name()] != nil && len(s.id.Prepared[p.Name()].Certificate) > 0
		var activeOK, preparedOK bool
		if !localOnly {
			// Usable: not tainted or revoked, and certified by the active
			// root (issue 13 roots: after a root's activation every server
			// replaces an intermediate the previous root certified).
			activeOK = s.usableLocal(s.id.Intermediates[p.Name()], p)
			preparedOK = prepared && s.usableLocal(s.id.Prepared[p.Name()], p)
		}
		switch {
		case localOnly:
		case !activeOK:
			// An operator tainted it, or its root is no longer active:
			// replace it now (issue 13).
			step, next = ca.StepPrepare, now
			if preparedOK {
				step = ca.StepActivate
			}
		case step == ca.StepActivate && !preparedOK:
			// Prepared under a root that is no longer active (or tainted
			// with it): prepare another.
			step, next = ca.StepPrepare, now
		case step == ca.StepNone:
			// An operator asked for a step ahead of the schedule.
			switch {
			case !preparedOK && s.requested(s.id.Intermediates[p.Name()], p, raftpb.AuthorityState_ACTIVE) == raftfsm.StepPrepare:
				step, next = ca.StepPrepare, now
			case preparedOK && s.requested(s.id.Prepared[p.Name()], p, raftpb.AuthorityState_PREPARED) == raftfsm.StepActivate:
				step, next = ca.StepActivate, now
			}
		}
		s.mu.Unlock()
		expired := active.IsZero() || !now.Before(active.NotAfter)
		switch {
		case step == ca.StepNone:
			return next, nil
		case step == ca.StepActivate:
			if !localOnly && !expired {
				// Sign with it only once proxies can check its chain.
				if err := s.publishPreparedCRL(ctx, p.Name()); err != nil {
					return time.Time{}, fmt.Errorf("before activation: %w", err)
				}
			}
			if err := s.activateIntermediate(p.Name()); err != nil {
				return time.Time{}, err
			}
		case localOnly && !expired:
			return now, nil
		default:
			if err := s.prepareIntermediate(ctx, p, expired); err != nil {
				return time.Time{}, err
			}
		}
	}
	return time.Time{}, errors.New("rotation did not settle")
}

// requested returns the step an operator requested of a local
// intermediate whose record is in state, or "". It holds s.mu.
func (s *Server) requested(li *localIntermediate, p ca.Profile, state raftpb.AuthorityState) string {
	if li == nil || s.fsm == nil {
		return ""
	}
	c, err := p.ParseCertificate(li.Certificate)
	if err != nil {
		return ""
	}
	a := s.fsm.Read().Authority(authorityID(c, raftpb.AuthorityKind_INTERMEDIATE))
	if a == nil || a.State != state {
		return ""
	}
	return a.RequestedStep
}

// prepareIntermediate makes the successor of a profile's intermediate: a
// new key, saved first, then certified (by the leader, or with the roots
// this server keeps when local is set) and saved with its certificate.
func (s *Server) prepareIntermediate(ctx context.Context, p ca.Profile, local bool) error {
	s.mu.Lock()
	pending := s.id.Prepared[p.Name()]
	if pending == nil || len(pending.Certificate) > 0 { // none, or one that expired unused or is no longer usable
		if v := validity(pending, p.Name()); !v.IsZero() && s.cfg.Clock.Now().Before(v.NotAfter) {
			// Certified by a root that is no longer active: kept with the
			// old ones until it expires, so that its CRL stays current.
			s.id.Old[p.Name()] = append(s.id.Old[p.Name()], pending)
		}
		key, err := p.GenerateKey()
		if err != nil {
			s.mu.Unlock()
			return err
		}
		sealed, err := ca.SealKey(s.cfg.KEK, p, p.Name()+"/intermediate", key)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		pending = &localIntermediate{Key: sealed}
		s.id.Prepared[p.Name()] = pending
		if err := s.id.save(s.cfg.DataDir); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.mu.Unlock()

	key, err := pending.Key.Open(s.cfg.KEK)
	if err != nil {
		return err
	}
	csr, err := p.CreateCSR(key)
	if err != nil {
		return err
	}
	var der []byte
	if local {
		der, err = s.certifyLocally(p, csr)
	} else {
		der, err = s.certifyThroughCluster(ctx, p.Name(), csr)
	}
	if err != nil {
		return err
	}
	cert, err := p.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("the new intermediate: %w", err)
	}
	if _, err := ca.NewAuthority(ca.AuthorityConfig{Profile: p, TrustDomain: s.td, Certificate: cert, Signer: key}); err != nil {
		return fmt.Errorf("the new intermediate: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	root, err := p.ParseCertificate(s.id.Roots[p.Name()])
	if err != nil {
		return err
	}
	if err := ca.CheckSignedBy(cert, root); err != nil {
		return fmt.Errorf("the new intermediate is not signed by the %s root: %w", p.Name(), err)
	}
	if s.id.Prepared[p.Name()] != pending {
		return errors.New("the prepared intermediate changed meanwhile")
	}
	s.id.Prepared[p.Name()] = &localIntermediate{Certificate: der, Key: pending.Key}
	if err := s.id.save(s.cfg.DataDir); err != nil {
		return err
	}
	s.events.Record(audit.Event{Action: "intermediate.prepare", Subject: authorityID(cert, raftpb.AuthorityKind_INTERMEDIATE), Decision: audit.Info,
		Details: map[string]string{"profile": p.Name(), "not_after": cert.NotAfter.UTC().Format(time.RFC3339),
			"certified_by": map[bool]string{true: "local roots", false: "leader"}[local]}})
	return nil
}

// publishPreparedCRL makes sure the replicated state holds the prepared
// intermediate of a profile and a CRL of it before it is activated: a
// server refuses to sign with an intermediate whose CRL is not published
// (see issuer.hasCRL), so activating first would refuse issuance until
// the next CRL round.
func (s *Server) publishPreparedCRL(ctx context.Context, profile string) error {
	s.mu.Lock()
	a, err := s.id.openIntermediate(s.id.Prepared[profile], profile, s.cfg.KEK, s.cfg.Clock)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("the prepared intermediate: %w", err)
	}
	id := authorityID(a.Certificate(), raftpb.AuthorityKind_INTERMEDIATE)
	if s.fsm.Read().CRL(id) != nil {
		return nil
	}
	if err := s.syncIntermediateRecords(ctx); err != nil {
		return fmt.Errorf("record the prepared intermediate: %w", err)
	}
	if err := s.node.ReadIndex(ctx); err != nil {
		return err
	}
	r := s.fsm.Read()
	if r.CRL(id) != nil {
		return nil
	}
	if r.Authority(id) == nil {
		return fmt.Errorf("the prepared intermediate %s is not recorded yet", id)
	}
	if err := s.signCRL(ctx, a, id, r); err != nil {
		return err
	}
	if err := s.node.ReadIndex(ctx); err != nil {
		return err
	}
	if s.fsm.Read().CRL(id) == nil {
		return fmt.Errorf("the CRL of %s is not published yet", id)
	}
	return nil
}

// activateIntermediate makes the prepared successor of a profile's
// intermediate the one that signs: saved, then installed in one step, then
// the TLS certificate renewed from it. The replicated record follows
// (syncIntermediateRecords).
func (s *Server) activateIntermediate(profile string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	prepared, active := s.id.Prepared[profile], s.id.Intermediates[profile]
	if _, err := s.id.openIntermediate(prepared, profile, s.cfg.KEK, s.cfg.Clock); err != nil {
		return fmt.Errorf("the prepared intermediate: %w", err)
	}
	if active != nil {
		s.id.Old[profile] = append(s.id.Old[profile], active)
	}
	s.id.Intermediates[profile] = prepared
	delete(s.id.Prepared, profile)
	now := s.cfg.Clock.Now()
	for p, olds := range s.id.Old {
		var keep []*localIntermediate
		for _, o := range olds {
			if v := validity(o, p); !v.IsZero() && now.Before(v.NotAfter) {
				keep = append(keep, o)
			}
		}
		s.id.Old[p] = keep
	}
	if err := s.id.save(s.cfg.DataDir); err != nil {
		return err
	}
	if err := s.installIssuersLocked(); err != nil {
		return err
	}
	iss, _ := s.issuer(profile)
	s.events.Record(audit.Event{Action: "intermediate.activate", Subject: iss.id, Decision: audit.Info,
		Details: map[string]string{"profile": profile, "not_after": iss.Certificate().NotAfter.UTC().Format(time.RFC3339)}})
	if profile == ca.ProfileECDSA {
		if _, err := s.refreshCertificateLocked(true); err != nil {
			return err
		}
	}
	return nil
}

// installIssuersLocked opens the active intermediates and installs them as
// the issuers, all at once.
func (s *Server) installIssuersLocked() error {
	set, err := s.id.issuers(s.cfg.KEK, s.cfg.Clock)
	if err != nil {
		return err
	}
	s.issuers.Store(set)
	return nil
}

// certifyLocally certifies a CSR as this server's intermediate with the root
// this server keeps.
func (s *Server) certifyLocally(p ca.Profile, csr []byte) ([]byte, error) {
	s.mu.Lock()
	rootDER, sealed := s.id.Roots[p.Name()], s.id.RootKeys[p.Name()]
	s.mu.Unlock()
	if sealed == nil {
		return nil, fmt.Errorf("this server's %s intermediate expired and it keeps no root key to certify a new one: join it to the cluster again", p.Name())
	}
	root, err := p.ParseCertificate(rootDER)
	if err != nil {
		return nil, err
	}
	rootKey, err := sealed.Open(s.cfg.KEK)
	if err != nil {
		return nil, err
	}
	inter, err := ca.SignIntermediateCSR(ca.CAParams{Profile: p, TrustDomain: s.td, Name: "intermediate " + s.cfg.NodeID, Now: s.cfg.Clock.Now(), TTL: s.cfg.IntermediateTTL}, csr, root, rootKey)
	if err != nil {
		return nil, err
	}
	return inter.Raw, nil
}

// certifyThroughCluster has the leader certify a CSR as this server's next
// intermediate.
func (s *Server) certifyThroughCluster(ctx context.Context, profile string, csr []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, rotationCallTimeout)
	defer cancel()
	if s.node.IsLeader() {
		return s.certifyIntermediate(ctx, s.cfg.NodeID, profile, csr)
	}
	client, err := s.node.LeaderClient()
	if err != nil {
		return nil, err
	}
	resp, err := client.CertifyIntermediate(ctx, &clusterpb.CertifyIntermediateRequest{Profile: profile, Csr: csr})
	if err != nil {
		return nil, err
	}
	return resp.Certificate, nil
}

// certifyIntermediate, on the leader, certifies the key of a member
// server's CSR as its next intermediate with the active root and records it
// PREPARED before returning it. The same key asked again gets the same
// certificate.
func (s *Server) certifyIntermediate(ctx context.Context, nodeID, profile string, csr []byte) ([]byte, error) {
	if !s.node.IsLeader() {
		return nil, status.Error(codes.FailedPrecondition, "not the leader")
	}
	p, err := ca.ProfileByName(profile)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	spki, err := ca.CSRPublicKey(p, csr)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "intermediate CSR: %v", err)
	}
	if err := s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := s.fsm.Read()
	if r.Server(nodeID) == nil {
		s.events.Record(audit.Event{Actor: nodeID, Action: "intermediate.certify", Subject: profile, Decision: audit.Deny, Reason: "not a member"})
		return nil, status.Errorf(codes.PermissionDenied, "server %q is not a member of the cluster", nodeID)
	}
	rootRec, rootKey, err := s.activeRoot(r, profile)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	for _, a := range r.Authorities() {
		if a.Kind != raftpb.AuthorityKind_INTERMEDIATE || a.ServerId != nodeID || a.Profile != profile || a.ParentId != rootRec.Id {
			continue // certified by another root: a new certificate (issue 13 roots)
		}
		if c, err := p.ParseCertificate(a.Certificate); err == nil && bytes.Equal(c.RawSubjectPublicKeyInfo, spki) {
			return a.Certificate, nil // asked again: the answer was lost
		}
	}
	root, err := p.ParseCertificate(rootRec.Certificate)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	inter, err := ca.SignIntermediateCSR(ca.CAParams{Profile: p, TrustDomain: s.td, Name: "intermediate " + nodeID, Now: s.cfg.Clock.Now(), TTL: s.cfg.IntermediateTTL}, csr, root, rootKey)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "intermediate CSR: %v", err)
	}
	if _, err := s.node.Apply(ctx, putIntermediate(inter, rootRec.Id, nodeID, raftpb.AuthorityState_PREPARED)); err != nil {
		return nil, status.Errorf(codes.Unavailable, "record the intermediate: %v", err)
	}
	s.events.Record(audit.Event{Actor: nodeID, Action: "intermediate.certify", Subject: authorityID(inter, raftpb.AuthorityKind_INTERMEDIATE),
		Decision: audit.Allow, Details: map[string]string{"profile": profile, "not_after": inter.NotAfter.UTC().Format(time.RFC3339)}})
	return inter.Raw, nil
}

// syncIntermediateRecords makes the replicated state agree with this
// server's intermediates: an active one recorded PREPARED (or not at all,
// when it was certified locally) is activated, a prepared one not recorded
// is recorded. A state an operator set (tainted, revoked) is left alone.
func (s *Server) syncIntermediateRecords(ctx context.Context) error {
	cmds := s.pendingIntermediateRecords()
	if len(cmds) == 0 {
		return nil
	}
	// The local view may lag: decide on a linearizable read.
	if err := s.node.ReadIndex(ctx); err != nil {
		return err
	}
	for _, c := range s.pendingIntermediateRecords() {
		if _, err := s.node.Apply(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) pendingIntermediateRecords() []*raftpb.Command {
	r := s.fsm.Read()
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.TrustDomain() == nil || s.id.Bootstrap != nil || r.Server(s.cfg.NodeID) == nil {
		return nil // the bootstrap or the join records them
	}
	var cmds []*raftpb.Command
	for _, p := range ca.Profiles() {
		root, err := p.ParseCertificate(s.id.Roots[p.Name()])
		if err != nil {
			continue
		}
		// The root that certified an intermediate: the active one, or
		// another root of the bundle (issue 13 roots).
		parentOf := func(c *ca.Certificate) string {
			for _, a := range trustedRoots(r, p.Name()) {
				if rc, err := p.ParseCertificate(a.Certificate); err == nil && ca.CheckSignedBy(c, rc) == nil {
					return a.Id
				}
			}
			return authorityID(root, raftpb.AuthorityKind_ROOT)
		}
		for _, li := range s.id.Old[p.Name()] {
			// Prepared, then discarded when its root stopped being active.
			if c, err := p.ParseCertificate(li.Certificate); err == nil {
				if rec := r.Authority(authorityID(c, raftpb.AuthorityKind_INTERMEDIATE)); rec != nil && rec.State == raftpb.AuthorityState_PREPARED {
					cmds = append(cmds, &raftpb.Command{Op: &raftpb.Command_SetAuthorityState{SetAuthorityState: &raftpb.SetAuthorityState{Id: rec.Id, State: raftpb.AuthorityState_OLD}}})
				}
			}
		}
		if li := s.id.Intermediates[p.Name()]; li != nil {
			if c, err := p.ParseCertificate(li.Certificate); err == nil {
				id := authorityID(c, raftpb.AuthorityKind_INTERMEDIATE)
				rec := r.Authority(id)
				if rec == nil {
					cmds = append(cmds, putIntermediate(c, parentOf(c), s.cfg.NodeID, raftpb.AuthorityState_PREPARED))
				}
				if rec == nil || rec.State == raftpb.AuthorityState_PREPARED {
					cmds = append(cmds, &raftpb.Command{Op: &raftpb.Command_ActivateAuthority{ActivateAuthority: &raftpb.ActivateAuthority{Id: id}}})
				}
			}
		}
		if li := s.id.Prepared[p.Name()]; li != nil && len(li.Certificate) > 0 {
			if c, err := p.ParseCertificate(li.Certificate); err == nil && r.Authority(authorityID(c, raftpb.AuthorityKind_INTERMEDIATE)) == nil {
				cmds = append(cmds, putIntermediate(c, parentOf(c), s.cfg.NodeID, raftpb.AuthorityState_PREPARED))
			}
		}
	}
	return cmds
}

// syncRoots keeps the roots this server holds (identity.Roots and
// RootKeys) equal to the replicated state's active roots, which an
// operator rotates (issue 13 roots), and the peer roots it keeps equal to
// the ECDSA roots of the bundle.
func (s *Server) syncRoots() error {
	r := s.fsm.Read()
	if r.TrustDomain() == nil {
		return nil // not replayed yet
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.id.Bootstrap != nil {
		return nil
	}
	changed := false
	for _, p := range ca.Profiles() {
		a := rootOf(r, p.Name(), raftpb.AuthorityState_ACTIVE)
		if a == nil || len(a.SealedKey) == 0 {
			continue
		}
		if !bytes.Equal(s.id.Roots[a.Profile], a.Certificate) {
			s.id.Roots[a.Profile] = a.Certificate
			changed = true
		}
		if cur, err := json.Marshal(s.id.RootKeys[a.Profile]); err == nil && bytes.Equal(cur, a.SealedKey) {
			continue
		}
		var sk ca.SealedKey
		if err := json.Unmarshal(a.SealedKey, &sk); err != nil {
			return fmt.Errorf("root %s: sealed key: %w", a.Id, err)
		}
		s.id.RootKeys[a.Profile] = &sk
		changed = true
	}
	var peers [][]byte
	for _, a := range trustedRoots(r, ca.ProfileECDSA) {
		peers = append(peers, a.Certificate)
	}
	if len(peers) != len(s.id.PeerRoots) {
		changed = true
	} else {
		for i := range peers {
			changed = changed || !bytes.Equal(peers[i], s.id.PeerRoots[i])
		}
	}
	s.id.PeerRoots = peers
	if !changed {
		return nil
	}
	return s.id.save(s.cfg.DataDir)
}

// rotateJWTKeys, on the leader, prepares and activates the cluster's JWT
// signing keys on the same schedule as intermediates. A prepared key is in
// every JWT bundle at once, so relying parties know it before it signs.
func (s *Server) rotateJWTKeys(ctx context.Context) (time.Time, error) {
	s.mu.Lock()
	bootstrapping := s.id.Bootstrap != nil
	s.mu.Unlock()
	if bootstrapping {
		// The bootstrap writes the first key; until it has, no key is
		// missing (tryWriteBootstrapState wakes the loop when done).
		return time.Time{}, nil
	}
	for range 4 {
		r := s.fsm.Read()
		if r.TrustDomain() == nil {
			return time.Time{}, nil
		}
		var active, prepared *raftpb.JWTKey
		for _, k := range r.JWTKeys() {
			switch {
			case raftfsm.JWTKeyActive(k) && (active == nil || k.CreatedUnix > active.CreatedUnix):
				active = k
			case k.State == raftpb.AuthorityState_PREPARED:
				prepared = k
			}
		}
		now := s.cfg.Clock.Now()
		step, next := ca.PlanRotation(now, jwtValidity(active), jwtValidity(prepared))
		var cmd *raftpb.Command
		switch step {
		case ca.StepNone:
			return next, nil
		case ca.StepPrepare:
			k, err := newJWTKey(s.cfg.KEK, now, raftpb.AuthorityState_PREPARED)
			if err != nil {
				return time.Time{}, err
			}
			cmd = &raftpb.Command{Op: &raftpb.Command_PutJwtKey{PutJwtKey: &raftpb.PutJWTKey{Key: k}}}
		case ca.StepActivate:
			cmd = &raftpb.Command{Op: &raftpb.Command_ActivateJwtKey{ActivateJwtKey: &raftpb.ActivateJWTKey{Kid: prepared.Kid}}}
		}
		if _, err := s.node.Apply(ctx, cmd); err != nil && !errors.Is(err, raftfsm.ErrAlreadyExists) {
			return time.Time{}, err
		}
		s.events.Record(audit.Event{Action: "jwt_key." + step.String(), Decision: audit.Info})
		if err := s.node.ReadIndex(ctx); err != nil {
			return time.Time{}, err
		}
	}
	return time.Time{}, errors.New("JWT key rotation did not settle")
}

func jwtValidity(k *raftpb.JWTKey) ca.Validity {
	if k == nil {
		return ca.Validity{}
	}
	return ca.Validity{NotBefore: time.Unix(k.CreatedUnix, 0), NotAfter: time.Unix(k.NotAfterUnix, 0)}
}

// Rotate wakes the rotation loop, which runs whatever is due now.
func (s *Server) Rotate() {
	select {
	case s.rotated <- struct{}{}:
	default:
	}
}
