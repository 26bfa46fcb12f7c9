package server

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// keepRecorded puts this server's record (its Raft and API addresses) into
// the replicated state whenever it is a voter of the Raft configuration but
// missing from the state: remove-peer drops the record, and add-voter alone
// would leave a voter that no follower can forward to and that is never
// ready. It runs until ctx ends, woken by state and leadership changes.
func (s *Server) keepRecorded(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		changed, lead := s.fsm.ConfigChanged(), s.node.LeaderChanges()
		wait := 30 * time.Second
		if s.needsRecord() {
			if err := s.recordSelf(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				s.log.Warn("recording this server in the cluster state failed; retrying", "err", err, "retry_in", backoff)
				wait, backoff = backoff, min(backoff*2, 5*time.Second)
			} else {
				backoff = 100 * time.Millisecond
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-lead:
		case <-time.After(wait):
		}
	}
}

// needsRecord reports whether this server is a voter with a leader, in a
// bootstrapped cluster whose state does not record it.
func (s *Server) needsRecord() bool {
	r := s.fsm.Read()
	if r.TrustDomain() == nil || r.Server(s.cfg.NodeID) != nil {
		return false
	}
	if _, leader := s.node.Raft().LeaderWithID(); leader == "" {
		return false
	}
	peers, err := s.node.Peers()
	if err != nil {
		return false
	}
	for _, p := range peers {
		if string(p.ID) == s.cfg.NodeID && p.Suffrage == raft.Voter {
			return true
		}
	}
	return false
}

func (s *Server) recordSelf(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// PutServer is an upsert: applying it twice leaves the same state.
	if _, err := s.node.ApplyIdempotent(ctx, s.putSelf()); err != nil {
		return fmt.Errorf("record server %s: %w", s.cfg.NodeID, err)
	}
	s.log.Info("recorded this server in the cluster state", "raft", s.cfg.RaftAddr, "api", s.cfg.APIAddr)
	return nil
}
