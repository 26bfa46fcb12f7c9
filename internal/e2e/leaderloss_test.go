package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// attestAttempt attests through client with a join token and an attempt
// ID, as an agent does: an Unavailable answer is retried, with the same
// attempt, until ctx ends.
func attestAttempt(ctx context.Context, client nodepb.NodeClient, token, attempt string) (*nodepb.AttestResult, error) {
	payload, err := jointoken.NewEvidence(token).Payload()
	if err != nil {
		return nil, err
	}
	for {
		stream, err := client.Attest(ctx)
		if err == nil {
			err = stream.Send(&nodepb.AttestRequest{Step: &nodepb.AttestRequest_Start{Start: &nodepb.AttestStart{
				Attestor: jointoken.Name, Payload: payload, Csr: freshCSR(), AttemptId: attempt}}})
		}
		var resp *nodepb.AttestResponse
		if err == nil {
			resp, err = stream.Recv()
		}
		if err == nil {
			return resp.GetResult(), nil
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func freshCSR() []byte {
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	return csr
}

// The leader is frozen at several moments of an agent's attestation and of
// a server's join, each started through a follower: both complete through
// the new leader, and each token is consumed exactly once, by the one that
// presented it, with one node (or one server) recorded.
func TestLeaderLostMidAttestationAndJoin(t *testing.T) {
	fc := newFaultCluster(t, 3)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	for i, delay := range []time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond, 15 * time.Millisecond} {
		var leader, via *member
		waitUntil(t, 30*time.Second, "a leader, and every member a voter", func() bool {
			leader, via = nil, nil
			peers, err := fc.members[0].srv.Node().Peers()
			if err != nil || len(peers) != len(fc.members) {
				return false
			}
			for _, p := range peers {
				if p.Suffrage != raft.Voter {
					return false
				}
			}
			for _, m := range fc.members {
				switch {
				case m.srv.Node().IsLeader():
					leader = m
				case via == nil:
					via = m
				}
			}
			return leader != nil && via != nil
		})
		agentToken := fc.token(server.TokenKindAgent)
		joinCfg := fc.joinConfig(fmt.Sprintf("j%d", i), via)
		joinCfg.JoinTimeout = 30 * time.Second
		conn, err := grpc.NewClient("passthrough:///"+via.srv.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(
			tlsconfig.TLSClientConfig(x509svidBundle(fc.bundle), tlsconfig.AuthorizeMemberOf(td)))))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		attested := make(chan error, 1)
		var res *nodepb.AttestResult
		go func() {
			var err error
			res, err = attestAttempt(ctx, nodepb.NewNodeClient(conn), agentToken, fmt.Sprint("attempt-", i))
			attested <- err
		}()
		joined := make(chan error, 1)
		var srv *server.Server
		go func() {
			var err error
			srv, err = server.New(joinCfg)
			joined <- err
		}()
		time.Sleep(delay) // the fault schedule: the leader freezes this far into both
		fc.net.Freeze(leader.cfg.NodeID)
		if err := <-attested; err != nil {
			t.Fatalf("round %d (freeze at %s): attestation through %s: %v", i, delay, via.cfg.NodeID, err)
		}
		if err := <-joined; err != nil {
			t.Fatalf("round %d (freeze at %s): join through %s: %v", i, delay, via.cfg.NodeID, err)
		}
		srv.Close()
		cancel()
		conn.Close()
		fc.net.Heal()

		// Checked on a majority server, at a linearizable read.
		rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := via.srv.Node().ReadIndex(rctx); err != nil {
			t.Fatal(err)
		}
		rcancel()
		r := via.srv.Node().FSM().Read()
		ah := sha256.Sum256([]byte(agentToken))
		if tok := r.JoinToken(ah[:]); tok == nil || tok.ConsumedBy != res.AgentId {
			t.Errorf("round %d: agent token consumed by %q, want %s", i, tok.GetConsumedBy(), res.AgentId)
		}
		if r.Node(res.AgentId) == nil {
			t.Errorf("round %d: agent %s not recorded", i, res.AgentId)
		}
		sh := sha256.Sum256([]byte(joinCfg.JoinToken))
		if tok := r.JoinToken(sh[:]); tok == nil || tok.ConsumedBy != joinCfg.NodeID {
			t.Errorf("round %d: server token consumed by %q, want %s", i, tok.GetConsumedBy(), joinCfg.NodeID)
		}
		active := 0
		for _, a := range r.Authorities() {
			if a.ServerId == joinCfg.NodeID && a.State == raftpb.AuthorityState_ACTIVE {
				active++
			}
		}
		if r.Server(joinCfg.NodeID) == nil || active != 2 {
			t.Errorf("round %d: joined server recorded %v with %d active intermediates, want recorded with 2", i, r.Server(joinCfg.NodeID) != nil, active)
		}
		// The joined server is not kept: remove it from the configuration.
		ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
		via.srv.Node().RemoveServer(ctx2, joinCfg.NodeID)
		cancel2()
	}
}
