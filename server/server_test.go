package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// These tests run real servers in this process: TCP on 127.0.0.1, mutual
// TLS, raft-wal on temporary directories, operator API on Unix sockets.

type running struct {
	t    testing.TB
	cfg  Config
	srv  *Server
	stop context.CancelFunc
	done chan error
}

func newKEK(t testing.TB) *ca.KEK {
	t.Helper()
	k, err := ca.CreateKEKFile(filepath.Join(t.TempDir(), "kek"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testConfig(t testing.TB, node string, kek *ca.KEK) Config {
	dir, err := os.MkdirTemp("", "msrv") // short: it holds a Unix socket
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return Config{DataDir: dir, NodeID: node, RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: kek,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), RaftLogger: hclog.NewNullLogger()}
}

func start(t testing.TB, cfg Config) (*running, error) {
	t.Helper()
	srv, err := New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, cfg: cfg, srv: srv, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Run(ctx) }()
	t.Cleanup(r.shutdown)
	return r, nil
}

func mustStart(t testing.TB, cfg Config) *running {
	t.Helper()
	r, err := start(t, cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeID, err)
	}
	return r
}

func (r *running) shutdown() {
	if r.stop == nil {
		return
	}
	r.stop()
	r.stop = nil
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("%s: Run: %v", r.cfg.NodeID, err)
		}
	case <-time.After(20 * time.Second):
		r.t.Errorf("%s did not stop", r.cfg.NodeID)
	}
}

func (r *running) operator() operatorpb.OperatorClient {
	r.t.Helper()
	conn, err := grpc.NewClient("unix://"+r.srv.AdminSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	return operatorpb.NewOperatorClient(conn)
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func (r *running) token(kind string) string {
	r.t.Helper()
	resp, err := r.operator().CreateJoinToken(ctx(r.t), &operatorpb.CreateJoinTokenRequest{Kind: kind})
	if err != nil {
		r.t.Fatal(err)
	}
	return resp.Token
}

func (r *running) status() *operatorpb.StatusResponse {
	r.t.Helper()
	if err := r.srv.Node().ReadIndex(ctx(r.t)); err != nil {
		r.t.Fatal(err)
	}
	st, err := r.operator().Status(ctx(r.t), &operatorpb.StatusRequest{})
	if err != nil {
		r.t.Fatal(err)
	}
	return st
}

func pemBundle(t *testing.T, pemBytes []byte) []*x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertificatesPEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func waitBootstrapped(t testing.TB, r *running) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		// Recorded, and ready to issue: its intermediates' first CRLs are
		// published moments after the bootstrap state.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ready, reason := r.srv.Readiness(ctx)
		cancel()
		if ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bootstrapped server not ready: %s", reason)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func joinCfg(t *testing.T, node string, kek *ca.KEK, via *running, token string, bundle []*x509.Certificate) Config {
	cfg := testConfig(t, node, kek)
	cfg.Join, cfg.JoinToken, cfg.TrustBundle = via.srv.APIAddr(), token, bundle
	return cfg
}

func TestBootstrapJoinRestart(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	bundle := pemBundle(t, s1.srv.TrustBundle())

	s2 := mustStart(t, joinCfg(t, "s2", kek, s1, s1.token(TokenKindServer), bundle))
	// s3 joins through s2, a follower: the join is forwarded to the leader.
	s3 := mustStart(t, joinCfg(t, "s3", kek, s2, s1.token(TokenKindServer), bundle))
	servers := []*running{s1, s2, s3}

	// The new members learn the configuration by replication.
	var peers *operatorpb.RaftListPeersResponse
	for deadline := time.Now().Add(20 * time.Second); ; {
		var err error
		if peers, err = s3.operator().RaftListPeers(ctx(t), &operatorpb.RaftListPeersRequest{}); err != nil {
			t.Fatal(err)
		}
		// Joined as non-voters, they are voters once caught up.
		if len(peers.Peers) == 3 && !slices.ContainsFunc(peers.Peers, func(p *operatorpb.Peer) bool { return p.Suffrage != "Voter" }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers %v, want 3 voters", peers.Peers)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range peers.Peers {
		if p.Suffrage != "Voter" {
			t.Errorf("peer %s is a %s", p.Id, p.Suffrage)
		}
	}
	hash, index := sameState(t, servers)
	for _, s := range servers {
		// Each server has its own intermediates, certified by the roots.
		for _, p := range ca.Profiles() {
			a, err := s.srv.id.authority(p.Name(), kek, nil)
			if err != nil {
				t.Fatalf("%s %s intermediate: %v", s.cfg.NodeID, p.Name(), err)
			}
			root, _ := p.ParseCertificate(s.srv.id.Roots[p.Name()])
			if err := ca.CheckSignedBy(a.Certificate(), root); err != nil {
				t.Errorf("%s %s intermediate: %v", s.cfg.NodeID, p.Name(), err)
			}
		}
	}
	r := s1.srv.fsm.Read()
	if n := len(r.Authorities()); n != 2+3*2 {
		t.Errorf("%d authorities in the state, want 2 roots + 6 intermediates", n)
	}
	if n := len(r.Servers()); n != 3 {
		t.Errorf("%d servers in the state, want 3", n)
	}

	// Restart every server from its disk: same cluster, same state.
	addrs := map[string][2]string{}
	for _, s := range servers {
		addrs[s.cfg.NodeID] = [2]string{s.srv.RaftAddr(), s.srv.APIAddr()}
		s.shutdown()
	}
	for i, s := range servers {
		cfg := s.cfg
		cfg.Bootstrap, cfg.Join = false, ""
		cfg.RaftAddr, cfg.APIAddr = addrs[cfg.NodeID][0], addrs[cfg.NodeID][1]
		servers[i] = mustStart(t, cfg)
	}
	// The servers may write (a CRL re-signed by the new leader) once
	// restarted: they agree on one state, and it is the state they had
	// when nothing was written since.
	after, afterIndex := sameState(t, servers)
	if afterIndex == index && after != hash {
		t.Errorf("after restart the state at index %d has hash %s, want %s", index, after, hash)
	}
	if afterIndex < index {
		t.Errorf("after restart the servers applied up to %d, before it %d", afterIndex, index)
	}
	r = servers[0].srv.fsm.Read()
	if n := len(r.Authorities()); n != 2+3*2 {
		t.Errorf("after restart %d authorities in the state, want 2 roots + 6 intermediates", n)
	}
	if n := len(r.Servers()); n != 3 {
		t.Errorf("after restart %d servers in the state, want 3", n)
	}
}

// sameState waits until every server reports the same applied index and
// state hash (writes may still be replicating), and returns them.
func sameState(t *testing.T, servers []*running) (hash string, index uint64) {
	t.Helper()
	var seen []string
	for deadline := time.Now().Add(20 * time.Second); ; {
		seen = seen[:0]
		first := servers[0].status()
		agree := true
		for _, s := range servers {
			st := s.status()
			seen = append(seen, fmt.Sprintf("%s: %d %s", s.cfg.NodeID, st.AppliedIndex, st.StateHash))
			if st.StateHash != first.StateHash || st.AppliedIndex != first.AppliedIndex {
				agree = false
			}
		}
		if agree {
			return first.StateHash, first.AppliedIndex
		}
		if time.Now().After(deadline) {
			t.Fatalf("the servers do not agree on one state within 20s: %v", seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBadJoinsAreRefused(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	bundle := pemBundle(t, s1.srv.TrustBundle())

	used := s1.token(TokenKindServer)
	mustStart(t, joinCfg(t, "s2", kek, s1, used, bundle))

	refused := func(name string, cfg Config, code codes.Code, text string) {
		t.Helper()
		_, err := start(t, cfg)
		if err == nil {
			t.Fatalf("%s: the server joined", name)
		}
		if status.Code(errors.Unwrap(err)) != code && !strings.Contains(err.Error(), code.String()) {
			t.Errorf("%s: error %v, want code %s", name, err, code)
		}
		if !strings.Contains(err.Error(), text) {
			t.Errorf("%s: error %q does not say %q", name, err, text)
		}
	}
	refused("reused token", joinCfg(t, "s3", kek, s1, used, bundle), codes.PermissionDenied, "already used")
	refused("unknown token", joinCfg(t, "s3", kek, s1, strings.Repeat("A", JoinTokenLen), bundle), codes.PermissionDenied, "unknown")
	refused("malformed token", joinCfg(t, "s3", kek, s1, "not-a-token", bundle), codes.InvalidArgument, "malformed join token")
	refused("agent token", joinCfg(t, "s3", kek, s1, s1.token(TokenKindAgent), bundle), codes.PermissionDenied, "not a server token")

	fresh := s1.token(TokenKindServer)
	refused("wrong KEK", joinCfg(t, "s3", newKEK(t), s1, fresh, bundle), codes.PermissionDenied, "key-encryption key")
	refused("name taken", joinCfg(t, "s2", kek, s1, fresh, bundle), codes.AlreadyExists, "already a member")

	// A trust bundle of another CA: the joining server does not trust the
	// cluster, sends nothing, and the token stays valid.
	otherDir := t.TempDir()
	otherKEK, _ := ca.CreateKEKFile(filepath.Join(otherDir, "kek"))
	other, err := ca.OpenLocal(ca.LocalConfig{Dir: otherDir, KEK: otherKEK, TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")})
	if err != nil {
		t.Fatal(err)
	}
	forged := pemBundle(t, other.Bundle().ForProfile(ca.ProfileECDSA).PEM())
	other.Close()
	if _, err := start(t, joinCfg(t, "s3", kek, s1, fresh, forged)); err == nil {
		t.Fatal("joined a cluster its trust bundle does not vouch for")
	}
	s3 := mustStart(t, joinCfg(t, "s3", kek, s1, fresh, bundle))

	peers, err := s1.operator().RaftListPeers(ctx(t), &operatorpb.RaftListPeersRequest{})
	if err != nil || len(peers.Peers) != 3 {
		t.Fatalf("peers %v (%v), want s1, s2, s3 only", peers, err)
	}
	_ = s3
	// No identity and no way to get one: a clear error.
	if _, err := New(testConfig(t, "lonely", kek)); err == nil || !strings.Contains(err.Error(), "--bootstrap") {
		t.Errorf("server without identity: %v", err)
	}
}

func TestOperatorSnapshotSaveRestore(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	for i := 0; i < 5; i++ {
		s1.token(TokenKindAgent)
	}
	op := s1.operator()
	save := func() []byte {
		stream, err := op.SnapshotSave(ctx(t), &operatorpb.SnapshotSaveRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		for {
			c, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return buf.Bytes()
			}
			if err != nil {
				t.Fatal(err)
			}
			buf.Write(c.Data)
		}
	}
	restore := func(b []byte) (string, error) {
		stream, err := op.SnapshotRestore(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		for len(b) > 0 {
			n := min(len(b), 1000)
			if err := stream.Send(&operatorpb.SnapshotChunk{Data: b[:n]}); err != nil {
				t.Fatal(err)
			}
			b = b[n:]
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return "", err
		}
		return resp.StateHash, nil
	}
	saved := save()
	want := s1.status().StateHash
	s1.token(TokenKindAgent) // the state moves on
	if s1.status().StateHash == want {
		t.Fatal("state did not change")
	}
	bad := bytes.Clone(saved)
	bad[len(bad)/2] ^= 1
	if _, err := restore(bad); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "corrupt snapshot") {
		t.Errorf("corrupt snapshot: %v, want InvalidArgument naming a corrupt snapshot", err)
	}
	moved := s1.status().StateHash
	got, err := restore(saved)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || s1.status().StateHash != want {
		t.Errorf("restored hash %s (status %s), want %s; before restore %s", got, s1.status().StateHash, want, moved)
	}
	// The server works on after a restore.
	s1.token(TokenKindAgent)
}

// The leader drops ledger records once their certificates have been expired
// for the grace period, and keeps the others.
func TestLedgerPruning(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	c1.LedgerGrace, c1.PruneInterval = time.Hour, 20*time.Millisecond
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	now := time.Now()
	for name, notAfter := range map[string]time.Time{
		"expired-long-ago":     now.Add(-2 * time.Hour),
		"expired-within-grace": now.Add(-30 * time.Minute),
		"valid":                now.Add(time.Hour),
	} {
		rec := &raftpb.LedgerRecord{Serial: []byte(name), SpiffeId: "spiffe://example.org/w", NotAfterUnix: notAfter.Unix()}
		if err := s1.srv.Node().CommitLedger(ctx(t), rec); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for s1.srv.fsm.Read().LedgerRecord([]byte("expired-long-ago")) != nil {
		if time.Now().After(deadline) {
			t.Fatal("expired record not pruned")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := s1.srv.fsm.Read()
	if r.LedgerRecord([]byte("expired-within-grace")) == nil || r.LedgerRecord([]byte("valid")) == nil {
		t.Error("pruning removed records within their grace period")
	}
}

// The operator mints an SVID through the server: it chains to the
// profile's root and is in the ledger; a bad request is refused.
func TestOperatorMint(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	for _, p := range ca.Profiles() {
		key, _ := p.GenerateKey()
		csr, _ := p.CreateCSR(key)
		resp, err := s1.operator().MintX509SVID(ctx(t), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/ops/tool", Csr: csr, Profile: p.Name()})
		if err != nil {
			t.Fatalf("%s: %v", p.Name(), err)
		}
		leaf, _ := p.ParseCertificate(resp.Chain[0])
		inter, _ := p.ParseCertificate(resp.Chain[1])
		root, _ := p.ParseCertificate(resp.Roots[0])
		if err := ca.CheckSignedBy(leaf, inter); err != nil {
			t.Error(err)
		}
		if err := ca.CheckSignedBy(inter, root); err != nil {
			t.Error(err)
		}
		if s1.srv.fsm.Read().LedgerRecord(leaf.SerialNumber.Bytes()) == nil {
			t.Errorf("%s: minted certificate not in the ledger", p.Name())
		}
	}
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	if _, err := s1.operator().MintX509SVID(ctx(t), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://other.org/x", Csr: csr}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("foreign trust domain: %v, want InvalidArgument", err)
	}
}

// With an admin address, the operator API answers over mutual TLS to the
// cluster's admins only; other SVIDs and certificate-less clients are
// refused. The admins are replicated: the bootstrap's --admin-id seeds
// them, a server that joins without any admits them too, and `admin
// add|remove` on one server changes who may operate every server.
func TestOperatorAPIOverMTLS(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	c1.AdminAddr, c1.AdminIDs = "127.0.0.1:0", []string{"spiffe://example.org/ops/alice"}
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	roots := pemBundle(t, s1.srv.TrustBundle())
	c2 := joinCfg(t, "s2", kek, s1, s1.token(TokenKindServer), roots)
	c2.AdminAddr = "127.0.0.1:0"
	s2 := mustStart(t, c2)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	mint := func(id string) *x509svid.SVID {
		key, _ := ca.ECDSA.GenerateKey()
		csr, _ := ca.ECDSA.CreateCSR(key)
		resp, err := s1.operator().MintX509SVID(ctx(t), &operatorpb.MintX509SVIDRequest{SpiffeId: id, Csr: csr})
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := ca.ECDSA.MarshalPrivateKey(key)
		svid, err := x509svid.ParseRaw(bytes.Join(resp.Chain, nil), keyDER)
		if err != nil {
			t.Fatal(err)
		}
		return svid
	}
	call := func(svid *x509svid.SVID, on ...*running) error {
		srv := s1
		if len(on) > 0 {
			srv = on[0]
		}
		var cfg *tls.Config
		bundle := x509bundle.FromX509Authorities(td, roots)
		if svid == nil {
			cfg = tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeMemberOf(td))
		} else {
			cfg = tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td))
		}
		conn, err := grpc.NewClient("passthrough:///"+srv.srv.AdminAddr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = operatorpb.NewOperatorClient(conn).Status(ctx(t), &operatorpb.StatusRequest{})
		return err
	}
	if err := call(mint("spiffe://example.org/ops/alice")); err != nil {
		t.Errorf("admin refused: %v", err)
	}
	if err := call(mint("spiffe://example.org/ops/mallory")); status.Code(err) != codes.PermissionDenied {
		t.Errorf("non-admin SVID: %v, want PermissionDenied", err)
	}
	if err := call(nil); err == nil {
		t.Error("a client without a certificate reached the operator API")
	}

	alice, bob := mint("spiffe://example.org/ops/alice"), mint("spiffe://example.org/ops/bob")
	waitFor(t, 20*time.Second, "alice admitted by s2, which has no --admin-id", func() error { return call(alice, s2) })
	if _, err := s2.operator().AddAdmin(ctx(t), &operatorpb.AddAdminRequest{SpiffeId: "spiffe://other.org/ops/eve"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("an admin of another trust domain: %v, want InvalidArgument", err)
	}
	if _, err := s2.operator().AddAdmin(ctx(t), &operatorpb.AddAdminRequest{SpiffeId: "spiffe://example.org/ops/bob"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.operator().RemoveAdmin(ctx(t), &operatorpb.RemoveAdminRequest{SpiffeId: "spiffe://example.org/ops/alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.operator().RemoveAdmin(ctx(t), &operatorpb.RemoveAdminRequest{SpiffeId: "spiffe://example.org/ops/alice"}); status.Code(err) != codes.NotFound {
		t.Errorf("removing alice again: %v, want NotFound", err)
	}
	for _, r := range []*running{s1, s2} {
		waitFor(t, 10*time.Second, "alice refused and bob admitted by "+r.cfg.NodeID, func() error {
			if err := call(alice, r); status.Code(err) != codes.PermissionDenied {
				return fmt.Errorf("alice: %v", err)
			}
			return call(bob, r)
		})
	}
	list, err := s1.operator().ListAdmins(ctx(t), &operatorpb.ListAdminsRequest{})
	if err != nil || len(list.Admins) != 1 || list.Admins[0].SpiffeId != "spiffe://example.org/ops/bob" || list.Admins[0].AddedBy != "operator" {
		t.Errorf("admins = %v, %v; want bob, added by the operator", list, err)
	}
}

// waitFor polls cond until it returns nil, failing the test with its last
// error after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not after %s: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
