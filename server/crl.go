package server

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
)

// CRLs. Every CA of the trust domain has a current CRL in the replicated
// state: each server signs those of its own intermediates (their keys
// never leave it: active, prepared and old ones, until they expire), the
// leader those of the roots. A CRL is valid CRLLifetime and signed again at
// half of it (Config.CRLLifetime), or at once when the revocations it lists change, so a
// server that stops leaves CRLs valid for longer than the SVIDs its
// intermediates signed. Agents receive every CRL over Sync and put the CRL
// of every CA of a chain in the SDS validation contexts (Envoy rejects a
// chain in which only some CAs have a CRL).

// DefaultCRLLifetime is how long a CRL meshca signs is valid, unless
// Config.CRLLifetime says otherwise.
const DefaultCRLLifetime = 48 * time.Hour

// revocationsDigest summarises the revocations of one issuer.
func revocationsDigest(rs []*raftpb.Revocation) []byte {
	h := sha256.New()
	var b [8]byte
	for _, r := range rs {
		binary.BigEndian.PutUint64(b[:], uint64(len(r.Serial)))
		h.Write(b[:])
		h.Write(r.Serial)
		binary.BigEndian.PutUint64(b[:], uint64(r.RevokedUnixNano))
		h.Write(b[:])
		binary.BigEndian.PutUint64(b[:], uint64(r.Reason))
		h.Write(b[:])
	}
	return h.Sum(nil)
}

// crlDue reports whether an authority's CRL must be signed again at now,
// and when it will be otherwise.
// A CRL is refreshed when half of lifetime remains before its nextUpdate
// (its thisUpdate is backdated, so it cannot measure the half).
func crlDue(cur *raftpb.CRL, digest []byte, now time.Time, lifetime time.Duration) (bool, time.Time) {
	if cur == nil || string(cur.RevocationsDigest) != string(digest) {
		return true, now
	}
	refresh := time.Unix(cur.NextUpdateUnix, 0).Add(-lifetime / 2)
	return !now.Before(refresh), refresh
}

// signCRL signs and records the next CRL of authority a (ID id).
// Revocations of certificates that have expired are left out.
func (s *Server) signCRL(ctx context.Context, a *ca.Authority, id string, r *raftfsm.Reader) error {
	now := s.cfg.Clock.Now().Truncate(time.Second)
	revs, _ := liveRevocations(r.RevocationsOf(id), s.cfg.Clock.Now())
	cur := r.CRL(id)
	number := uint64(1)
	if cur != nil {
		number = cur.Number + 1
	}
	p := ca.CRLParams{Number: new(big.Int).SetUint64(number), ThisUpdate: now.Add(-ca.Backdate), NextUpdate: now.Add(s.cfg.CRLLifetime)}
	for _, rv := range revs {
		p.Revoked = append(p.Revoked, ca.Revocation{SerialNumber: new(big.Int).SetBytes(rv.Serial), RevokedAt: time.Unix(0, rv.RevokedUnixNano), ReasonCode: int(rv.Reason)})
	}
	sort.Slice(p.Revoked, func(i, j int) bool { return p.Revoked[i].SerialNumber.Cmp(p.Revoked[j].SerialNumber) < 0 })
	der, err := a.CreateCRL(p)
	if err != nil {
		return fmt.Errorf("CRL of %s: %w", id, err)
	}
	_, err = s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PutCrl{PutCrl: &raftpb.PutCRL{Crl: &raftpb.CRL{
		AuthorityId: id, Number: number, Der: der, ThisUpdateUnix: p.ThisUpdate.Unix(), NextUpdateUnix: p.NextUpdate.Unix(),
		RevocationsDigest: revocationsDigest(revs), Revoked: int64(len(revs))}}}})
	switch {
	case errors.Is(err, raftfsm.ErrNotFound):
		return nil // the authority is not recorded yet (syncIntermediateRecords will)
	case errors.Is(err, raftfsm.ErrConflict):
		// Only this server signs this authority's CRLs: the number was taken
		// by its own previous CRL, committed on the leader and not yet applied
		// here (a follower's state lags its forwarded writes). The next round
		// reads it and finds the CRL current.
		return nil
	case err != nil:
		return fmt.Errorf("record the CRL of %s: %w", id, err)
	}
	s.events.Record(audit.Event{Action: "crl.publish", Subject: id, Decision: audit.Info,
		Details: map[string]string{"number": fmt.Sprint(number), "revoked": fmt.Sprint(len(revs)), "next_update": p.NextUpdate.UTC().Format(time.RFC3339)}})
	return nil
}

// crlAuthorities returns the authorities whose CRLs this server signs,
// opened, by ID: its own unexpired intermediates, and on the leader the
// roots of the bundle.
func (s *Server) crlAuthorities(r *raftfsm.Reader) (map[string]*ca.Authority, error) {
	now := s.cfg.Clock.Now()
	out := map[string]*ca.Authority{}
	s.mu.Lock()
	var locals []struct {
		li      *localIntermediate
		profile string
	}
	for p, li := range s.id.Intermediates {
		locals = append(locals, struct {
			li      *localIntermediate
			profile string
		}{li, p})
	}
	for p, li := range s.id.Prepared {
		if len(li.Certificate) > 0 {
			locals = append(locals, struct {
				li      *localIntermediate
				profile string
			}{li, p})
		}
	}
	for p, olds := range s.id.Old {
		for _, li := range olds {
			locals = append(locals, struct {
				li      *localIntermediate
				profile string
			}{li, p})
		}
	}
	var errs []error
	for _, l := range locals {
		if v := validity(l.li, l.profile); v.IsZero() || !now.Before(v.NotAfter) {
			continue
		}
		a, err := s.id.openIntermediate(l.li, l.profile, s.cfg.KEK, s.cfg.Clock)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[authorityID(a.Certificate(), raftpb.AuthorityKind_INTERMEDIATE)] = a
	}
	s.mu.Unlock()
	if s.node.IsLeader() {
		// Every root in the bundle (issue 13 roots): a prepared root has a
		// CRL before it is activated, an old one while its chains live.
		for _, rec := range trustedRoots(r, "") {
			if len(rec.SealedKey) == 0 {
				continue
			}
			a, _, err := s.openRoot(rec)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out[rec.Id] = a
		}
	}
	return out, errors.Join(errs...)
}

// publishCRLs signs the CRLs that are due and returns when the next one
// falls due.
func (s *Server) publishCRLs(ctx context.Context) (time.Time, error) {
	r := s.fsm.Read()
	now := s.cfg.Clock.Now()
	next := now.Add(s.cfg.CRLLifetime / 2)
	if r.TrustDomain() == nil {
		return next, nil
	}
	auths, err := s.crlAuthorities(r)
	errs := []error{err}
	for id, a := range auths {
		live, expires := liveRevocations(r.RevocationsOf(id), now)
		if !expires.IsZero() && expires.Before(next) {
			next = expires // the CRL drops the entry then
		}
		due, at := crlDue(r.CRL(id), revocationsDigest(live), now, s.cfg.CRLLifetime)
		if !due {
			if at.Before(next) {
				next = at
			}
			continue
		}
		if err := s.signCRL(ctx, a, id, r); err != nil {
			errs = append(errs, err)
		}
	}
	return next, errors.Join(errs...)
}
