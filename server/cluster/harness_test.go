package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/meshca/meshca/ca"
	_ "github.com/meshca/meshca/ca/stepcas" // the test CA's ECDSA hierarchy
	"github.com/meshca/meshca/internal/faultnet"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/internal/rpcerr"
	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// The harness runs real Raft nodes in this process: real TCP on 127.0.0.1
// with mutual TLS 1.3, real raft-wal stores in temporary directories, and
// the cluster gRPC API, all connections through a fault-injecting network.

const testTD = "example.org"

type testCluster struct {
	t     testing.TB
	ca    *ca.LocalCA
	net   *faultnet.Network
	opts  clusterOpts
	nodes []*testNode
}

type clusterOpts struct {
	snapshotThreshold uint64
	trailingLogs      uint64
	quiet             bool
	ledgerGap         time.Duration // Config.LedgerGap
}

type testNode struct {
	c        *testCluster
	id       string
	dir      string
	raftAddr string
	apiAddr  string
	identity *Identity
	stores   *store.RaftStores
	node     *Node
	grpc     *grpc.Server
	running  bool
}

func newCA(t testing.TB) *ca.LocalCA {
	t.Helper()
	dir := t.TempDir()
	kek, err := ca.CreateKEKFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := ca.OpenLocal(ca.LocalConfig{Dir: dir, KEK: kek, TrustDomain: spiffeid.RequireTrustDomainFromString(testTD)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// issueTLS issues an ECDSA X509-SVID for id from l and returns it as a TLS
// certificate with the roots.
func issueTLS(t testing.TB, l *ca.LocalCA, id string) (*tls.Certificate, []*x509.Certificate) {
	t.Helper()
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := l.Issuer(ca.ProfileECDSA)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := issuer.SignX509SVID(context.Background(), ca.X509SVIDParams{CSR: csr, SPIFFEID: id})
	if err != nil {
		t.Fatal(err)
	}
	root, _ := l.Root(ca.ProfileECDSA)
	rc, _ := root.Certificate().X509()
	return &tls.Certificate{Certificate: svid.Certificates, PrivateKey: key}, []*x509.Certificate{rc}
}

func newTestCluster(t testing.TB, size int, opts clusterOpts) *testCluster {
	t.Helper()
	c := &testCluster{t: t, ca: newCA(t), net: faultnet.New(), opts: opts}
	for i := 0; i < size; i++ {
		n := &testNode{c: c, id: fmt.Sprintf("s%d", i+1), dir: t.TempDir()}
		id := NewIdentity(spiffeid.RequireTrustDomainFromString(testTD), nil)
		cert, roots := issueTLS(t, c.ca, "spiffe://"+testTD+naming.ServerIDPrefix+n.id)
		if err := id.Update(cert, roots); err != nil {
			t.Fatal(err)
		}
		n.identity = id
		c.nodes = append(c.nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.stop()
		}
	})
	c.form()
	return c
}

// form starts every node and forms the cluster: the first bootstraps, the
// others are added as voters, and every server is recorded in the state.
func (c *testCluster) form() {
	t := c.t
	t.Helper()
	first := c.nodes[0]
	first.start()
	if err := first.node.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	c.waitLeader(first)
	c.putServer(first)
	for _, n := range c.nodes[1:] {
		n.start()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := first.node.AddVoter(ctx, n.id, n.raftAddr); err != nil {
			t.Fatalf("add voter %s: %v", n.id, err)
		}
		cancel()
		c.putServer(n)
	}
	for _, n := range c.nodes {
		c.sync(n)
	}
}

// wipe stops every node, gives it an empty data directory, and forms the
// cluster again on the same addresses with the same identities.
func (c *testCluster) wipe() {
	for _, n := range c.nodes {
		n.stop()
		n.dir = c.t.TempDir()
	}
	c.form()
}

func (c *testCluster) putServer(n *testNode) {
	c.t.Helper()
	c.apply(c.nodes[0], &raftpb.Command{Op: &raftpb.Command_PutServer{PutServer: &raftpb.PutServer{
		Server: &raftpb.Server{NodeId: n.id, RaftAddr: n.raftAddr, ApiAddr: n.apiAddr}}}})
}

func (c *testCluster) apply(via *testNode, cmd *raftpb.Command) *raftpb.Result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := via.node.Apply(ctx, cmd)
	if err != nil {
		c.t.Fatalf("apply via %s: %v", via.id, err)
	}
	return res
}

// listen listens on addr, or on a free port when addr is empty.
func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // a port just released may linger briefly
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal(err)
	return nil
}

func (n *testNode) start() {
	t := n.c.t
	t.Helper()
	stores, err := store.OpenRaft(n.dir, store.RaftConfig{Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	raftLn := listen(t, n.raftAddr)
	apiLn := listen(t, n.apiAddr)
	n.raftAddr, n.apiAddr = raftLn.Addr().String(), apiLn.Addr().String()
	n.c.net.Register(n.id, n.raftAddr, n.apiAddr)
	cfg := Config{
		NodeID: n.id, RaftListener: raftLn, Identity: n.identity, FSM: raftfsm.New(), Stores: stores,
		Dial: n.c.net.Dial(n.id), RaftLogger: hclog.NewNullLogger(),
		SnapshotThreshold: n.c.opts.snapshotThreshold, TrailingLogs: n.c.opts.trailingLogs,
		LedgerGap: n.c.opts.ledgerGap,
	}
	node, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append(rpcerr.ServerOptions(nil, nil), grpc.Creds(credentials.NewTLS(n.identity.APIServerTLS())))...)
	clusterpb.RegisterClusterServer(gs, NewService(node, Handlers{}))
	go gs.Serve(apiLn)
	n.stores, n.node, n.grpc, n.running = stores, node, gs, true
}

// stop shuts the node down hard: no leadership transfer, connections cut.
func (n *testNode) stop() {
	if !n.running {
		return
	}
	n.running = false
	n.grpc.Stop()
	n.node.Shutdown()
	n.stores.Close()
}

func (c *testCluster) leader() *testNode {
	for _, n := range c.nodes {
		if n.running && n.node.IsLeader() {
			return n
		}
	}
	return nil
}

func (c *testCluster) waitLeader(via *testNode) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id, err := via.node.WaitLeader(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	return id
}

// sync makes n's state reflect every write committed so far. A server
// that refuses because it has no leader yet (just healed or restarted) is
// asked again until it has one.
func (c *testCluster) sync(n *testNode) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := n.node.ReadIndex(ctx)
		if err == nil {
			return
		}
		var unavailable *UnavailableError
		if !errors.As(err, &unavailable) || ctx.Err() != nil {
			c.t.Fatalf("read index on %s: %v", n.id, err)
		}
		select {
		case <-n.node.lead.changes():
		case <-ctx.Done():
		}
	}
}

func (n *testNode) hash() [32]byte {
	h, err := n.node.FSM().StateHash()
	if err != nil {
		n.c.t.Fatal(err)
	}
	return h
}

// requireConverged waits until every running node has the same state hash.
func (c *testCluster) requireConverged() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var first [32]byte
		same, n := true, 0
		for _, node := range c.nodes {
			if !node.running {
				continue
			}
			c.sync(node)
			h := node.hash()
			if n == 0 {
				first = h
			} else if h != first {
				same = false
			}
			n++
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatal("state hashes did not converge")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writer commits ledger records in a loop through one node and remembers
// which were acknowledged.
type writer struct {
	mu        sync.Mutex
	acked     map[string]bool
	attempted map[string]bool
}

func newWriter() *writer { return &writer{acked: map[string]bool{}, attempted: map[string]bool{}} }

func record(serial string) *raftpb.LedgerRecord {
	return &raftpb.LedgerRecord{Serial: []byte(serial), SpiffeId: "spiffe://" + testTD + "/w", NodeId: "n", Profile: "ecdsa",
		IssuerId: "ecdsa/intermediate/1", NotBeforeUnix: 1, NotAfterUnix: 4_000_000_000}
}

func (w *writer) run(ctx context.Context, n *testNode, prefix string) {
	for i := 0; ctx.Err() == nil; i++ {
		serial := fmt.Sprintf("%s-%06d", prefix, i)
		w.mu.Lock()
		w.attempted[serial] = true
		w.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := n.node.CommitLedger(cctx, record(serial))
		cancel()
		if err == nil {
			w.mu.Lock()
			w.acked[serial] = true
			w.mu.Unlock()
		}
	}
}

func (w *writer) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// snapshotOf encodes n's current state as a snapshot stream.
func snapshotOf(t testing.TB, n *testNode) []byte {
	t.Helper()
	snap, err := n.node.FSM().Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.data
}

type memSink struct{ data []byte }

func (s *memSink) Write(p []byte) (int, error) { s.data = append(s.data, p...); return len(p), nil }
func (s *memSink) Close() error                { return nil }
func (s *memSink) ID() string                  { return "mem" }
func (s *memSink) Cancel() error               { return nil }

var _ io.Writer = (*memSink)(nil)
