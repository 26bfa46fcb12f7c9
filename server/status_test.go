package server

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"encoding/hex"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// startCluster bootstraps s1 and joins s2..sN to it.
func startCluster(t *testing.T, size int) []*running {
	t.Helper()
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	bundle := pemBundle(t, s1.srv.TrustBundle())
	servers := []*running{s1}
	for i := 2; i <= size; i++ {
		servers = append(servers, mustStart(t, joinCfg(t, fmt.Sprintf("s%d", i), kek, s1, s1.token(TokenKindServer), bundle)))
	}
	return servers
}

// statusOnly calls Status without a read barrier first.
func (r *running) statusOnly(ctx context.Context) (*operatorpb.StatusResponse, error) {
	return r.operator().Status(ctx, &operatorpb.StatusRequest{})
}

// Status reports the state hash and the applied index of one moment: while
// entries are applied, every (index, hash) pair it reports is the hash of
// the state after exactly that index, as a replay of the log shows.
func TestStatusIndexAndHashAtOneIndex(t *testing.T) {
	servers := startCluster(t, 1)
	s := servers[0]
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil && i < 1500; i++ {
				rec := &raftpb.LedgerRecord{Serial: []byte(fmt.Sprintf("w%d-%d", w, i)), SpiffeId: "spiffe://example.org/w", NodeId: "n",
					Profile: "ecdsa", IssuerId: "i", NotBeforeUnix: 1, NotAfterUnix: 4_000_000_000}
				if err := s.srv.node.CommitLedger(ctx, rec); err != nil && ctx.Err() == nil {
					t.Errorf("commit: %v", err)
					return
				}
			}
		}()
	}
	seen := map[uint64]string{}
	var mismatch []string
	for i := 0; i < 200; i++ {
		st, err := s.statusOnly(tctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if prev, ok := seen[st.AppliedIndex]; ok && prev != st.StateHash {
			mismatch = append(mismatch, fmt.Sprintf("index %d reported with hashes %s and %s", st.AppliedIndex, prev[:8], st.StateHash[:8]))
		}
		seen[st.AppliedIndex] = st.StateHash
	}
	stop()
	wg.Wait()

	// Replay the log into a fresh state machine: the hash after each
	// observed index must be the one reported with it.
	fsm := raftfsm.New()
	last, err := s.srv.stores.Log.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for i := uint64(1); i <= last; i++ {
		var l raft.Log
		if err := s.srv.stores.Log.GetLog(i, &l); err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		fsm.ApplyBatch([]*raft.Log{&l})
		want, ok := seen[i]
		if !ok {
			continue
		}
		got, err := fsm.StateHash()
		if err != nil {
			t.Fatal(err)
		}
		checked++
		if hex.EncodeToString(got[:]) != want {
			mismatch = append(mismatch, fmt.Sprintf("index %d reported with hash %s, the state at %d has %x", i, want[:8], i, got[:4]))
		}
	}
	if len(mismatch) > 0 {
		t.Errorf("%d of %d status answers mixed moments, e.g. %v", len(mismatch), len(seen), mismatch[:min(3, len(mismatch))])
	}
	if checked == 0 {
		t.Fatal("no status answer checked against the log")
	}
	t.Logf("%d status answers checked against a replay of %d log entries", checked, last)
}

func tctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// ready means this server can serve writes now: a server that lost its
// quorum says so within a few seconds.
func TestReadyMeansWritable(t *testing.T) {
	servers := startCluster(t, 3)
	for _, s := range servers {
		if st := waitReady(t, s, 20*time.Second); st.ReadyReason != "" {
			t.Errorf("%s ready with a reason: %q", s.cfg.NodeID, st.ReadyReason)
		}
	}
	servers[1].shutdown()
	servers[2].shutdown()
	lost := time.Now()
	deadline := lost.Add(10 * time.Second)
	for {
		st, err := servers[0].statusOnly(tctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if !st.Ready {
			t.Logf("ready false %s after the quorum was lost: %s", time.Since(lost).Round(time.Millisecond), st.ReadyReason)
			if !strings.Contains(st.ReadyReason, "quorum") && !strings.Contains(st.ReadyReason, "no leader") {
				t.Errorf("ready_reason %q names neither a missing leader nor quorum", st.ReadyReason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status still says ready 10 s after two of three servers stopped (raft state %s, leader %q)", st.RaftState, st.LeaderId)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitReady(t *testing.T, s *running, timeout time.Duration) *operatorpb.StatusResponse {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := s.statusOnly(tctx(t))
		if err == nil && st.Ready {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s: %v %v", s.cfg.NodeID, timeout, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Durations from the wire are range-checked before they are converted: a
// TTL whose nanoseconds overflow int64 is refused, not wrapped around to a
// short one.
func TestWireDurationsRangeChecked(t *testing.T) {
	servers := startCluster(t, 1)
	op := servers[0].operator()
	const (
		wrapsTo10Min = 18446744674 // * 1e9 wraps to about 600 s
		wrapsTo1h    = 18446747674 // * 1e9 wraps to about 3600 s
	)
	for _, ttl := range []int64{wrapsTo10Min, wrapsTo1h, math.MaxInt64, -1} {
		_, err := op.CreateJoinToken(tctx(t), &operatorpb.CreateJoinTokenRequest{Kind: TokenKindAgent, TtlSeconds: ttl})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateJoinToken(ttl_seconds %d) = %v, want InvalidArgument", ttl, err)
		}
		_, err = op.CreateEntry(tctx(t), &operatorpb.CreateEntryRequest{Entry: &operatorpb.Entry{
			SpiffeId: "spiffe://example.org/w", ParentId: "spiffe://example.org/meshca/agent/x",
			Selectors: []*operatorpb.Selector{{Type: "unix", Value: "uid:1000"}}, TtlSeconds: ttl}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateEntry(ttl_seconds %d) = %v, want InvalidArgument", ttl, err)
		}
		_, err = op.MintX509SVID(tctx(t), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/w", Csr: testCSR(t), TtlSeconds: ttl})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("MintX509SVID(ttl_seconds %d) = %v, want InvalidArgument", ttl, err)
		}
	}
}

func testCSR(t *testing.T) []byte {
	t.Helper()
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}
