package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// syncStream is an in-process Sync stream of one agent: its context names
// the agent's SPIFFE ID as a verified TLS peer would, and it counts what it
// receives.
type syncStream struct {
	grpc.ServerStream
	ctx   context.Context
	mu    sync.Mutex
	got   []*nodepb.SyncUpdate
	sends atomic.Int64
	first chan struct{}
}

func (s *syncStream) Context() context.Context { return s.ctx }

func (s *syncStream) Send(u *nodepb.SyncUpdate) error {
	s.mu.Lock()
	s.got = append(s.got, u)
	s.mu.Unlock()
	if s.sends.Add(1) == 1 {
		close(s.first)
	}
	return nil
}

func agentContext(ctx context.Context, id string) context.Context {
	u, _ := url.Parse(id)
	state := tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}
	return peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
}

// fleetOfStreams records n nodes and opens a Sync stream for each, waiting
// until every stream has its first update.
func fleetOfStreams(tb testing.TB, r *running, n int) ([]string, []*syncStream, func()) {
	tb.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("spiffe://example.org/meshca/agent/test/a%d", i)
		if _, err := r.srv.node.Apply(context.Background(), &raftpb.Command{Op: &raftpb.Command_PutNode{PutNode: &raftpb.PutNode{
			Node: &raftpb.Node{SpiffeId: ids[i], Attestor: "test"}}}}); err != nil {
			tb.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	streams := make([]*syncStream, n)
	svc := &nodeService{s: r.srv}
	for i, id := range ids {
		st := &syncStream{ctx: agentContext(ctx, id), first: make(chan struct{})}
		streams[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := svc.Sync(&nodepb.SyncRequest{}, st); err != nil && ctx.Err() == nil {
				tb.Errorf("sync %s: %v", id, err)
			}
		}()
	}
	for _, st := range streams {
		select {
		case <-st.first:
		case <-time.After(60 * time.Second):
			tb.Fatal("a Sync stream got no first update")
		}
	}
	return ids, streams, func() { cancel(); wg.Wait() }
}

// flush sends one change every stream serves (a JWT key) and waits until
// every stream has it: whatever was woken before has been sent by then.
func flush(tb testing.TB, r *running, streams []*syncStream, want func(i int) int64) {
	tb.Helper()
	k, err := newJWTKey(r.srv.cfg.KEK, r.srv.cfg.Clock.Now(), raftpb.AuthorityState_OLD)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := r.srv.node.Apply(context.Background(), &raftpb.Command{Op: &raftpb.Command_PutJwtKey{PutJwtKey: &raftpb.PutJWTKey{Key: k}}}); err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for i, st := range streams {
		for st.sends.Load() < want(i) {
			if time.Now().After(deadline) {
				tb.Fatalf("stream %d: %d updates, want %d", i, st.sends.Load(), want(i))
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// With 1,000 agents connected to one server, one entry change sends
// exactly one Sync update, to the entry's parent, and one attestation sends
// none: no other stream is even woken.
func TestSyncWakesOnlyTheStreamsAChangeConcerns(t *testing.T) {
	kek := newKEK(t)
	c := testConfig(t, "s1", kek)
	c.Bootstrap, c.TrustDomain = true, "example.org"
	r := mustStart(t, c)
	waitBootstrapped(t, r)
	waitCRLs(t, r)
	const n = 1000
	ids, streams, stop := fleetOfStreams(t, r, n)
	defer stop()
	base := make([]int64, n)
	for i, st := range streams {
		base[i] = st.sends.Load()
	}
	wakes := r.srv.syncWakes.Load()

	// An entry for agent 7.
	if _, err := r.srv.node.Apply(context.Background(), &raftpb.Command{Op: &raftpb.Command_PutEntry{PutEntry: &raftpb.PutEntry{Entry: &raftpb.Entry{
		Id: "e1", ParentId: ids[7], SpiffeId: "spiffe://example.org/w", Profile: "ecdsa", TtlSeconds: 3600,
		Selectors: []*raftpb.Selector{{Type: "unix", Value: "uid:1"}}}}}}); err != nil {
		t.Fatal(err)
	}
	// Agent 9 attests again.
	if _, err := r.srv.node.Apply(context.Background(), &raftpb.Command{Op: &raftpb.Command_PutNode{PutNode: &raftpb.PutNode{
		Node: &raftpb.Node{SpiffeId: ids[9], Attestor: "test", AttestedUnixNano: 1}}}}); err != nil {
		t.Fatal(err)
	}
	// Then a change for everyone, to know when the others are done.
	flush(t, r, streams, func(i int) int64 {
		if i == 7 {
			return base[i] + 2
		}
		return base[i] + 1
	})
	for i, st := range streams {
		want := base[i] + 1
		if i == 7 {
			want++
		}
		if got := st.sends.Load(); got != want {
			t.Errorf("stream %d (%s): %d updates after the changes, want %d", i, ids[i], got-base[i], want-base[i])
		}
	}
	st := streams[7]
	st.mu.Lock()
	u := st.got[len(st.got)-2]
	st.mu.Unlock()
	if len(u.Resources) != 1 || u.Resources[0].GetEntry().GetId() != "e1" {
		t.Errorf("agent 7's update: %v, want just the new entry", u)
	}
	// Woken: agent 7 (entry), agent 9 (its node), and all for the JWT key.
	if got := r.srv.syncWakes.Load() - wakes; got != n+2 {
		t.Errorf("%d stream wake-ups for an entry change, an attestation and a bundle change, want %d", got, n+2)
	}
}

// BenchmarkSyncEntryChange measures the server CPU time of one entry
// change with 5,000 agents connected, each change to another agent's entry
// (go test ./server -run '^$' -bench SyncEntryChange -benchtime 2000x).
func BenchmarkSyncEntryChange(b *testing.B) {
	c := testConfig(b, "s1", newKEK(b))
	c.Bootstrap, c.TrustDomain = true, "example.org"
	r := mustStart(b, c)
	waitBootstrapped(b, r)
	waitCRLs(b, r)
	const n = 5000
	ids, streams, stop := fleetOfStreams(b, r, n)
	defer stop()
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st := streams[i%n]
		before := st.sends.Load()
		if _, err := r.srv.node.Apply(context.Background(), &raftpb.Command{Op: &raftpb.Command_PutEntry{PutEntry: &raftpb.PutEntry{Entry: &raftpb.Entry{
			Id: fmt.Sprint("e", i), ParentId: ids[i%n], SpiffeId: "spiffe://example.org/w", Profile: "ecdsa", TtlSeconds: 3600,
			Selectors: []*raftpb.Selector{{Type: "unix", Value: "uid:1"}}}}}}); err != nil {
			b.Fatal(err)
		}
		for st.sends.Load() == before {
			time.Sleep(10 * time.Microsecond)
		}
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(b.N)
	b.ReportMetric(float64(cpu.Microseconds()), "cpu-us/change")
}

// waitCRLs waits until the server has published the CRLs of its roots and
// intermediates, which it does once at start: later changes in the test
// are then the test's own.
func waitCRLs(tb testing.TB, r *running) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(r.srv.fsm.Read().CRLs()) < 4 {
		if time.Now().After(deadline) {
			tb.Fatalf("%d CRLs published, want 4 (two roots, two intermediates)", len(r.srv.fsm.Read().CRLs()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The trust domain's OPA key reaches a connected agent when it is stored,
// not only with the next bundle it signs.
func TestSyncPushesTheOPAKey(t *testing.T) {
	kek := newKEK(t)
	c := testConfig(t, "s1", kek)
	c.Bootstrap, c.TrustDomain = true, "example.org"
	r := mustStart(t, c)
	waitBootstrapped(t, r)
	_, streams, stop := fleetOfStreams(t, r, 1)
	defer stop()
	key := &raftpb.OPAKey{Kid: "meshca-opa-test", PublicKey: []byte("public"), SealedKey: []byte("{}"), CreatedUnix: 1}
	if _, err := r.srv.node.Apply(context.Background(), &raftpb.Command{Op: &raftpb.Command_PutOpaKey{PutOpaKey: &raftpb.PutOPAKey{Key: key}}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		streams[0].mu.Lock()
		got := false
		for _, u := range streams[0].got {
			for _, res := range u.Resources {
				if res.Kind == ResourceOPAKey && res.GetOpaKey().GetKid() == key.Kid {
					got = true
				}
			}
		}
		streams[0].mu.Unlock()
		if got {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the stored OPA key was not pushed to the Sync stream within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
