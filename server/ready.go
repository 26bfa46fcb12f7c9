package server

import "context"

// Readiness reports whether this server can serve writes now: the cluster
// is bootstrapped, this server is in the Raft configuration and recorded in
// the replicated state, and a leader is known and answers (on the leader: a
// quorum confirms it). When it cannot, reason says why, naming the cause
// (not bootstrapped, removed, no leader, no quorum, leader unreachable).
// It makes at most one round trip to the leader, bounded by ctx.
func (s *Server) Readiness(ctx context.Context) (ready bool, reason string) {
	r := s.fsm.Read()
	if r.TrustDomain() == nil {
		return false, "the cluster is not bootstrapped yet: the first server writes the trust domain once it leads"
	}
	if err := s.node.Writable(ctx); err != nil {
		return false, err.Error()
	}
	if r.Server(s.cfg.NodeID) == nil {
		return false, "this server is in the Raft configuration but not yet recorded in the cluster's state; it records itself once it follows the leader"
	}
	if set := s.issuers.Load(); set != nil {
		for p, iss := range set.byProfile {
			if !iss.hasCRL(s.fsm) {
				return false, "the CRL of this server's " + p + " intermediate is not published yet (it is, moments after the intermediate is recorded)"
			}
		}
	}
	return true, ""
}
