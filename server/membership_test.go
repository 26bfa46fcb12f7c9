package server

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/proto/operatorpb"
)

// remove-peer then add-voter, as README promises: the removed server says
// it was removed, and add-voter brings it fully back (ready, recorded in the
// state, reachable as the leader).
func TestRemovePeerThenAddVoterBringsServerBack(t *testing.T) {
	servers := startCluster(t, 3)
	s1, s3 := servers[0], servers[2]
	for _, s := range servers {
		waitReady(t, s, 20*time.Second)
	}
	if _, err := s1.operator().RaftRemovePeer(tctx(t), &operatorpb.RaftRemovePeerRequest{Id: "s3"}); err != nil {
		t.Fatalf("remove-peer s3: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := s3.statusOnly(tctx(t))
		if err != nil {
			t.Fatalf("status of the removed server: %v", err)
		}
		if !st.Ready && strings.Contains(st.ReadyReason, "removed") {
			t.Logf("removed server: ready false: %s", st.ReadyReason)
			break
		}
		if time.Now().After(deadline) {
			peers, _ := s3.srv.Node().Peers()
			t.Fatalf("the removed server says ready %v, %q; want not ready, removed (raft state %s, leader %q, its configuration %v)",
				st.Ready, st.ReadyReason, st.RaftState, st.LeaderId, peers)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if _, err := s1.operator().RaftAddVoter(tctx(t), &operatorpb.RaftAddVoterRequest{Id: "s3", Address: s3.srv.RaftAddr()}); err != nil {
		t.Fatalf("add-voter s3: %v", err)
	}
	if st := waitReady(t, s3, 20*time.Second); st.ReadyReason != "" {
		t.Errorf("ready with a reason: %q", st.ReadyReason)
	}
	peers, err := s3.operator().RaftListPeers(tctx(t), &operatorpb.RaftListPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(peers.Peers) != 3 {
		t.Errorf("peers after add-voter: %v, want 3 voters", peers.Peers)
	}
	// Writes through it, and forwarded to it as the leader.
	if _, err := s3.operator().CreateJoinToken(tctx(t), &operatorpb.CreateJoinTokenRequest{Kind: TokenKindAgent}); err != nil {
		t.Errorf("a write through the server added back: %v", err)
	}
	leader := s1.srv.Node()
	if err := leader.Raft().LeadershipTransferToServer(raft.ServerID("s3"), raft.ServerAddress(s3.srv.RaftAddr())).Error(); err != nil {
		t.Fatalf("transfer leadership to s3: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); !s3.srv.Node().IsLeader(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("s3 did not become leader")
		}
	}
	if _, err := s1.operator().CreateJoinToken(tctx(t), &operatorpb.CreateJoinTokenRequest{Kind: TokenKindAgent}); err != nil {
		t.Errorf("a write forwarded to the server added back, now leader: %v", err)
	}
	hash := s3.status().StateHash
	for _, s := range servers {
		if h := s.status().StateHash; h != hash {
			t.Errorf("%s state hash %s, want %s", s.cfg.NodeID, h, hash)
		}
		if s.srv.fsm.Read().Server("s3") == nil {
			t.Errorf("%s's state does not record s3", s.cfg.NodeID)
		}
	}
}
