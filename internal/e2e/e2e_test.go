package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// syncBuffer is a log sink the test can read while servers write to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tempDir(t testing.TB) string {
	d, err := os.MkdirTemp("", "e2e") // short: it holds Unix sockets
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type env struct {
	agentLog    syncBuffer // every agent's log lines
	t           testing.TB
	srv         *server.Server
	op          operatorpb.OperatorClient
	bundle      []*x509.Certificate
	audit       *syncBuffer   // the server's log
	events      *audit.Memory // the server's audit events
	agentEvents audit.Memory  // every agent's audit events
}

// startServer bootstraps a one-server cluster for trust domain example.org.
func startServer(t testing.TB) *env { return startServerWith(t, nil) }

func startServerWith(t testing.TB, tune func(*server.Config)) *env {
	t.Helper()
	dir := tempDir(t)
	kek, err := ca.CreateKEKFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	events := &audit.Memory{}
	cfg := server.Config{DataDir: dir, NodeID: "s1", RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: kek,
		Bootstrap: true, TrustDomain: "example.org", Logger: slog.New(slog.NewTextHandler(logs, nil)), RaftLogger: hclog.NewNullLogger(),
		Audit: events}
	if tune != nil {
		tune(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	e := &env{t: t, srv: srv, op: operatorClient(t, srv.AdminSocket()), audit: logs, events: events}
	for deadline := time.Now().Add(20 * time.Second); !srv.Ready(); {
		if time.Now().After(deadline) {
			t.Fatal("server not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.bundle = trustBundle(t, srv)
	return e
}

func tctx(t testing.TB, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func (e *env) token() string {
	resp, err := e.op.CreateJoinToken(tctx(e.t, 20*time.Second), &operatorpb.CreateJoinTokenRequest{Kind: server.TokenKindAgent})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.Token
}

// agentIDFor is the ID join_token gives the agent that uses token.
func agentIDFor(token string) string {
	h := sha256.Sum256([]byte(token))
	return "spiffe://example.org/meshca/agent/join_token/" + hex.EncodeToString(h[:16])
}

func (e *env) entry(parent, id string, ttl time.Duration, selectors ...string) *operatorpb.Entry {
	e.t.Helper()
	en := &operatorpb.Entry{ParentId: parent, SpiffeId: id, TtlSeconds: int64(ttl / time.Second)}
	for _, s := range selectors {
		typ, val, _ := strings.Cut(s, ":")
		en.Selectors = append(en.Selectors, &operatorpb.Selector{Type: typ, Value: val})
	}
	resp, err := e.op.CreateEntry(tctx(e.t, 20*time.Second), &operatorpb.CreateEntryRequest{Entry: en})
	if err != nil {
		e.t.Fatalf("create entry %s: %v", id, err)
	}
	return resp.Entry
}

func (e *env) startAgent(token string, fraction float64) *agent.Agent {
	e.t.Helper()
	return e.startAgentWith(token, tempDir(e.t), fraction)
}

// startAgentIn starts an agent with its data and socket in dir.
func (e *env) startAgentIn(token, dir string) *agent.Agent {
	e.t.Helper()
	return e.startAgentWith(token, dir, 0.5)
}

func (e *env) startAgentWith(token, dir string, fraction float64) *agent.Agent {
	e.t.Helper()
	a, err := agent.New(agent.Config{Servers: []string{e.srv.APIAddr()}, TrustBundle: e.bundle, DataDir: dir,
		SocketPath: filepath.Join(dir, "agent.sock"), Evidence: jointoken.NewEvidence(token),
		WorkloadAttestors: []attest.WorkloadAttestor{unix.New(unix.Config{})}, RenewFraction: fraction,
		Logger: slog.New(slog.NewTextHandler(&e.agentLog, nil)), Audit: &e.agentEvents})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
	return a
}

func client(t *testing.T, a *agent.Agent) *workloadapi.Client {
	c, err := workloadapi.New(tctx(t, time.Minute), workloadapi.WithAddr("unix://"+a.SocketPath()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var uid = strconv.Itoa(os.Getuid())

// go-spiffe's Workload API client fetches our X509-SVID, verifies it with
// the bundle, and sees it rotate before the old one expires.
func TestWorkloadAPIServesAndRotatesSVIDs(t *testing.T) {
	e := startServer(t)
	token := e.token()
	a := e.startAgent(token, 0.1)
	c := client(t, a)

	// No entry yet: the documented error.
	_, err := c.FetchX509SVID(tctx(t, 5*time.Second))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("workload with no entry: %v, want PermissionDenied", err)
	}

	parent := agentIDFor(token)
	e.entry(parent, "spiffe://example.org/test/web", time.Minute, "unix:uid:"+uid)
	e.entry(parent, "spiffe://example.org/test/other", time.Hour, "unix:uid:"+strconv.Itoa(os.Getuid()+1)) // not ours

	var x *workloadapi.X509Context
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if x, err = c.FetchX509Context(tctx(t, 5*time.Second)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SVID: %v", err)
		}
	}
	if len(x.SVIDs) != 1 || x.SVIDs[0].ID.String() != "spiffe://example.org/test/web" {
		t.Fatalf("SVIDs %v, want only spiffe://example.org/test/web", x.SVIDs)
	}
	// Both decisions are in the agent's audit trail.
	for _, d := range []audit.Decision{audit.Deny, audit.Allow} {
		if _, err := e.agentEvents.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
			return ev.Action == "workload.fetch_x509_svid" && ev.Decision == d && strings.HasPrefix(ev.Actor, "pid ")
		}); err != nil {
			t.Errorf("no %s event of FetchX509SVID in the agent's audit trail: %v", d, err)
		}
	}
	first := x.SVIDs[0]
	if _, _, err := x509svid.Verify(first.Certificates, x.Bundles); err != nil {
		t.Fatalf("SVID does not verify with the bundle: %v", err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	if b, err := x.Bundles.GetX509BundleForTrustDomain(td); err != nil || !b.X509Authorities()[0].Equal(e.bundle[0]) {
		t.Errorf("bundle %v (%v), want the server's root", b, err)
	}

	// Rotation: a short TTL and renewal at a tenth of it; the stream must
	// deliver a new SVID while the first is still valid.
	rotated := make(chan *x509svid.SVID, 1)
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go c.WatchX509Context(wctx, watcher{onUpdate: func(x *workloadapi.X509Context) {
		if s := x.DefaultSVID(); s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
			select {
			case rotated <- s:
			default:
			}
		}
	}})
	select {
	case s := <-rotated:
		if !time.Now().Before(first.Certificates[0].NotAfter) {
			t.Error("rotated only after the first SVID expired")
		}
		if _, _, err := x509svid.Verify(s.Certificates, x.Bundles); err != nil {
			t.Errorf("rotated SVID does not verify: %v", err)
		}
	case <-wctx.Done():
		t.Fatal("no rotated SVID within 30 s")
	}

	// A second matching entry: the workload gets both.
	e.entry(parent, "spiffe://example.org/test/admin", time.Hour, "unix:uid:"+uid)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		x, err = c.FetchX509Context(tctx(t, 5*time.Second))
		if err == nil && len(x.SVIDs) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SVIDs %v (%v), want two", x, err)
		}
	}
}

type watcher struct {
	onUpdate func(*workloadapi.X509Context)
}

func (w watcher) OnX509ContextUpdate(x *workloadapi.X509Context) { w.onUpdate(x) }
func (w watcher) OnX509ContextWatchError(error)                  {}

// An agent asking to sign for an entry it is not the parent of is refused,
// and the refusal is audited; a reused join token is refused.
func TestNodeAPIRefusals(t *testing.T) {
	e := startServer(t)
	token := e.token()
	a := e.startAgent(token, 0.5)
	c := client(t, a)
	parent := agentIDFor(token)
	e.entry(parent, "spiffe://example.org/test/mine", time.Hour, "unix:uid:"+uid)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := c.FetchX509SVID(tctx(t, 5*time.Second)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no SVID")
		}
	}
	// Another agent's entry: that agent has not attested (yet).
	fresp, err := e.op.CreateEntry(tctx(t, 20*time.Second), &operatorpb.CreateEntryRequest{AllowUnknownParent: true, Entry: &operatorpb.Entry{
		ParentId: "spiffe://example.org/meshca/agent/join_token/someone-else", SpiffeId: "spiffe://example.org/test/theirs",
		Selectors: []*operatorpb.Selector{{Type: "unix", Value: "uid:" + uid}}}})
	if err != nil {
		t.Fatal(err)
	}
	foreign := fresp.Entry

	// Call the node API as the agent, with its own SVID from its data dir.
	dir := filepath.Dir(a.SocketPath())
	svid, err := x509svid.Load(filepath.Join(dir, "agent", "svid.pem"), filepath.Join(dir, "agent", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	tlsCfg := tlsconfig.MTLSClientConfig(svid, x509bundle.FromX509Authorities(td, e.bundle), tlsconfig.AuthorizeMemberOf(td))
	conn, err := grpc.NewClient("passthrough:///"+e.srv.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	resp, err := nodepb.NewNodeClient(conn).SignX509SVIDs(tctx(t, 20*time.Second), &nodepb.SignX509SVIDsRequest{
		Requests: []*nodepb.SVIDRequest{{EntryId: foreign.Id, Csr: csr}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[0]; r.Error == "" || len(r.Chain) > 0 {
		t.Errorf("signed an entry of another node: %+v", r)
	}
	if _, err := e.events.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
		return ev.Decision == audit.Deny && ev.Action == "x509.sign" && ev.Subject == foreign.Id && ev.Actor == parent
	}); err != nil {
		t.Errorf("refusal not audited: %v\n%+v", err, e.events.Events())
	}

	// The same join token again: refused.
	dir2 := tempDir(t)
	a2, err := agent.New(agent.Config{Servers: []string{e.srv.APIAddr()}, TrustBundle: e.bundle, DataDir: dir2,
		SocketPath: filepath.Join(dir2, "agent.sock"), Evidence: jointoken.NewEvidence(token),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a2.Run(ctx); !errors.Is(err, agent.ErrAttestationRefused) {
		t.Errorf("agent with a used join token: Run returned %v, want ErrAttestationRefused", err)
	}
	if _, err := os.Stat(filepath.Join(dir2, "agent", "svid.pem")); err == nil {
		t.Error("an agent attested with a used join token")
	}
	if _, err := e.events.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
		return ev.Decision == audit.Deny && ev.Action == "node.attest" && strings.Contains(ev.Reason, "already used")
	}); err != nil {
		t.Errorf("reused token refusal not audited: %v", err)
	}
}

// 2,000 workloads' SVIDs come due at once on one server (20 agents, 100
// entries each, all started together). The server sheds what it cannot take
// with retryable ResourceExhausted; the agents come back when told; every
// workload ends with a valid SVID, and nothing else fails.
func TestRenewalStorm(t *testing.T) {
	const agents, perAgent = 20, 100
	e := startServerWith(t, func(c *server.Config) {
		c.SignConcurrency, c.SignQueue, c.NodeSignBurst = 2, 300, perAgent
	})
	tokens := make([]string, agents)
	for i := range tokens {
		tokens[i] = e.token()
	}
	var wg sync.WaitGroup
	errs := make(chan error, agents*perAgent)
	sem := make(chan struct{}, 16)
	for i := 0; i < agents; i++ {
		for j := 0; j < perAgent; j++ {
			wg.Add(1)
			sem <- struct{}{}
			go func(i, j int) {
				defer wg.Done()
				defer func() { <-sem }()
				en := &operatorpb.Entry{ParentId: agentIDFor(tokens[i]), SpiffeId: fmt.Sprintf("spiffe://example.org/storm/a%d/w%d", i, j),
					Selectors: []*operatorpb.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 100000+j)}}}
				if _, err := e.op.CreateEntry(tctx(t, time.Minute), &operatorpb.CreateEntryRequest{Entry: en}); err != nil {
					errs <- err
				}
			}(i, j)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("create entry: %v", err)
	}

	logs := &syncBuffer{}
	var as []*agent.Agent
	for i := 0; i < agents; i++ {
		dir := tempDir(t)
		a, err := agent.New(agent.Config{Servers: []string{e.srv.APIAddr()}, TrustBundle: e.bundle, DataDir: dir,
			SocketPath: filepath.Join(dir, "agent.sock"), Evidence: jointoken.NewEvidence(tokens[i]),
			Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		as = append(as, a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	for _, a := range as {
		running.Add(1)
		go func(a *agent.Agent) { defer running.Done(); a.Run(ctx) }(a)
	}
	defer func() { cancel(); running.Wait() }()

	deadline := time.Now().Add(90 * time.Second)
	for {
		done := 0
		for _, a := range as {
			if valid, n := a.SVIDStatus(); valid == perAgent && n == perAgent {
				done++
			}
		}
		if done == agents {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d agents hold all their SVIDs after 90 s\n%.3000s", done, agents, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	out := logs.String()
	if !strings.Contains(out, "server busy; retrying") {
		t.Error("the server never shed load: the test did not create a storm")
	}
	for _, bad := range []string{"server refused an SVID", "level=ERROR", "unusable SVID"} {
		if strings.Contains(out, bad) {
			t.Errorf("agents logged %q:\n%s", bad, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "server session ended") && !strings.Contains(line, "ResourceExhausted") {
			t.Errorf("a session failed for another reason than load: %s", line)
		}
	}
}

func operatorClient(t testing.TB, socket string) operatorpb.OperatorClient {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return operatorpb.NewOperatorClient(conn)
}

func bundleSource(e *env) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("example.org"), e.bundle)
}

// trustBundle returns the roots srv gives agents and joining servers.
func trustBundle(t testing.TB, srv *server.Server) []*x509.Certificate {
	t.Helper()
	roots, err := ca.ParseCertificatesPEM(srv.TrustBundle())
	if err != nil {
		t.Fatalf("the server's trust bundle: %v", err)
	}
	return roots
}
