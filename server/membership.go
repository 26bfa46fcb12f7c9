package server

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/internal/alarm"
)

// keepMembership reconciles this server's own membership whenever the
// state or the leadership changes (and every 30 s), until ctx ends:
//
//   - a voter of the Raft configuration missing from the replicated state
//     records itself (its Raft and API addresses): remove-peer drops the
//     record, and add-voter alone would leave a voter that no follower can
//     forward to and that is never ready;
//   - a non-voter recorded in the state (a server that joined) promotes
//     itself to voter once it has caught up with the leader, so that the
//     quorum grows only by a vote that can be cast.
func (s *Server) keepMembership(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		changed, lead := s.fsm.ConfigChanged(), s.node.LeaderChanges()
		wait := 30 * time.Second
		if err := s.reconcileMembership(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("membership reconciliation failed; retrying", "err", err, "retry_in", backoff)
			wait, backoff = backoff, min(backoff*2, 5*time.Second)
		} else {
			backoff = 100 * time.Millisecond
		}
		again := alarm.Retry(s.cfg.Clock, wait)
		select {
		case <-ctx.Done():
		case <-changed:
		case <-lead:
		case <-again.C():
		}
		again.Stop()
		if ctx.Err() != nil {
			return
		}
	}
}

func (s *Server) reconcileMembership(ctx context.Context) error {
	r := s.fsm.Read()
	if r.TrustDomain() == nil || len(r.Servers()) == 0 {
		return nil // not bootstrapped yet: the bootstrap records the first server last
	}
	if _, leader := s.node.Raft().LeaderWithID(); leader == "" {
		return nil
	}
	peers, err := s.node.Peers()
	if err != nil {
		return nil // shutting down
	}
	suffrage, member := raft.Nonvoter, false
	for _, p := range peers {
		if string(p.ID) == s.cfg.NodeID {
			suffrage, member = p.Suffrage, true
		}
	}
	if !member {
		return nil // removed, or not added yet
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch {
	case suffrage == raft.Voter && r.Server(s.cfg.NodeID) == nil:
		// PutServer is an upsert: applying it twice leaves the same state.
		if _, err := s.node.ApplyIdempotent(ctx, s.putSelf()); err != nil {
			return fmt.Errorf("record server %s: %w", s.cfg.NodeID, err)
		}
		s.log.Info("recorded this server in the cluster state", "raft", s.cfg.RaftAddr, "api", s.cfg.APIAddr)
	case suffrage == raft.Nonvoter && r.Server(s.cfg.NodeID) != nil:
		// Caught up: every entry committed before the read is applied here.
		if err := s.node.ReadIndex(ctx); err != nil {
			return fmt.Errorf("catch up before promotion: %w", err)
		}
		// The leader checks that this server still is a recorded
		// non-voter: one removed meanwhile is not added back.
		if err := s.node.Promote(ctx, s.cfg.NodeID, s.cfg.RaftAddr); err != nil {
			return fmt.Errorf("promote %s to voter: %w", s.cfg.NodeID, err)
		}
		s.log.Info("caught up with the leader; promoted to voter")
	}
	return nil
}
