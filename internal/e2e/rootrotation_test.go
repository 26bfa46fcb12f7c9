package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/sds"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
)

// peerView is what one poll of one agent saw for one profile: the
// workload's chain (DER, leaf first), the roots its Workload API bundle
// holds, and the SDS validation context (roots and CRLs) a proxy on that
// node holds.
type peerView struct {
	chain           [][]byte
	bundle          [][]byte
	vcRoots, vcCRLs [][]byte
}

// rootChecker polls every workload of a fleet, for both profiles, until
// stopped: each workload's SVID must verify against the bundle the
// Workload API sent with it (go-spiffe's x509svid.Verify for ECDSA; the
// SM2 chain's signatures and validity against the SM2 bundle), and every
// node's SDS validation context must accept every live peer's chain as
// Envoy would (a trusted root, and with CRLs a current CRL of every CA of
// the chain that does not list it). It records every failure, and the
// last views.
type rootChecker struct {
	mu       sync.Mutex
	failures []string
	polls    int
	last     map[string][]peerView // by profile, by agent
	stop     context.CancelFunc
	done     chan struct{}
}

func (f *fleet) startRootChecker(t *testing.T) *rootChecker {
	ctx, cancel := context.WithCancel(context.Background())
	c := &rootChecker{stop: cancel, done: make(chan struct{}), last: map[string][]peerView{}}
	conns := make([]*grpc.ClientConn, len(f.agents))
	for i, a := range f.agents {
		conns[i] = sdsConn(t, a)
	}
	go func() {
		defer close(c.done)
		for ctx.Err() == nil {
			views := map[string][]peerView{}
			var errs []string
			for i, a := range f.agents {
				for _, p := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
					v, err := pollWorkload(ctx, a, conns[i], p)
					if ctx.Err() != nil {
						return
					}
					if err != nil {
						errs = append(errs, fmt.Sprintf("agent %d %s: %v", i, p, err))
					}
					views[p] = append(views[p], v)
				}
			}
			now := time.Now()
			for p, vs := range views {
				for i, node := range vs {
					for j, peer := range vs {
						if len(peer.chain) == 0 || len(node.vcRoots) == 0 {
							continue
						}
						if err := envoyAccepts(p, peer.chain, node.vcRoots, node.vcCRLs, now); err != nil {
							errs = append(errs, fmt.Sprintf("%s: the SDS validation context of agent %d rejects the SVID of agent %d: %v", p, i, j, err))
						}
					}
				}
			}
			c.mu.Lock()
			c.polls++
			c.last = views
			for _, e := range errs {
				c.failures = append(c.failures, time.Now().Format(time.StampMilli)+" "+e)
			}
			c.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(c.finish)
	return c
}

func (c *rootChecker) finish() {
	c.stop()
	<-c.done
}

// views returns the views of the last complete poll after the next one
// (so that they were taken after the call).
func (c *rootChecker) views(t testing.TB, profile string) []peerView {
	t.Helper()
	c.mu.Lock()
	n := c.polls
	c.mu.Unlock()
	var out []peerView
	waitFor(t, 30*time.Second, "a checker poll", func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.polls < n+2 {
			return errors.New("not yet")
		}
		out = c.last[profile]
		return nil
	})
	return out
}

// pollWorkload fetches one agent's workload SVID of a profile with the
// bundle that came with it and checks it, and its SDS validation context.
func pollWorkload(ctx context.Context, a *agent.Agent, conn *grpc.ClientConn, profile string) (peerView, error) {
	var v peerView
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	now := time.Now()
	if profile == ca.ProfileECDSA {
		x, err := workloadapi.FetchX509Context(cctx, workloadapi.WithAddr("unix://"+a.SocketPath()))
		if err != nil {
			return v, fmt.Errorf("Workload API: %v", err)
		}
		s := x.DefaultSVID()
		if _, _, err := x509svid.Verify(s.Certificates, x.Bundles); err != nil {
			return v, fmt.Errorf("go-spiffe rejects the SVID with the bundle it came with: %v", err)
		}
		for _, c := range s.Certificates {
			v.chain = append(v.chain, c.Raw)
		}
		b, err := x.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain())
		if err != nil {
			return v, err
		}
		for _, r := range b.X509Authorities() {
			v.bundle = append(v.bundle, r.Raw)
		}
	} else {
		resp, err := fetchSM2(cctx, a)
		if err != nil {
			return v, fmt.Errorf("Workload API (sm2): %v", err)
		}
		var s *workload.X509SVID
		for _, x := range resp.Svids {
			if strings.HasSuffix(x.SpiffeId, "-gm") {
				s = x
			}
		}
		if s == nil {
			return v, errors.New("no SM2 SVID served")
		}
		chain, err := smx509.ParseCertificates(s.X509Svid)
		if err != nil {
			return v, err
		}
		roots, err := smx509.ParseCertificates(s.Bundle)
		if err != nil {
			return v, err
		}
		for _, c := range chain {
			v.chain = append(v.chain, c.Raw)
		}
		for _, r := range roots {
			v.bundle = append(v.bundle, r.Raw)
		}
		if err := envoyAccepts(profile, v.chain, v.bundle, nil, now); err != nil {
			return v, fmt.Errorf("the SM2 SVID does not verify with the bundle it came with: %v", err)
		}
	}
	name := "ROOTCA"
	if profile == ca.ProfileSM2 {
		name += sds.ProfileSeparator + ca.ProfileSM2
	}
	resp, err := secretv3.NewSecretDiscoveryServiceClient(conn).FetchSecrets(cctx, &discoveryv3.DiscoveryRequest{
		Node: &corev3.Node{Id: "root-checker", Cluster: "e2e"}, ResourceNames: []string{name}, TypeUrl: sds.SecretTypeURL})
	if err != nil {
		return v, fmt.Errorf("SDS %s: %v", name, err)
	}
	for _, any := range resp.GetResources() {
		sec := &tlsv3.Secret{}
		if err := any.UnmarshalTo(sec); err != nil {
			return v, err
		}
		vc := sec.GetValidationContext()
		v.vcRoots = pemBlocks(vc.GetTrustedCa().GetInlineBytes())
		v.vcCRLs = pemBlocks(vc.GetCrl().GetInlineBytes())
	}
	if len(v.vcRoots) == 0 || len(v.vcCRLs) == 0 {
		return v, fmt.Errorf("SDS %s: a validation context of %d roots and %d CRLs", name, len(v.vcRoots), len(v.vcCRLs))
	}
	return v, nil
}

// pemBlocks returns the DER of every PEM block.
func pemBlocks(b []byte) [][]byte {
	var out [][]byte
	for {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			return out
		}
		out = append(out, block.Bytes)
	}
}

// fetchSM2 asks the Workload API for SM2 SVIDs too.
func fetchSM2(ctx context.Context, a *agent.Agent) (*workload.X509SVIDResponse, error) {
	conn, err := grpc.NewClient("unix://"+a.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true", agent.ProfilesMetadataKey, ca.ProfileSM2)
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

// envoyAccepts verifies a chain (leaf, intermediate) as a proxy with these
// roots and CRLs would: both certificates valid now, the leaf signed by the
// intermediate, the intermediate by one of the roots and, when there are
// CRLs, a current CRL of the intermediate and of that root, by issuer and
// key identifier, neither listing the certificate below it.
func envoyAccepts(profile string, chain, roots, crls [][]byte, now time.Time) error {
	p, err := ca.ProfileByName(profile)
	if err != nil {
		return err
	}
	if len(chain) < 2 {
		return fmt.Errorf("chain of %d", len(chain))
	}
	leaf, err := p.ParseCertificate(chain[0])
	if err != nil {
		return err
	}
	inter, err := p.ParseCertificate(chain[1])
	if err != nil {
		return err
	}
	for _, c := range []*ca.Certificate{leaf, inter} {
		if now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
			return fmt.Errorf("%s is not valid now", c.Subject)
		}
	}
	if err := ca.CheckSignedBy(leaf, inter); err != nil {
		return fmt.Errorf("leaf: %v", err)
	}
	var root *ca.Certificate
	for _, der := range roots {
		r, err := p.ParseCertificate(der)
		if err == nil && ca.CheckSignedBy(inter, r) == nil {
			root = r
		}
	}
	if root == nil {
		return fmt.Errorf("intermediate %s: no trusted root signed it (%d roots)", inter.Subject, len(roots))
	}
	if len(crls) == 0 {
		return nil
	}
	for _, pair := range []struct{ ca, child *ca.Certificate }{{inter, leaf}, {root, inter}} {
		found := false
		for _, der := range crls {
			rl, err := x509.ParseRevocationList(der)
			if err != nil {
				return err
			}
			if !bytes.Equal(rl.RawIssuer, pair.ca.RawSubject) || !bytes.Equal(rl.AuthorityKeyId, pair.ca.SubjectKeyID) {
				continue
			}
			found = true
			if !now.Before(rl.NextUpdate) {
				return fmt.Errorf("the CRL of %s expired at %s", pair.ca.Subject, rl.NextUpdate)
			}
			for _, e := range rl.RevokedCertificateEntries {
				if e.SerialNumber.Cmp(pair.child.SerialNumber) == 0 {
					return fmt.Errorf("%s is revoked by the CRL of %s", pair.child.Subject, pair.ca.Subject)
				}
			}
		}
		if !found {
			return fmt.Errorf("no CRL of %s: a proxy with CRLs rejects the chain", pair.ca.Subject)
		}
	}
	return nil
}

// rootsEqual reports whether two sets of DER roots are the same.
func rootsEqual(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.ContainsFunc(b, func(y []byte) bool { return bytes.Equal(x, y) }) {
			return false
		}
	}
	return true
}

// rootCert returns the certificate of an authority.
func rootCert(t testing.TB, op operatorpb.OperatorClient, id string) []byte {
	t.Helper()
	a := authorityByID(t, op, id)
	if a == nil || len(a.Certificate) == 0 {
		t.Fatalf("no authority %s with a certificate", id)
	}
	return a.Certificate
}

// mintProfile mints an SVID of a profile through one server's operator API
// and returns its chain.
func mintProfile(t testing.TB, op operatorpb.OperatorClient, profile, id string) ([][]byte, error) {
	p, err := ca.ProfileByName(profile)
	if err != nil {
		return nil, err
	}
	key, err := p.GenerateKey()
	if err != nil {
		return nil, err
	}
	csr, err := p.CreateCSR(key)
	if err != nil {
		return nil, err
	}
	resp, err := op.MintX509SVID(tctx(t, 20*time.Second), &operatorpb.MintX509SVIDRequest{SpiffeId: id, Csr: csr, Profile: profile})
	if err != nil {
		return nil, err
	}
	return resp.Chain, nil
}

// chainsTo reports whether a chain's intermediate was signed by root.
func chainsTo(profile string, chain [][]byte, root []byte) bool {
	p, _ := ca.ProfileByName(profile)
	inter, err := p.ParseCertificate(chain[1])
	if err != nil {
		return false
	}
	r, err := p.ParseCertificate(root)
	return err == nil && ca.CheckSignedBy(inter, r) == nil
}

// Root rotation, for each profile, on a 3-server cluster with real agents:
// prepare → every bundle (Workload API, SDS validation context) holds both
// roots → activate → every server's new leaves chain to the new root while
// the workloads' old leaves still verify → taint the old root → every SVID
// chained to it is re-issued → revoke it → every bundle holds only the new
// root. A checker polls every workload throughout and finds none without a
// valid certificate and no proxy whose validation context rejects a live
// peer. First the refusals: activating with nothing prepared, tainting the
// only active root, revoking an active root change nothing.
func TestRootRotationEachProfile(t *testing.T) {
	f := newFleet(t, fleetOpts{servers: 3, agents: 3, clock: clockwork.NewRealClock(), reissueJitter: time.Second})
	for i := range f.agents {
		f.e.createEntry(f.agentIDs[i], f.ids[i]+"-gm", ca.ProfileSM2)
	}
	for i := range f.agents {
		waitFor(t, 30*time.Second, fmt.Sprintf("workload %d served", i), func() error { return f.checkWorkloads(time.Time{}) })
		waitFor(t, 30*time.Second, fmt.Sprintf("workload %d served its SM2 SVID", i), func() error {
			_, err := pollWorkload(context.Background(), f.agents[i], sdsConn(t, f.agents[i]), ca.ProfileSM2)
			return err
		})
	}
	op := operatorClient(t, f.follower().srv.AdminSocket()) // through a follower: writes are forwarded
	checker := f.startRootChecker(t)
	crls := f.watchCRLNumbers(t)
	newRoots := map[string][]byte{}
	for _, profile := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
		start := time.Now()
		oldRoot := rootID(t, op, profile)
		oldDER := rootCert(t, op, oldRoot)

		// Refusals: clear errors, nothing changed.
		for _, c := range []struct {
			what  string
			call  func() error
			want  codes.Code
			words string
		}{
			{"activate with nothing prepared", func() error {
				_, err := op.ActivateAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldRoot})
				return err
			}, codes.FailedPrecondition, "nothing is prepared"},
			{"taint the only active root", func() error {
				_, err := op.TaintAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldRoot})
				return err
			}, codes.FailedPrecondition, "successor is active"},
			{"revoke the active root", func() error {
				_, err := op.RevokeAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldRoot})
				return err
			}, codes.FailedPrecondition, "taint"},
		} {
			if err := c.call(); grpcstatus.Code(err) != c.want || !strings.Contains(err.Error(), c.words) {
				t.Errorf("%s %s: %v, want %s saying %q", profile, c.what, err, c.want, c.words)
			}
		}
		if a := authorityByID(t, op, oldRoot); a.StateName != "ACTIVE" {
			t.Fatalf("after the refusals %s is %s", oldRoot, a.StateName)
		}
		for _, a := range mustList(t, op) {
			if a.Kind == "root" && a.Profile == profile && a.Id != oldRoot {
				t.Fatalf("a refusal left root %s (%s)", a.Id, a.StateName)
			}
		}

		// A certificate an operator minted under the old root: no agent
		// re-issues it, so it still chains to the old root after the taint.
		minted, err := mintProfile(t, op, profile, "spiffe://example.org/minted-before/"+profile)
		if err != nil || !chainsTo(profile, minted, oldDER) {
			t.Fatalf("%s mint under the old root: %v", profile, err)
		}

		// Prepare: in every bundle at once, signing nothing.
		resp, err := op.PrepareAuthority(tctx(t, 20*time.Second), &operatorpb.AuthorityStepRequest{Id: oldRoot})
		if err != nil {
			t.Fatalf("%s prepare: %v", profile, err)
		}
		newRoot := resp.Successor.GetId()
		if newRoot == "" || resp.Successor.StateName != "PREPARED" {
			t.Fatalf("%s prepare: %v", profile, resp)
		}
		if _, err := op.PrepareAuthority(tctx(t, 20*time.Second), &operatorpb.AuthorityStepRequest{Id: oldRoot}); grpcstatus.Code(err) != codes.AlreadyExists {
			t.Errorf("%s prepare twice: %v", profile, err)
		}
		var newDER []byte
		waitFor(t, 20*time.Second, profile+" prepared root's CRL published", func() error {
			if _, err := op.GetCRL(tctx(t, 10*time.Second), &operatorpb.GetCRLRequest{IssuerId: newRoot}); err != nil {
				return err
			}
			newDER = rootCert(t, op, newRoot)
			return nil
		})
		both := [][]byte{oldDER, newDER}
		waitBundles := func(what string, want [][]byte) {
			t.Helper()
			waitFor(t, 30*time.Second, what, func() error {
				for i, v := range checker.views(t, profile) {
					if !rootsEqual(v.bundle, want) || !rootsEqual(v.vcRoots, want) {
						return fmt.Errorf("agent %d: Workload API bundle of %d roots, SDS validation context of %d, want %d", i, len(v.bundle), len(v.vcRoots), len(want))
					}
				}
				return nil
			})
		}
		waitBundles(profile+": every Workload API bundle and SDS validation context holds both roots", both)
		oldChains := map[int][]byte{}
		for i, v := range checker.views(t, profile) {
			if !chainsTo(profile, v.chain, oldDER) {
				t.Fatalf("%s: agent %d's SVID does not chain to the old root before activation", profile, i)
			}
			oldChains[i] = v.chain[0]
			if profile == ca.ProfileECDSA {
				opensslVerifyDER(t, v.chain, v.vcRoots, v.vcCRLs)
			}
		}

		// Activate: every server's new leaves chain to the new root; the
		// workloads' old leaves still verify (the checker).
		if _, err := op.ActivateAuthority(tctx(t, 20*time.Second), &operatorpb.AuthorityStepRequest{Id: newRoot}); err != nil {
			t.Fatalf("%s activate: %v", profile, err)
		}
		if a := authorityByID(t, op, oldRoot); a.StateName != "OLD" {
			t.Fatalf("%s after activation the old root is %s", profile, a.StateName)
		}
		for _, m := range f.running() {
			mop := operatorClient(t, m.srv.AdminSocket())
			waitFor(t, 30*time.Second, profile+": "+m.cfg.NodeID+" signs under the new root", func() error {
				chain, err := mintProfile(t, mop, profile, "spiffe://example.org/after-root/"+m.cfg.NodeID)
				if err != nil {
					return err
				}
				if !chainsTo(profile, chain, newDER) {
					return errors.New("its new leaves still chain to the old root")
				}
				return envoyAccepts(profile, chain, both, nil, time.Now())
			})
		}
		for i, v := range checker.views(t, profile) {
			if !bytes.Equal(v.chain[0], oldChains[i]) {
				t.Logf("%s: agent %d renewed before the taint", profile, i)
			}
		}

		// Taint the old root: everything chained to it is re-issued.
		if _, err := op.TaintAuthority(tctx(t, 20*time.Second), &operatorpb.AuthorityStepRequest{Id: oldRoot}); err != nil {
			t.Fatalf("%s taint: %v", profile, err)
		}
		waitFor(t, 60*time.Second, profile+": every SVID chained to the old root re-issued", func() error {
			for i, v := range checker.views(t, profile) {
				if !chainsTo(profile, v.chain, newDER) {
					return fmt.Errorf("agent %d's workload still chains to the old root", i)
				}
			}
			// Only the minted certificate is left.
			if a := authorityByID(t, op, oldRoot); a.PendingCertificates != 1 || len(a.PendingNodes) != 1 || a.PendingNodes[0] != "operator" {
				return fmt.Errorf("%s: %s (%d pending on %v)", a.StateName, a.NextStep, a.PendingCertificates, a.PendingNodes)
			}
			return nil
		})

		// Revoke it: refused while the minted certificate chains to it,
		// saying how many and which nodes; forced, every bundle holds only
		// the new root.
		_, err = op.RevokeAuthority(tctx(t, 20*time.Second), &operatorpb.AuthorityStepRequest{Id: oldRoot})
		if grpcstatus.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "1 unexpired certificate(s)") || !strings.Contains(err.Error(), "operator") {
			t.Errorf("%s revoke with a certificate still chained to it: %v", profile, err)
		}
		if a := authorityByID(t, op, oldRoot); a.StateName != "TAINTED" {
			t.Fatalf("%s: after a refused revoke the old root is %s", profile, a.StateName)
		}
		resp, err = op.RevokeAuthority(tctx(t, 20*time.Second), &operatorpb.AuthorityStepRequest{Id: oldRoot, Force: true})
		if err != nil || resp.Authority.StateName != "REVOKED" {
			t.Fatalf("%s revoke --force: %v, %v", profile, resp, err)
		}
		waitBundles(profile+": every Workload API bundle and SDS validation context holds only the new root", [][]byte{newDER})
		if envoyAccepts(profile, minted, [][]byte{newDER}, nil, time.Now()) == nil {
			t.Errorf("%s: a certificate chained to the revoked root still verifies", profile)
		}
		if got := rootID(t, op, profile); got != newRoot {
			t.Fatalf("%s: the active root is %s, want %s", profile, got, newRoot)
		}
		newRoots[profile] = newDER
		if profile == ca.ProfileECDSA {
			// The agents' own SVIDs, which authenticate them to the
			// servers, were re-issued under the new root too.
			for i, dir := range f.dirs {
				b, err := os.ReadFile(filepath.Join(dir, "agent", "svid.pem"))
				if err != nil {
					t.Fatal(err)
				}
				chain, err := ca.ParseCertificatesPEM(b)
				if err != nil || len(chain) < 2 || !chainsTo(profile, [][]byte{chain[0].Raw, chain[1].Raw}, newDER) {
					t.Errorf("agent %d's own SVID does not chain to the new root (%v)", i, err)
				}
			}
			// openssl, with the CRLs of every CA of the chain, agrees.
			for _, v := range checker.views(t, profile) {
				opensslVerifyDER(t, v.chain, v.vcRoots, v.vcCRLs)
			}
		}
		t.Logf("%s root rotated (prepare → activate → taint → re-issue → revoke) in %s", profile, time.Since(start).Round(time.Millisecond))
	}
	// A rolling restart: every server comes back (it trusts its peers'
	// new-root certificates from its identity before its state is
	// replayed) and signs under the new roots.
	for i := range f.members {
		m := f.members[i]
		m.kill()
		m = f.restart(m)
		waitFor(t, 30*time.Second, m.cfg.NodeID+" ready after its restart", func() error {
			if !m.srv.Ready() {
				return errors.New("not ready")
			}
			return nil
		})
		mop := operatorClient(t, m.srv.AdminSocket())
		for _, profile := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
			waitFor(t, 30*time.Second, m.cfg.NodeID+" signs under the new "+profile+" root after its restart", func() error {
				chain, err := mintProfile(t, mop, profile, "spiffe://example.org/after-restart/"+m.cfg.NodeID)
				if err != nil {
					return err
				}
				return envoyAccepts(profile, chain, [][]byte{newRoots[profile]}, nil, time.Now())
			})
		}
	}
	checker.finish()
	crls.finish()
	if len(checker.failures) > 0 {
		n := min(len(checker.failures), 40)
		t.Errorf("%d failures in %d polls; the first %d:\n%s", len(checker.failures), checker.polls, n, strings.Join(checker.failures[:n], "\n"))
	}
	if len(checker.failures) == 0 {
		t.Logf("checker: %d polls of %d workloads × 2 profiles, no failure", checker.polls, len(f.agents))
	}
	if msg := crls.backwards(); msg != "" {
		t.Error(msg)
	}
}

// opensslVerifyDER runs openssl verify -crl_check_all on a chain with the
// roots and CRLs of a validation context.
func opensslVerifyDER(t testing.TB, chain, roots, crls [][]byte) {
	t.Helper()
	dir := t.TempDir()
	var crlPEM []byte
	for _, der := range crls {
		crlPEM = append(crlPEM, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})...)
	}
	testtool.OpenSSLVerify(t, "-x509_strict", "-CAfile", testtool.WriteFile(t, dir, "roots.pem", ca.EncodePEM(roots...)),
		"-untrusted", testtool.WriteFile(t, dir, "inter.pem", ca.EncodePEM(chain[1:]...)),
		"-crl_check_all", "-CRLfile", testtool.WriteFile(t, dir, "crls.pem", crlPEM),
		testtool.WriteFile(t, dir, "leaf.pem", ca.EncodePEM(chain[0])))
}

func mustList(t testing.TB, op operatorpb.OperatorClient) []*operatorpb.Authority {
	t.Helper()
	resp, err := op.ListAuthorities(tctx(t, 10*time.Second), &operatorpb.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Authorities
}
