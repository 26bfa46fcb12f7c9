package server

import (
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/raftpb"
)

// issuer is one of this server's intermediates, signing, with its ID in the
// replicated state, computed once.
type issuer struct {
	*ca.Authority
	id string
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
