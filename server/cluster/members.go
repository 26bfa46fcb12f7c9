package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/internal/wallclock"
	"github.com/meshca/meshca/proto/clusterpb"
)

// memberStatusTimeout bounds the question to one member.
const memberStatusTimeout = 2 * time.Second

// localStatus is this node's position. Its applied index is Raft's
// (configuration and no-op entries included), comparable with the commit
// index, unlike the state machine's.
func (n *Node) localStatus() *clusterpb.MemberStatusResponse {
	_, leader := n.raft.LeaderWithID()
	contact := int64(-1)
	switch {
	case n.IsLeader():
		contact = 0
	case !n.raft.LastContact().IsZero():
		contact = wallclock.Since(n.raft.LastContact()).Milliseconds() // Raft's real-time contact
	}
	return &clusterpb.MemberStatusResponse{NodeId: n.cfg.NodeID, RaftState: n.raft.State().String(),
		AppliedIndex: n.raft.AppliedIndex(), CommitIndex: n.raft.CommitIndex(), LeaderId: string(leader),
		LastContactMillis: contact}
}

// MemberStatus is a member's answer, or why there is none.
type MemberStatus struct {
	Server raft.Server
	// Status is nil when the member did not answer: Err says why.
	Status *clusterpb.MemberStatusResponse
	Err    error
}

// Members asks every server of the Raft configuration for its position,
// all at once, each within a bound; this node answers for itself. The
// result is in the configuration's order.
func (n *Node) Members(ctx context.Context) ([]MemberStatus, error) {
	servers, err := n.Peers()
	if err != nil {
		return nil, err
	}
	out := make([]MemberStatus, len(servers))
	var wg sync.WaitGroup
	for i, sv := range servers {
		out[i].Server = sv
		if string(sv.ID) == n.cfg.NodeID {
			out[i].Status = n.localStatus()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			client, err := n.clientOf(sv.ID)
			if err != nil {
				out[i].Err = err
				return
			}
			cctx, cancel := context.WithTimeout(ctx, memberStatusTimeout)
			defer cancel()
			out[i].Status, out[i].Err = client.MemberStatus(cctx, &clusterpb.MemberStatusRequest{})
		}()
	}
	wg.Wait()
	return out, nil
}

// MemberStatus answers a peer's status question.
func (s *Service) MemberStatus(ctx context.Context, _ *clusterpb.MemberStatusRequest) (*clusterpb.MemberStatusResponse, error) {
	if err := s.requireServer(ctx); err != nil {
		return nil, err
	}
	return s.node.localStatus(), nil
}
