package e2e

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type member struct {
	cfg  server.Config
	srv  *server.Server
	stop context.CancelFunc
	done chan error
}

func runServer(t testing.TB, cfg server.Config) *member {
	t.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeID, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{cfg: cfg, srv: srv, stop: cancel, done: make(chan error, 1)}
	m.cfg.RaftAddr, m.cfg.APIAddr = srv.RaftAddr(), srv.APIAddr()
	go func() { m.done <- srv.Run(ctx) }()
	t.Cleanup(m.kill)
	return m
}

func (m *member) kill() {
	if m.stop != nil {
		m.stop()
		<-m.done
		m.stop = nil
	}
}

// Kill the leader of a 3-server cluster while an agent runs: the workload
// keeps its SVID, the agent reconnects, rotation continues, and the killed
// server comes back.
func TestAgentsSurviveLeaderKill(t *testing.T) {
	kek, err := ca.CreateKEKFile(filepath.Join(tempDir(t), "kek"))
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	base := func(node string) server.Config {
		return server.Config{DataDir: tempDir(t), NodeID: node, RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: kek,
			Logger: quiet, RaftLogger: hclog.NewNullLogger()}
	}
	c1 := base("s1")
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := runServer(t, c1)
	for deadline := time.Now().Add(20 * time.Second); !s1.srv.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("s1 not ready")
		}
	}
	e := &env{t: t, srv: s1.srv}
	e.op = operatorClient(t, s1.srv.AdminSocket())
	e.bundle = trustBundle(t, s1.srv)
	members := []*member{s1}
	for _, node := range []string{"s2", "s3"} {
		tok, err := e.op.CreateJoinToken(tctx(t, 20*time.Second), &operatorpb.CreateJoinTokenRequest{Kind: server.TokenKindServer})
		if err != nil {
			t.Fatal(err)
		}
		c := base(node)
		c.Join, c.JoinToken, c.TrustBundle = s1.srv.APIAddr(), tok.Token, e.bundle
		members = append(members, runServer(t, c))
	}

	token := e.token()
	e.entry(agentIDFor(token), "spiffe://example.org/test/web", time.Minute, "unix:uid:"+uid)
	var addrs []string
	for _, m := range members {
		addrs = append(addrs, m.srv.APIAddr())
	}
	dir := tempDir(t)
	a, err := agent.New(agent.Config{Servers: addrs, TrustBundle: e.bundle, DataDir: dir, SocketPath: filepath.Join(dir, "agent.sock"),
		Evidence: jointoken.NewEvidence(token), WorkloadAttestors: []attest.WorkloadAttestor{unix.New(unix.Config{})}, RenewFraction: 0.1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	adone := make(chan struct{})
	go func() { a.Run(actx); close(adone) }()
	defer func() { acancel(); <-adone }()
	c := client(t, a)
	var before *x509svid.SVID
	for deadline := time.Now().Add(30 * time.Second); before == nil; time.Sleep(50 * time.Millisecond) {
		if s, err := c.FetchX509SVID(tctx(t, 5*time.Second)); err == nil {
			before = s
		} else if time.Now().After(deadline) {
			t.Fatalf("no SVID: %v", err)
		}
	}

	var leader *member
	for _, m := range members {
		if m.srv.Node().IsLeader() {
			leader = m
		}
	}
	if leader == nil {
		t.Fatal("no leader")
	}
	leader.kill()
	killed := time.Now()

	// The workload keeps its SVID meanwhile.
	if s, err := c.FetchX509SVID(tctx(t, 5*time.Second)); err != nil || !time.Now().Before(s.Certificates[0].NotAfter) {
		t.Fatalf("workload lost its SVID when the leader died: %v", err)
	}
	// Rotation continues: an SVID issued after the kill arrives before the
	// one held at the kill expires.
	rotated := make(chan *x509svid.SVID, 1)
	wctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	go c.WatchX509Context(wctx, watcher{onUpdate: func(x *workloadapi.X509Context) {
		s := x.DefaultSVID()
		if s.Certificates[0].NotAfter.After(killed.Add(time.Minute - 5*time.Second)) {
			select {
			case rotated <- s:
			default:
			}
		}
	}})
	select {
	case s := <-rotated:
		if _, _, err := x509svid.Verify(s.Certificates, bundleSource(e)); err != nil {
			t.Errorf("SVID issued after the failover does not verify: %v", err)
		}
	case <-wctx.Done():
		t.Fatal("no SVID issued after the leader was killed")
	}

	// The killed server restarts from its disk and rejoins.
	cfg := leader.cfg
	cfg.Bootstrap, cfg.Join = false, ""
	back := runServer(t, cfg)
	for deadline := time.Now().Add(30 * time.Second); !back.srv.Ready() || back.srv.Node().Raft().AppliedIndex() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the killed server did not come back")
		}
	}
}
