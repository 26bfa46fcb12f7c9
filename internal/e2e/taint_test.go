package e2e

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// workloadChecker polls every workload of a fleet until stopped and
// records each time one had no valid certificate.
type workloadChecker struct {
	mu       sync.Mutex
	failures []string
	polls    int
	stop     context.CancelFunc
	done     chan struct{}
}

func (f *fleet) startChecker(t *testing.T) *workloadChecker {
	ctx, cancel := context.WithCancel(context.Background())
	c := &workloadChecker{stop: cancel, done: make(chan struct{})}
	roots := x509.NewCertPool()
	for _, r := range f.e.bundle {
		roots.AddCert(r)
	}
	go func() {
		defer close(c.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, a := range f.agents {
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				s, err := workloadapi.FetchX509SVID(cctx, workloadapi.WithAddr("unix://"+a.SocketPath()))
				ccancel()
				if ctx.Err() != nil {
					return
				}
				if err == nil {
					inter := x509.NewCertPool()
					for _, x := range s.Certificates[1:] {
						inter.AddCert(x)
					}
					_, err = s.Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
				}
				c.mu.Lock()
				c.polls++
				if err != nil {
					c.failures = append(c.failures, fmt.Sprintf("%s agent %d: %v", time.Now().Format(time.StampMilli), i, err))
				}
				c.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(c.finish)
	return c
}

func (c *workloadChecker) finish() {
	c.stop()
	<-c.done
}

// authority returns an authority of ListAuthorities by ID, or nil.
func authorityByID(t testing.TB, op operatorpb.OperatorClient, id string) *operatorpb.Authority {
	t.Helper()
	resp, err := op.ListAuthorities(tctx(t, 10*time.Second), &operatorpb.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Authorities {
		if a.Id == id {
			return a
		}
	}
	return nil
}

func activeIntermediate(t testing.TB, op operatorpb.OperatorClient, server string) *operatorpb.Authority {
	t.Helper()
	resp, err := op.ListAuthorities(tctx(t, 10*time.Second), &operatorpb.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Authorities {
		if a.Kind == "intermediate" && a.Profile == "ecdsa" && a.ServerId == server && a.StateName == "ACTIVE" {
			return a
		}
	}
	t.Fatalf("no active ecdsa intermediate of %s", server)
	return nil
}

// issuerOf returns the authority ID of the intermediate that signed the
// SVID an agent serves its workload.
func issuerOf(t testing.TB, f *fleet, i int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+f.agents[i].SocketPath()))
	if err != nil {
		t.Fatal(err)
	}
	return "ecdsa/intermediate/" + hex.EncodeToString(s.Certificates[1].SerialNumber.Bytes())
}

// runTaint taints the active ECDSA intermediate of one follower of a
// 3-server cluster with agents spread over the servers (killing the leader
// right after, with killLeader) and checks: the server replaces it, every
// SVID chained to it is re-issued under another authority, a checker that
// polls every workload throughout finds none without a valid certificate,
// the tainted intermediate can then be revoked and its serial appears in
// the root's CRL, and no CRL number ever goes backwards.
func runTaint(t *testing.T, agents int, killLeader bool) {
	f := newFleet(t, fleetOpts{servers: 3, agents: agents, clock: clockwork.NewRealClock(), reissueJitter: time.Second})
	for i := range f.agents {
		waitFor(t, 30*time.Second, fmt.Sprintf("workload %d served", i), func() error { return f.checkWorkloads(time.Time{}) })
	}
	target := f.follower()
	var op operatorpb.OperatorClient
	for _, m := range f.running() {
		if m != target && !m.srv.Node().IsLeader() {
			op = operatorClient(t, m.srv.AdminSocket())
		}
	}
	if killLeader {
		op = operatorClient(t, target.srv.AdminSocket())
	}
	inter := activeIntermediate(t, op, target.cfg.NodeID)
	var affected []int
	for i := range f.agents {
		if issuerOf(t, f, i) == inter.Id {
			affected = append(affected, i)
		}
	}
	if len(affected) == 0 {
		t.Fatalf("no workload chains to %s", inter.Id)
	}
	before := inter.LiveCertificates

	// Refusals first: nothing changes.
	for _, c := range []struct {
		what string
		err  error
		want codes.Code
	}{
		{"revoke an active intermediate", func() error {
			_, err := op.RevokeAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: inter.Id})
			return err
		}(), codes.FailedPrecondition},
		{"taint the only root", func() error {
			_, err := op.TaintAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: rootID(t, op, "ecdsa")})
			return err
		}(), codes.FailedPrecondition},
		{"taint an unknown authority", func() error {
			_, err := op.TaintAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: "ecdsa/intermediate/00"})
			return err
		}(), codes.NotFound},
	} {
		if grpcstatus.Code(c.err) != c.want {
			t.Errorf("%s: %v, want %s", c.what, c.err, c.want)
		}
	}
	if a := authorityByID(t, op, inter.Id); a.StateName != "ACTIVE" {
		t.Fatalf("after refusals %s is %s", inter.Id, a.StateName)
	}
	dry, err := op.TaintAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: inter.Id, DryRun: true})
	if err != nil || dry.Authority.StateName != "TAINTED" || authorityByID(t, op, inter.Id).StateName != "ACTIVE" {
		t.Fatalf("dry run: %v, %v", dry, err)
	}

	checker := f.startChecker(t)
	crls := f.watchCRLNumbers(t)
	start := time.Now()
	if _, err := op.TaintAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: inter.Id}); err != nil {
		t.Fatal(err)
	}
	if killLeader {
		l := f.leader()
		if l == target {
			t.Fatal("the target became the leader")
		}
		l.kill()
	}
	waitFor(t, 60*time.Second, "every SVID chained to the tainted intermediate re-issued", func() error {
		for _, i := range affected {
			if id := issuerOf(t, f, i); id == inter.Id {
				return fmt.Errorf("workload %d still chains to it", i)
			}
		}
		a := authorityByID(t, op, inter.Id)
		if a.PendingCertificates != 0 {
			return fmt.Errorf("%s: %s", a.StateName, a.NextStep)
		}
		return nil
	})
	t.Logf("taint → %d workload SVIDs (and their agents' SVIDs; %d certificates) re-issued under another authority: %s",
		len(affected), before, time.Since(start))
	// The server's successor is recorded active (the record follows the
	// switch, see syncIntermediateRecords).
	waitFor(t, 20*time.Second, target.cfg.NodeID+"'s successor recorded active", func() error {
		resp, err := op.ListAuthorities(tctx(t, 10*time.Second), &operatorpb.ListAuthoritiesRequest{})
		if err != nil {
			return err
		}
		for _, a := range resp.Authorities {
			if a.Kind == "intermediate" && a.Profile == "ecdsa" && a.ServerId == target.cfg.NodeID && a.StateName == "ACTIVE" && a.Id != inter.Id {
				return nil
			}
		}
		return fmt.Errorf("no active successor of %s", inter.Id)
	})

	// Revoke: listed in the root's CRL; workloads keep valid certificates.
	resp, err := op.RevokeAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: inter.Id})
	if err != nil || resp.Authority.StateName != "REVOKED" {
		t.Fatalf("revoke: %v, %v", resp, err)
	}
	root := rootID(t, op, "ecdsa")
	waitFor(t, 20*time.Second, "the root's CRL lists the intermediate", func() error {
		c, err := op.GetCRL(tctx(t, 10*time.Second), &operatorpb.GetCRLRequest{IssuerId: root})
		if err != nil {
			return err
		}
		rl, err := x509.ParseRevocationList(c.Der)
		if err != nil {
			return err
		}
		for _, e := range rl.RevokedCertificateEntries {
			if "ecdsa/intermediate/"+hex.EncodeToString(e.SerialNumber.Bytes()) == inter.Id {
				return nil
			}
		}
		return fmt.Errorf("CRL %s does not list it", rl.Number)
	})
	waitFor(t, 20*time.Second, "every workload valid", func() error { return f.checkWorkloads(time.Time{}) })
	checker.finish()
	crls.finish()
	if len(checker.failures) > 0 {
		t.Errorf("%d of %d polls found a workload without a valid certificate:\n%s", len(checker.failures), checker.polls, strings.Join(checker.failures, "\n"))
	}
	t.Logf("checker: %d polls, no failure; CRL numbers seen: %v", checker.polls, crls.count())
	if msg := crls.backwards(); msg != "" {
		t.Error(msg)
	}
}

func rootID(t testing.TB, op operatorpb.OperatorClient, profile string) string {
	t.Helper()
	resp, err := op.ListAuthorities(tctx(t, 10*time.Second), &operatorpb.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.Authorities {
		if a.Kind == "root" && a.Profile == profile && a.StateName == "ACTIVE" {
			return a.Id
		}
	}
	t.Fatalf("no active %s root", profile)
	return ""
}

// crlWatch records the CRL numbers of every authority as every running
// server's state shows them, polled until stopped.
type crlWatch struct {
	mu      sync.Mutex
	seen    map[string][]uint64 // by server and authority
	stop    context.CancelFunc
	done    chan struct{}
	stopped bool
}

func (f *fleet) watchCRLNumbers(t *testing.T) *crlWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &crlWatch{seen: map[string][]uint64{}, stop: cancel, done: make(chan struct{})}
	var ops []operatorpb.OperatorClient
	var names []string
	for _, m := range f.running() {
		ops, names = append(ops, operatorClient(t, m.srv.AdminSocket())), append(names, m.cfg.NodeID)
	}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			for i, op := range ops {
				cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
				resp, err := op.ListAuthorities(cctx, &operatorpb.ListAuthoritiesRequest{})
				if err != nil {
					ccancel()
					continue // a killed server, or no leader for a moment
				}
				for _, a := range resp.Authorities {
					if a.Kind == "jwt" {
						continue
					}
					c, err := op.GetCRL(cctx, &operatorpb.GetCRLRequest{IssuerId: a.Id})
					if err != nil {
						continue
					}
					k := names[i] + " " + a.Id
					w.mu.Lock()
					w.seen[k] = append(w.seen[k], c.Number)
					w.mu.Unlock()
				}
				ccancel()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(w.finish)
	return w
}

func (w *crlWatch) finish() {
	w.stop()
	<-w.done
}

func (w *crlWatch) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, s := range w.seen {
		n += len(s)
	}
	return n
}

// backwards describes any CRL number that went down, or "".
func (w *crlWatch) backwards() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, s := range w.seen {
		for i := 1; i < len(s); i++ {
			if s[i] < s[i-1] {
				return fmt.Sprintf("CRL number of %s went from %d to %d", k, s[i-1], s[i])
			}
		}
	}
	return ""
}

// Taint the active intermediate of one server: its server replaces it,
// every SVID chained to it is re-issued under another authority, no
// workload is ever without a valid certificate, and it can then be
// revoked.
func TestTaintIntermediateReissuesEverySVID(t *testing.T) { runTaint(t, 6, false) }

// The same with the leader killed right after the taint: the operation
// completes and no CRL number goes backwards.
func TestTaintSurvivesLeaderKill(t *testing.T) { runTaint(t, 6, true) }

// An operator has a server prepare and activate its intermediate's
// successor ahead of the schedule: activating with nothing prepared and
// preparing twice are refused with nothing changed; then new certificates
// chain to the successor and the predecessor is OLD.
func TestOperatorPreparesAndActivatesAnIntermediate(t *testing.T) {
	e := startServer(t)
	inter := activeIntermediate(t, e.op, "s1")
	prepared := func() *operatorpb.Authority {
		resp, err := e.op.ListAuthorities(tctx(t, 10*time.Second), &operatorpb.ListAuthoritiesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range resp.Authorities {
			if a.Kind == "intermediate" && a.Profile == "ecdsa" && a.StateName == "PREPARED" {
				return a
			}
		}
		return nil
	}
	_, err := e.op.ActivateAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: inter.Id})
	if grpcstatus.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "nothing is prepared") {
		t.Errorf("activate with nothing prepared: %v", err)
	}
	if _, err := e.op.PrepareAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: inter.Id, DryRun: true}); err != nil {
		t.Fatalf("dry-run prepare: %v", err)
	}
	if resp, err := e.op.PrepareAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: rootID(t, e.op, "ecdsa"), DryRun: true}); err != nil || resp.Successor == nil {
		t.Errorf("dry-run prepare of a root: %v, %v", resp, err)
	}
	if prepared() != nil {
		t.Fatal("something was prepared by a dry run or a refusal")
	}
	if _, err := e.op.PrepareAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: inter.Id}); err != nil {
		t.Fatal(err)
	}
	var next *operatorpb.Authority
	waitFor(t, 20*time.Second, "the successor prepared", func() error {
		if next = prepared(); next == nil {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if _, err := e.op.PrepareAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: inter.Id}); grpcstatus.Code(err) != codes.AlreadyExists {
		t.Errorf("prepare twice: %v", err)
	}
	if _, err := e.op.ActivateAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: next.Id}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the successor active, the predecessor old", func() error {
		if a, o := authorityByID(t, e.op, next.Id), authorityByID(t, e.op, inter.Id); a.StateName != "ACTIVE" || o.StateName != "OLD" {
			return fmt.Errorf("%s %s, %s %s", next.Id, a.StateName, inter.Id, o.StateName)
		}
		return nil
	})
	c := mintCert(t, e.op, "spiffe://example.org/after-activate")
	rec, err := e.op.GetCertificate(tctx(t, 10*time.Second), &operatorpb.GetCertificateRequest{Serial: c.SerialNumber.Text(16)})
	if err != nil || rec.IssuerId != next.Id {
		t.Errorf("a new certificate is signed by %v (%v), want %s", rec.GetIssuerId(), err, next.Id)
	}
}
