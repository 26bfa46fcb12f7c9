package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/internal/wallclock"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kill the leader under a steady write load on every server: a new leader
// is elected, writes resume, and every acknowledged write is on every
// survivor exactly once.
func TestLeaderKillUnderLoad(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := newWriter()
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go func(n *testNode, prefix string) {
				defer wg.Done()
				w.run(ctx, n, prefix)
			}(n, fmt.Sprintf("%s-w%d", n.id, k))
		}
	}
	time.Sleep(time.Second)
	old := c.leader()
	before := w.ackedCount()
	if before == 0 {
		t.Fatal("no write acknowledged before the kill")
	}
	killed := time.Now()
	old.stop()
	var newLeader *testNode
	for newLeader == nil {
		if time.Since(killed) > 15*time.Second {
			t.Fatal("no new leader 15 s after the leader was killed")
		}
		time.Sleep(10 * time.Millisecond)
		newLeader = c.leader()
	}
	elected := time.Since(killed)
	t.Logf("leader %s killed; %s elected after %s (target ≤ 3 s; BenchmarkFailover measures it)", old.id, newLeader.id, elected)
	resumedAt := w.ackedCount()
	deadline := time.Now().Add(10 * time.Second)
	for w.ackedCount() < resumedAt+100 {
		if time.Now().After(deadline) {
			t.Fatal("writes did not resume after the failover")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()

	c.requireConverged()
	for _, n := range c.nodes {
		if !n.running {
			continue
		}
		r := n.node.FSM().Read()
		for serial := range w.acked {
			if r.LedgerRecord([]byte(serial)) == nil {
				t.Fatalf("%s lost acknowledged write %s", n.id, serial)
			}
		}
		// Nothing but attempted writes, each once (the ledger is keyed by serial).
		if got := r.LedgerLen(); got < len(w.acked) || got > len(w.attempted) {
			t.Errorf("%s holds %d records; %d acknowledged, %d attempted", n.id, got, len(w.acked), len(w.attempted))
		}
	}
	t.Logf("%d writes acknowledged (%d before the kill), all present on both survivors", len(w.acked), before)
}

// A follower restarted from its disk catches up from the leader's log, and
// ends with the same state hash as its peers.
func TestRestartedFollowerCatchesUpFromLog(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	leader := c.leader()
	var follower *testNode
	for _, n := range c.nodes {
		if n != leader {
			follower = n
			break
		}
	}
	follower.stop()
	for i := 0; i < 200; i++ {
		if err := leader.node.CommitLedger(context.Background(), record(fmt.Sprint("while-down-", i))); err != nil {
			t.Fatal(err)
		}
	}
	follower.start()
	c.requireConverged()
	if follower.node.FSM().Read().LedgerLen() != 200 {
		t.Errorf("restarted follower has %d records, want 200", follower.node.FSM().Read().LedgerLen())
	}
	// Every server restarted from disk comes back to the same state.
	want := leader.hash()
	for _, n := range c.nodes {
		n.stop()
	}
	for _, n := range c.nodes {
		n.start()
	}
	c.waitLeader(c.nodes[0])
	c.requireConverged()
	if got := c.nodes[0].hash(); got != want {
		t.Error("state hash changed across a full restart from disk")
	}
}

// A follower so far behind that the leader has compacted its log catches up
// through a snapshot install.
func TestFarBehindFollowerInstallsSnapshot(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{snapshotThreshold: 50, trailingLogs: 10})
	leader := c.leader()
	var follower *testNode
	for _, n := range c.nodes {
		if n != leader {
			follower = n
			break
		}
	}
	follower.stop()
	for i := 0; i < 300; i++ {
		if err := leader.node.CommitLedger(context.Background(), record(fmt.Sprint("behind-", i))); err != nil {
			t.Fatal(err)
		}
	}
	// Every running server compacts its log, so that whichever leads
	// when the follower returns (an election may have moved leadership on
	// a busy machine) can only send a snapshot.
	for _, n := range c.nodes {
		if !n.running {
			continue
		}
		if err := n.node.Raft().Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
		if first, _ := n.stores.Log.FirstIndex(); first <= 2 {
			t.Fatalf("%s's log was not compacted (first index %d)", n.id, first)
		}
	}
	follower.start()
	c.requireConverged()
	stats := follower.node.Raft().Stats()
	if idx, _ := strconv.Atoi(stats["last_snapshot_index"]); idx == 0 {
		t.Errorf("follower caught up without a snapshot install: %v", stats)
	}
	if n := follower.node.FSM().Read().LedgerLen(); n != 300 {
		t.Errorf("follower has %d records, want 300", n)
	}
}

// A minority partition commits nothing; after the heal the cluster
// converges to one state.
func TestMinorityPartitionCommitsNothing(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	old := c.leader()
	c.net.Partition(old.id)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := old.node.CommitLedger(ctx, record("minority-write"))
	cancel()
	if err == nil {
		t.Fatal("the isolated leader committed a write")
	}
	var majority []*testNode
	for _, n := range c.nodes {
		if n != old {
			majority = append(majority, n)
		}
	}
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := majority[i%2].node.CommitLedger(ctx, record(fmt.Sprint("majority-", i))); err != nil {
			t.Fatalf("majority write: %v", err)
		}
		cancel()
	}
	c.net.Heal()
	c.requireConverged()
	for _, n := range c.nodes {
		r := n.node.FSM().Read()
		if r.LedgerRecord([]byte("minority-write")) != nil {
			t.Errorf("%s holds the minority's uncommitted write", n.id)
		}
		if r.LedgerLen() != 20 {
			t.Errorf("%s holds %d records, want 20", n.id, r.LedgerLen())
		}
	}
}

// One join token, 50 concurrent consumers over 3 servers: exactly one wins.
func TestJoinTokenConsumedExactlyOnceAcrossServers(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	hash := sha256.Sum256([]byte("secret-token"))
	c.apply(c.nodes[1], &raftpb.Command{Op: &raftpb.Command_CreateJoinToken{CreateJoinToken: &raftpb.CreateJoinToken{
		Token: &raftpb.JoinToken{Hash: hash[:], Kind: "agent", ExpiresUnixNano: time.Now().Add(time.Hour).UnixNano()}}}})
	var wins, consumed, other atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			n := c.nodes[i%3]
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := n.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_ConsumeJoinToken{ConsumeJoinToken: &raftpb.ConsumeJoinToken{
				Hash: hash[:], Kind: "agent", Consumer: fmt.Sprint("agent-", i)}}})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, raftfsm.ErrTokenConsumed):
				consumed.Add(1)
			default:
				other.Add(1)
				t.Errorf("consumer %d: %v", i, err)
			}
		}(i)
	}
	wg.Wait()
	if wins.Load() != 1 || consumed.Load() != 49 {
		t.Errorf("%d consumers won, %d were told the token was used, %d failed otherwise; want 1, 49, 0", wins.Load(), consumed.Load(), other.Load())
	}
	c.requireConverged()
}

// Snapshot save, wipe, restore: the same state hash. A corrupted snapshot
// is refused with a clear error and the state stays.
func TestSnapshotSaveWipeRestore(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	for i := 0; i < 100; i++ {
		if err := c.nodes[i%3].node.CommitLedger(context.Background(), record(fmt.Sprint("saved-", i))); err != nil {
			t.Fatal(err)
		}
	}
	follower := c.nodes[1]
	c.sync(follower)
	saved := snapshotOf(t, follower)
	want := follower.hash()

	// Wipe: the same servers, empty data directories, a new cluster.
	c.wipe()
	if c.nodes[0].hash() == want {
		t.Fatal("the wiped cluster still has the saved state")
	}
	before := c.nodes[0].hash()
	bad := bytes.Clone(saved)
	bad[len(bad)/2] ^= 0x01
	_, err := c.nodes[2].node.Restore(context.Background(), bytes.NewReader(bad))
	if !errors.Is(err, raftfsm.ErrCorruptSnapshot) {
		t.Fatalf("corrupt snapshot: %v, want ErrCorruptSnapshot", err)
	}
	c.requireConverged()
	if c.nodes[0].hash() != before {
		t.Fatal("a refused snapshot changed the state")
	}

	// Restore through a follower: forwarded to the leader, replicated to all.
	var via *testNode
	for _, n := range c.nodes {
		if !n.node.IsLeader() {
			via = n
			break
		}
	}
	got, err := via.node.Restore(context.Background(), bytes.NewReader(saved))
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Error("Restore reported another state hash than the saved one")
	}
	c.requireConverged()
	for _, n := range c.nodes {
		if h := n.hash(); h != want {
			t.Errorf("%s: state hash after restore differs from the saved state's", n.id)
		}
	}
	// And the cluster keeps working.
	if err := via.node.CommitLedger(context.Background(), record("after-restore")); err != nil {
		t.Fatal(err)
	}
	c.requireConverged()
}

// A Raft peer without a valid server certificate of the trust domain can
// neither send entries nor ask for votes.
func TestRaftRejectsUnauthenticatedPeers(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	leader := c.leader()
	term := leader.node.Raft().Stats()["term"]
	td := spiffeid.RequireTrustDomainFromString(testTD)

	rogueCA := newCA(t) // same trust domain name, different root
	foreignCert, foreignRoots := issueTLS(t, rogueCA, "spiffe://"+testTD+naming.ServerIDPrefix+"rogue")
	workloadCert, roots := issueTLS(t, c.ca, "spiffe://"+testTD+"/ns/default/sa/web") // right CA, not a server
	cases := map[string]*Identity{}
	foreign := NewIdentity(td, nil)
	foreign.Update(foreignCert, append(foreignRoots, roots...)) // it even trusts our roots
	cases["certificate from another CA"] = foreign
	workload := NewIdentity(td, nil)
	workload.Update(workloadCert, roots)
	cases["workload certificate"] = workload

	for name, id := range cases {
		t.Run(name, func(t *testing.T) {
			ln := listen(t, "")
			serverTLS, clientTLS := id.PeerTLS()
			trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
				Stream:  &tlsStreamLayer{ln: ln, advertise: ln.Addr(), serverCfg: serverTLS, clientCfg: clientTLS, dial: defaultDial},
				MaxPool: 1, Timeout: 2 * time.Second, Logger: hclog.NewNullLogger(),
			})
			defer trans.Close()
			target := raft.ServerAddress(leader.raftAddr)
			var aeResp raft.AppendEntriesResponse
			err := trans.AppendEntries("s1", target, &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte("rogue"), Addr: []byte(ln.Addr().String())}, Term: 1000}, &aeResp)
			if err == nil {
				t.Error("AppendEntries from an unauthenticated peer succeeded")
			}
			var rvResp raft.RequestVoteResponse
			err = trans.RequestVote("s1", target, &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("rogue"), Addr: []byte(ln.Addr().String())}, Term: 1000, LastLogIndex: 1 << 40, LastLogTerm: 1000}, &rvResp)
			if err == nil {
				t.Error("RequestVote from an unauthenticated peer succeeded")
			}
		})
	}
	if got := leader.node.Raft().Stats()["term"]; got != term || !leader.node.IsLeader() {
		t.Errorf("rogue peers disturbed the leader: term %s -> %s, leader %v", term, got, leader.node.IsLeader())
	}
}

// A snapshot made at a higher index than this cluster's log (by a cluster
// that lived longer) is restored at this log's index: no replica's applied
// index runs ahead of its log, so a follower's ReadIndex still waits for
// the writes before it and reads them.
func TestRestoreOfAHigherIndexSnapshot(t *testing.T) {
	c := newTestCluster(t, 3, clusterOpts{})
	for i := 0; i < 20; i++ {
		if err := c.nodes[i%3].node.CommitLedger(context.Background(), record(fmt.Sprint("before-", i))); err != nil {
			t.Fatal(err)
		}
	}
	c.sync(c.nodes[0])
	var far bytes.Buffer
	if _, err := raftfsm.Reindex(bytes.NewReader(snapshotOf(t, c.nodes[0])), &far, 5_000_000); err != nil {
		t.Fatal(err)
	}
	if _, err := c.leader().node.Restore(context.Background(), &far); err != nil {
		t.Fatal(err)
	}
	c.requireConverged()
	for _, n := range c.nodes {
		if applied, last := n.node.FSM().AppliedIndex(), n.node.Raft().LastIndex(); applied > last {
			t.Errorf("%s: applied index %d is ahead of its log (last index %d)", n.id, applied, last)
		}
	}
	// Read-your-writes on every follower, right after each write.
	leader := c.leader()
	for i := 0; i < 50; i++ {
		id := fmt.Sprintf("entry-%d", i)
		c.apply(leader, &raftpb.Command{Op: &raftpb.Command_PutEntry{PutEntry: &raftpb.PutEntry{Entry: &raftpb.Entry{
			Id: id, ParentId: "spiffe://example.org/meshca/agent/x", SpiffeId: "spiffe://example.org/w"}}}})
		for _, n := range c.nodes {
			if n == leader {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := n.node.ReadIndex(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if n.node.FSM().Read().Entry(id) == nil {
				t.Fatalf("%s: ReadIndex returned before the entry written just before it was applied", n.id)
			}
		}
	}
}

// TestLedgerGapGroupsConcurrentRecords: under load the group commits start
// at most once per LedgerGap, so concurrent callers share Raft entries; a
// lone caller is never held back, however long the gap.
func TestLedgerGapGroupsConcurrentRecords(t *testing.T) {
	t.Run("lone callers go at once", func(t *testing.T) {
		c := newTestCluster(t, 1, clusterOpts{ledgerGap: time.Hour})
		n := c.nodes[0]
		// A held-back record would wait an hour: far past the deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for i := range 5 {
			if err := n.node.CommitLedger(ctx, record(fmt.Sprint("lone-", i))); err != nil {
				t.Fatalf("record %d, right after the one before: %v", i, err)
			}
		}
	})
	t.Run("a batch of several callers waits for more", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		group := func() *pendingGroup { return &pendingGroup{recs: []*raftpb.LedgerRecord{record("r")}} }
		b := newLedgerBatcher(nil, 4, time.Hour)
		b.lastStart = wallclock.Now()
		// Two callers queued together, two more arriving: held until full.
		batch := []*pendingGroup{group(), group()}
		b.in <- group()
		b.in <- group()
		b.in <- group() // beyond the batch's bound: left for the next one
		if !b.linger(ctx, &batch) || len(batch) != 4 || len(b.in) != 1 {
			t.Fatalf("held batch has %d groups (want 4), %d left queued (want 1)", len(batch), len(b.in))
		}
		// One caller alone is not held, whatever is queued behind it.
		batch = []*pendingGroup{group()}
		if !b.linger(ctx, &batch) || len(batch) != 1 || len(b.in) != 1 {
			t.Fatalf("a lone caller's batch has %d groups, want 1 and no wait", len(batch))
		}
		// A commit that started a gap ago or more: no wait either.
		b.lastStart = wallclock.Now().Add(-2 * time.Hour)
		batch = []*pendingGroup{group(), group()}
		if !b.linger(ctx, &batch) || len(batch) != 2 {
			t.Fatalf("after an idle gap the batch has %d groups, want 2 and no wait", len(batch))
		}
		// A short gap with nothing more arriving: sent when it has passed.
		<-b.in
		b.gap, b.lastStart = 20*time.Millisecond, wallclock.Now()
		batch = []*pendingGroup{group(), group()}
		if !b.linger(ctx, &batch) || len(batch) != 2 {
			t.Fatalf("after the gap the batch has %d groups, want 2", len(batch))
		}
		// The batcher stopping while a batch lingers: refused, not sent.
		b.gap, b.lastStart = time.Hour, wallclock.Now()
		stopped, stop := context.WithCancel(ctx)
		stop()
		if b.linger(stopped, &batch) {
			t.Fatal("a lingering batch was sent after its batcher stopped")
		}
	})
}
