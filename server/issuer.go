package server

import (
	"sync/atomic"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
)

// issuer is one of this server's intermediates, signing, with its ID in the
// replicated state, computed once.
type issuer struct {
	*ca.Authority
	id string
	// crl is set once the replicated state holds a CRL of this
	// intermediate (see hasCRL).
	crl atomic.Bool
}

// hasCRL reports whether the cluster has published a CRL of the
// intermediate. Until it has, the server does not sign with it: a proxy
// whose validation context holds the CRLs of the other CAs but not of
// this one would reject every certificate it signed.
func (i *issuer) hasCRL(fsm *raftfsm.FSM) bool {
	if i.crl.Load() {
		return true
	}
	if fsm.Read().CRL(i.id) == nil {
		return false
	}
	i.crl.Store(true)
	return true
}

// tainted reports whether an operator tainted the intermediate: the
// server signs nothing more with it (rotation replaces it at once).
func (i *issuer) tainted(fsm *raftfsm.FSM) bool {
	a := fsm.Read().Authority(i.id)
	return a != nil && (a.State == raftpb.AuthorityState_TAINTED || a.State == raftpb.AuthorityState_REVOKED)
}

func newIssuer(a *ca.Authority) *issuer {
	return &issuer{Authority: a, id: authorityID(a.Certificate(), raftpb.AuthorityKind_INTERMEDIATE)}
}

// issuerSet is the signing intermediate of every profile. A set is never
// modified: rotation installs a new one, so a request that loaded a set
// signs and records with the same intermediate, never with half a rotation.
type issuerSet struct {
	byProfile map[string]*issuer
}

// issuer returns this server's signing intermediate of a profile.
func (s *Server) issuer(profile string) (*issuer, bool) {
	set := s.issuers.Load()
	if set == nil {
		return nil, false
	}
	i, ok := set.byProfile[profile]
	return i, ok
}
