package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// fleet is a cluster of servers and agents in this process, all on one
// clock, with one workload entry per agent for this test process.
type fleet struct {
	t        testing.TB
	clock    clockwork.Clock
	members  []*member
	agents   []*agent.Agent
	ids      []string // the workload SPIFFE ID each agent serves
	dirs     []string // each agent's data directory
	agentIDs []string // each agent's SPIFFE ID
	op       operatorpb.OperatorClient
	e        *env
	log      *syncBuffer
}

type fleetOpts struct {
	servers, agents int
	clock           clockwork.Clock
	tune            func(*server.Config)
	// reissueJitter is the agents' ReissueJitter (0: the default).
	reissueJitter time.Duration
}

func newFleet(t testing.TB, o fleetOpts) *fleet {
	t.Helper()
	kek, err := ca.CreateKEKFile(filepath.Join(tempDir(t), "kek"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, clock: o.clock, log: &syncBuffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("fleet log:\n%s", f.log.String())
		}
	})
	logger := slog.New(slog.NewTextHandler(f.log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	base := func(node string) server.Config {
		c := server.Config{DataDir: tempDir(t), NodeID: node, RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: kek,
			Logger: logger, RaftLogger: hclog.NewNullLogger(), Clock: o.clock}
		if o.tune != nil {
			o.tune(&c)
		}
		return c
	}
	c1 := base("s1")
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := runServer(t, c1)
	waitFor(t, 20*time.Second, "s1 ready", func() error {
		if !s1.srv.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	f.e = &env{t: t, srv: s1.srv, op: operatorClient(t, s1.srv.AdminSocket())}
	f.op = f.e.op
	f.e.bundle = trustBundle(t, s1.srv)
	f.members = []*member{s1}
	for i := 2; i <= o.servers; i++ {
		tok, err := f.op.CreateJoinToken(tctx(t, 20*time.Second), &operatorpb.CreateJoinTokenRequest{Kind: server.TokenKindServer})
		if err != nil {
			t.Fatal(err)
		}
		c := base(fmt.Sprintf("s%d", i))
		c.Join, c.JoinToken, c.TrustBundle = s1.srv.APIAddr(), tok.Token, f.e.bundle
		f.members = append(f.members, runServer(t, c))
	}
	// As a load balancer would, send load only to servers that are ready:
	// a joined server refuses to sign (Unavailable) until its
	// intermediates' CRLs are published.
	for _, m := range f.members {
		waitFor(t, 20*time.Second, m.cfg.NodeID+" ready", func() error {
			if !m.srv.Ready() {
				return errors.New("not ready")
			}
			return nil
		})
	}
	var addrs []string
	for _, m := range f.members {
		addrs = append(addrs, m.srv.APIAddr())
	}
	for i := 0; i < o.agents; i++ {
		token := f.e.token()
		id := fmt.Sprintf("spiffe://example.org/fleet/w%d", i)
		f.e.entry(agentIDFor(token), id, 0, "unix:uid:"+uid)
		dir := tempDir(t)
		// Each agent starts with a different server first.
		order := append(append([]string(nil), addrs[i%len(addrs):]...), addrs[:i%len(addrs)]...)
		a, err := agent.New(agent.Config{Servers: order, TrustBundle: f.e.bundle, DataDir: dir, SocketPath: filepath.Join(dir, "agent.sock"),
			Evidence: jointoken.NewEvidence(token), WorkloadAttestors: []attest.WorkloadAttestor{unix.New(unix.Config{})},
			Logger: logger, Clock: o.clock, ReissueJitter: o.reissueJitter})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { a.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		f.agents = append(f.agents, a)
		f.ids = append(f.ids, id)
		f.dirs = append(f.dirs, dir)
		f.agentIDs = append(f.agentIDs, agentIDFor(token))
	}
	return f
}

// waitFor polls cond until it holds or the timeout passes.
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
		time.Sleep(5 * time.Millisecond)
	}
}

// checkWorkloads checks that every agent serves its workload an SVID valid
// now, of the full TTL, issued no earlier than since, that verifies with
// go-spiffe against the trust bundle at the clock's time.
func (f *fleet) checkWorkloads(since time.Time) error {
	now := f.clock.Now()
	for i, a := range f.agents {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+a.SocketPath()))
		cancel()
		if err != nil {
			return fmt.Errorf("agent %d: %v", i, err)
		}
		leaf := s.Certificates[0]
		switch {
		case s.ID.String() != f.ids[i]:
			return fmt.Errorf("agent %d serves %s, want %s", i, s.ID, f.ids[i])
		case leaf.NotBefore.Add(ca.Backdate).Before(since.Add(-time.Second)):
			return fmt.Errorf("agent %d: SVID issued at %s, before %s", i, leaf.NotBefore.Add(ca.Backdate), since)
		case !now.Before(leaf.NotAfter) || now.Before(leaf.NotBefore):
			return fmt.Errorf("agent %d: SVID valid %s to %s, not at %s", i, leaf.NotBefore, leaf.NotAfter, now)
		case leaf.NotAfter.Sub(leaf.NotBefore) != ca.DefaultSVIDTTL+ca.Backdate:
			return fmt.Errorf("agent %d: SVID lifetime %s, want the full %s", i, leaf.NotAfter.Sub(leaf.NotBefore)-ca.Backdate, ca.DefaultSVIDTTL)
		}
		// The agent's own SVID, which it authenticates to servers with.
		own, err := os.ReadFile(filepath.Join(f.dirs[i], "agent", "svid.pem"))
		if err != nil {
			return err
		}
		ownChain, err := ca.ParseCertificatesPEM(own)
		if err != nil {
			return err
		}
		ownLeaf := ownChain[0]
		if ownLeaf.NotBefore.Add(ca.Backdate).Before(since.Add(-time.Second)) || !now.Before(ownLeaf.NotAfter) {
			return fmt.Errorf("agent %d: its own SVID, valid %s to %s, was not renewed since %s", i, ownLeaf.NotBefore, ownLeaf.NotAfter, since)
		}
		roots := x509.NewCertPool()
		for _, r := range f.e.bundle {
			roots.AddCert(r)
		}
		inter := x509.NewCertPool()
		for _, c := range s.Certificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("agent %d: SVID does not verify at %s: %v", i, now, err)
		}
	}
	return nil
}

// checkServers checks that every server presents a TLS certificate valid
// now, chained to the root, and issues through its operator API.
func (f *fleet) checkServers() error {
	now := f.clock.Now()
	roots := x509.NewCertPool()
	for _, r := range f.e.bundle {
		roots.AddCert(r)
	}
	for _, m := range f.running() {
		conn, err := tls.Dial("tcp", m.srv.APIAddr(), &tls.Config{InsecureSkipVerify: true, Time: f.clock.Now, MinVersion: tls.VersionTLS13})
		if err != nil {
			return fmt.Errorf("%s: %v", m.cfg.NodeID, err)
		}
		certs := conn.ConnectionState().PeerCertificates
		conn.Close()
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("%s: TLS certificate does not verify at %s: %v", m.cfg.NodeID, now, err)
		}
	}
	return nil
}

// mintEverywhere has every server issue an X509-SVID through its operator
// API: admitted, signed, recorded in the ledger through Raft.
func (f *fleet) mintEverywhere() error {
	for _, m := range f.running() {
		// A restarted server signs once it is ready (its CRLs published);
		// until then it answers Unavailable, as a load balancer's health
		// check sees.
		waitFor(f.t, 20*time.Second, m.cfg.NodeID+" ready", func() error {
			if !m.srv.Ready() {
				return errors.New("not ready")
			}
			return nil
		})
		key, err := ca.ECDSA.GenerateKey()
		if err != nil {
			return err
		}
		csr, err := ca.ECDSA.CreateCSR(key)
		if err != nil {
			return err
		}
		op := operatorClient(f.t, m.srv.AdminSocket())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		resp, err := op.MintX509SVID(ctx, &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/minted/" + m.cfg.NodeID, Csr: csr})
		cancel()
		if err != nil {
			return fmt.Errorf("%s: mint: %v", m.cfg.NodeID, err)
		}
		leaf, err := x509.ParseCertificate(resp.Chain[0])
		if err != nil {
			return err
		}
		if now := f.clock.Now(); now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
			return fmt.Errorf("%s: minted SVID not valid now", m.cfg.NodeID)
		}
	}
	return nil
}

// fleetStep is the largest step of the fake clock: under half the 24-hour
// lifetime of agent SVIDs and server certificates, which are renewed at
// half-life, so that whatever the phase of the steps nothing expires
// between two of them.
const fleetStep = 11 * time.Hour

// advance moves the clock in steps of at most step (a running cluster
// sees time pass, it does not jump a month) and waits at each step until
// every workload holds an SVID issued after the step and every server's
// TLS certificate is valid.
func (f *fleet) advance(fc *clockwork.FakeClock, total, step time.Duration) {
	f.t.Helper()
	for total > 0 {
		d := min(step, total)
		fc.Advance(d)
		total -= d
		at := fc.Now()
		waitFor(f.t, 60*time.Second, fmt.Sprintf("settle at %s", at.Format(time.DateTime)), func() error {
			err := f.checkServers()
			if err == nil {
				err = f.checkWorkloads(at.Add(-ca.DefaultSVIDTTL / 2))
			}
			if err != nil {
				// Time passes while the fleet settles: timers on the
				// injected clock (a renewal scheduled a moment after the
				// jump, an admission wait, a retry) fire as they would.
				fc.Advance(100 * time.Millisecond)
			}
			return err
		})
	}
}

// A 3-server cluster with agents and workloads, on a fake clock moved in
// steps through a year: at +16, +31 and +60 days and +1 year every
// workload has a valid SVID of the full TTL, every server's TLS certificate
// is valid, every server issues, intermediates and JWT keys have rotated,
// and pruning keeps the ledger and the authorities bounded.
func TestClusterRunsForAYear(t *testing.T) {
	if testing.Short() {
		t.Skip("a year of fake time takes about a minute")
	}
	start := time.Now()
	fc := clockwork.NewFakeClockAt(start)
	f := newFleet(t, fleetOpts{servers: 3, agents: 3, clock: fc})
	waitFor(t, 30*time.Second, "first SVIDs", func() error { return f.checkWorkloads(start) })
	if err := f.mintEverywhere(); err != nil {
		t.Fatal(err)
	}
	firstJWT := f.jwtKids()
	firstInter := f.intermediates()

	const day = 24 * time.Hour
	// Steps shorter than half the life of the 24-hour agent SVIDs and server
	// certificates (renewed at half-life), as time passes in a real cluster.
	const step = fleetStep
	elapsed := time.Duration(0)
	for _, cp := range []time.Duration{16 * day, 31 * day, 60 * day, 365 * day} {
		f.advance(fc, cp-elapsed, step)
		elapsed = cp
		if err := f.checkWorkloads(fc.Now().Add(-ca.DefaultSVIDTTL / 2)); err != nil {
			t.Fatalf("+%s: %v", cp, err)
		}
		if err := f.checkServers(); err != nil {
			t.Fatalf("+%s: %v", cp, err)
		}
		if err := f.mintEverywhere(); err != nil {
			t.Fatalf("+%s: %v", cp, err)
		}
		f.checkJWT(t)
		t.Logf("+%3dd: ok (%s elapsed)", cp/day, time.Since(start).Round(time.Second))
		if cp == 16*day {
			// Every server prepared its successors at half-life (day 15)
			// and still signs with the first ones.
			if got := f.intermediates(); !equalSets(got, firstInter) {
				t.Errorf("+16d: the active intermediates changed before two thirds of their life: %v, was %v", got, firstInter)
			}
			if n := f.countAuthorities(operatorpbStatePrepared); n != 2*len(f.members) {
				t.Errorf("+16d: %d prepared intermediates, want %d (two profiles per server)", n, 2*len(f.members))
			}
		}
		if cp == 31*day && overlap(f.intermediates(), firstInter) {
			t.Errorf("+31d: some server still signs with its first intermediate, which expired on day 30")
		}
	}
	if got := f.intermediates(); overlap(got, firstInter) {
		t.Errorf("after a year some server still signs with its first intermediate: %v", got)
	}
	if got := f.jwtKids(); overlap(got, firstJWT) {
		t.Errorf("after a year the first JWT key is still published: %v", got)
	}
	st, err := f.op.Status(tctx(t, 10*time.Second), &operatorpb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// About 450 steps each issued an SVID per workload and per agent, and a
	// mint per server at each checkpoint: without pruning thousands. Only
	// unexpired records (plus an hour of grace) remain.
	if st.LedgerRecords > 40 {
		t.Errorf("ledger holds %d records after a year; pruning should keep about a day's worth", st.LedgerRecords)
	}
	if n := f.countAuthorities(-1); n > len(f.members)*2*3 {
		t.Errorf("%d authorities after a year: expired intermediates are not pruned", n)
	}
}

const operatorpbStatePrepared = 1

// intermediates returns the IDs of the intermediates the servers sign with,
// as their agents' SVID chains show them.
func (f *fleet) intermediates() map[string]bool {
	out := map[string]bool{}
	for _, a := range f.agents {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+a.SocketPath()))
		cancel()
		if err == nil && len(s.Certificates) > 1 {
			out[s.Certificates[1].SerialNumber.Text(16)] = true
		}
	}
	return out
}

// countAuthorities counts the intermediates the cluster records, in a
// state (-1: all).
func (f *fleet) countAuthorities(state int) int {
	resp, err := f.op.ListAuthorities(tctx(f.t, 10*time.Second), &operatorpb.ListAuthoritiesRequest{})
	if err != nil {
		f.t.Fatal(err)
	}
	n := 0
	for _, a := range resp.Authorities {
		if a.Kind == "intermediate" && (state < 0 || int(a.State) == state) {
			n++
		}
	}
	return n
}

// jwtKids returns the key IDs of the JWT bundle the first agent serves.
func (f *fleet) jwtKids() map[string]bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr("unix://"+f.agents[0].SocketPath()))
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, bundle := range b.Bundles() {
		for kid := range bundle.JWTAuthorities() {
			out[kid] = true
		}
	}
	return out
}

// checkJWT fetches a JWT-SVID and has the agent validate it. It speaks the
// Workload API directly: go-spiffe's client checks the token's times against
// the wall clock, which this test does not move.
func (f *fleet) checkJWT(t *testing.T) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+f.agents[0].SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wl := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true"), 10*time.Second)
	defer cancel()
	var last error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		resp, err := wl.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"years"}})
		if err != nil {
			last = err
			continue
		}
		v, err := wl.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "years", Svid: resp.Svids[0].Svid})
		if err != nil {
			last = err
			continue
		}
		if v.SpiffeId != f.ids[0] {
			t.Fatalf("JWT-SVID for %s, want %s", v.SpiffeId, f.ids[0])
		}
		return
	}
	t.Fatalf("JWT-SVID at %s: %v", f.clock.Now(), last)
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func overlap(a, b map[string]bool) bool {
	for k := range a {
		if b[k] {
			return true
		}
	}
	return false
}

// running returns the members that are up.
func (f *fleet) running() []*member {
	var out []*member
	for _, m := range f.members {
		if m.stop != nil {
			out = append(out, m)
		}
	}
	return out
}

func (f *fleet) leader() *member {
	for _, m := range f.running() {
		if m.srv.Node().IsLeader() {
			return m
		}
	}
	return nil
}

// restart starts a killed member again from its data directory, in its
// place in f.members.
func (f *fleet) restart(m *member) *member {
	f.t.Helper()
	cfg := m.cfg
	cfg.Bootstrap, cfg.Join = false, ""
	n := runServer(f.t, cfg)
	for i := range f.members {
		if f.members[i] == m {
			f.members[i] = n
		}
	}
	return n
}

// Rotation goes on through a leader change, a server down for a week in the
// middle of a rotation, and a server down for longer than its intermediate
// lives (it certifies a new one with the roots it keeps and rejoins).
func TestRotationSurvivesOutages(t *testing.T) {
	const day = 24 * time.Hour
	const step = fleetStep
	fc := clockwork.NewFakeClockAt(time.Now())
	f := newFleet(t, fleetOpts{servers: 3, agents: 3, clock: fc})
	waitFor(t, 30*time.Second, "first SVIDs", func() error { return f.checkWorkloads(fc.Now()) })
	first := f.intermediates()

	// Day 14: the leader is killed and comes back a day later.
	f.advance(fc, 14*day, step)
	waitFor(t, 10*time.Second, "a leader", func() error {
		if f.leader() == nil {
			return errors.New("none")
		}
		return nil
	})
	old := f.leader()
	old.kill()
	f.advance(fc, day, step)
	old = f.restart(old)

	// Day 15 to 22: another server is down for a week, through the
	// preparation (day 15) and activation (day 20) of its successors.
	var away *member
	for _, m := range f.running() {
		if m != old && !m.srv.Node().IsLeader() {
			away = m
		}
	}
	away.kill()
	f.advance(fc, 7*day, step)
	away = f.restart(away)
	f.advance(fc, 2*day, step)
	if got := f.intermediates(); overlap(got, first) {
		t.Fatalf("day 24: some server still signs with its first intermediate: %v", got)
	}
	if err := f.mintEverywhere(); err != nil {
		t.Fatal(err)
	}

	// Day 24 to 59: a server is down for 35 days, longer than its
	// intermediate lives; back, it certifies a new one itself and rejoins.
	long := f.running()[2]
	long.kill()
	f.advance(fc, 35*day, step)
	f.restart(long)
	f.advance(fc, 2*day, step)
	if err := f.mintEverywhere(); err != nil {
		t.Fatal(err)
	}
}
