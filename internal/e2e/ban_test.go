package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/x509pop"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	grpcstatus "google.golang.org/grpc/status"
)

// popNode is a node that attests with x509pop (the same certificate, and
// so the same agent ID, each time) through the raw node API.
type popNode struct {
	t      *testing.T
	addr   string
	bundle []*x509.Certificate
	chain  []byte
	key    *ecdsa.PrivateKey
}

// attest runs one x509pop attestation (a fresh challenge: new evidence)
// and returns a node API client authenticated with the agent SVID.
func (p *popNode) attest() (nodepb.NodeClient, *x509svid.SVID, error) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	bundle := x509svidBundle(p.bundle)
	conn, err := grpc.NewClient("passthrough:///"+p.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeMemberOf(td)))))
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	ev, err := x509pop.NewEvidence([][]byte{p.chain}, p.key)
	if err != nil {
		return nil, nil, err
	}
	payload, err := ev.Payload()
	if err != nil {
		return nil, nil, err
	}
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := nodepb.NewNodeClient(conn).Attest(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := stream.Send(&nodepb.AttestRequest{Step: &nodepb.AttestRequest_Start{Start: &nodepb.AttestStart{Attestor: ev.Name(), Payload: payload, Csr: csr}}}); err != nil {
		return nil, nil, err
	}
	var res *nodepb.AttestResult
	for res == nil {
		resp, err := stream.Recv()
		if err != nil {
			return nil, nil, err
		}
		if c := resp.GetChallenge(); c != nil {
			answer, err := ev.Respond(c)
			if err != nil {
				return nil, nil, err
			}
			if err := stream.Send(&nodepb.AttestRequest{Step: &nodepb.AttestRequest_ChallengeResponse{ChallengeResponse: answer}}); err != nil {
				return nil, nil, err
			}
			continue
		}
		res = resp.GetResult()
	}
	var raw []byte
	for _, c := range res.GetSvidChain() {
		raw = append(raw, c...)
	}
	keyDER, _ := ca.ECDSA.MarshalPrivateKey(key)
	svid, err := x509svid.ParseRaw(raw, keyDER)
	if err != nil {
		return nil, nil, err
	}
	mconn, err := grpc.NewClient("passthrough:///"+p.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td)))))
	if err != nil {
		return nil, nil, err
	}
	p.t.Cleanup(func() { mconn.Close() })
	return nodepb.NewNodeClient(mconn), svid, nil
}

func renew(c nodepb.NodeClient) error {
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := c.RenewAgentSVID(ctx, &nodepb.RenewAgentSVIDRequest{Csr: csr})
	return err
}

func signWorkload(c nodepb.NodeClient, entryID string) (*x509.Certificate, error) {
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := c.SignX509SVIDs(ctx, &nodepb.SignX509SVIDsRequest{Requests: []*nodepb.SVIDRequest{{EntryId: entryID, Csr: csr}}})
	if err != nil {
		return nil, err
	}
	if e := resp.Results[0].Error; e != "" {
		return nil, errors.New(e)
	}
	return x509.ParseCertificate(resp.Results[0].Chain[0])
}

// Ban a node in a 3-server cluster: it can no longer renew, sign or
// attest; its agent's and workloads' unexpired certificates appear in the
// CRLs an SDS client on another node's agent gets; evicting it is refused
// while it is banned. Unban lets it attest again with new evidence (same
// agent ID); evict then forces it to attest again and reports its entries.
func TestBanUnbanEvictNode(t *testing.T) {
	root, leaf, key := provisioningCA(t, "node-9")
	f := newFleet(t, fleetOpts{servers: 3, agents: 1, clock: clockwork.NewRealClock(), tune: func(c *server.Config) {
		a, err := x509pop.New(x509pop.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Roots: []*x509.Certificate{root}})
		if err != nil {
			t.Fatal(err)
		}
		c.NodeAttestors = []attest.NodeAttestor{a}
	}})
	h := sha1.Sum(leaf)
	nodeID := "spiffe://example.org/meshca/agent/x509pop/" + hex.EncodeToString(h[:])
	pop := &popNode{t: t, addr: f.members[1].srv.APIAddr(), bundle: f.e.bundle, chain: leaf, key: key}
	nc, agentSVID, err := pop.attest()
	if err != nil {
		t.Fatal(err)
	}
	entry := f.e.entry(nodeID, "spiffe://example.org/banned/web", time.Hour, "unix:uid:"+uid)
	workload, err := signWorkload(nc, entry.Id)
	if err != nil {
		t.Fatal(err)
	}
	// The proxy is on the other (real) agent: it must learn the banned
	// node's certificates are revoked.
	env := newEnvoy(t, sdsConn(t, f.agents[0]), "sidecar~10.0.0.9~peer", "default", "ROOTCA")
	env.recvHaving("default", "ROOTCA")

	op := operatorClient(t, f.follower().srv.AdminSocket())
	if _, err := op.BanNode(tctx(t, 10*time.Second), &operatorpb.BanNodeRequest{SpiffeId: "spiffe://example.org/meshca/agent/x509pop/00", Banned: true}); grpcstatus.Code(err) != codes.NotFound {
		t.Errorf("ban of an unknown node: %v", err)
	}
	dry, err := op.BanNode(tctx(t, 10*time.Second), &operatorpb.BanNodeRequest{SpiffeId: nodeID, Banned: true, DryRun: true})
	if err != nil || len(dry.Revoked) != 2 {
		t.Fatalf("dry-run ban: %v, %v (want the agent SVID and the workload's)", dry, err)
	}
	if err := renew(nc); err != nil {
		t.Fatalf("renewal after a dry-run ban: %v", err)
	}
	ban, err := op.BanNode(tctx(t, 10*time.Second), &operatorpb.BanNodeRequest{SpiffeId: nodeID, Banned: true, Reason: 1})
	if err != nil || !ban.Node.Banned || len(ban.Revoked) != 3 { // the SVID renewed above too
		t.Fatalf("ban: %v, %v", ban, err)
	}
	if err := renew(nc); grpcstatus.Code(err) != codes.PermissionDenied {
		t.Errorf("renewal of a banned node: %v, want PermissionDenied", err)
	}
	// Refused whole (PermissionDenied), or, by a server that had not
	// applied the ban when it signed, per request: the ledger refuses it.
	if _, err := signWorkload(nc, entry.Id); err == nil || !strings.Contains(err.Error(), "banned") {
		t.Errorf("workload signing for a banned node: %v, want a refusal", err)
	}
	if _, _, err := pop.attest(); grpcstatus.Code(err) != codes.PermissionDenied {
		t.Errorf("attestation of a banned node: %v, want PermissionDenied", err)
	}
	if _, err := op.EvictNode(tctx(t, 10*time.Second), &operatorpb.EvictNodeRequest{SpiffeId: nodeID}); grpcstatus.Code(err) != codes.FailedPrecondition {
		t.Errorf("evicting a banned node: %v, want FailedPrecondition", err)
	}
	// The peer proxy's CRLs list the agent SVID and the workload's.
	want := map[string]*x509.Certificate{agentSVID.Certificates[0].SerialNumber.String(): agentSVID.Certificates[1],
		workload.SerialNumber.String(): agentSVID.Certificates[1]}
	for len(want) > 0 {
		r := env.recv()
		env.ack(r)
		s := secretsOf(t, r)["ROOTCA"]
		if s == nil {
			continue
		}
		for serial, issuer := range want {
			n, _ := new(big.Int).SetString(serial, 10)
			if in, _ := crlLists(t, s.GetValidationContext(), issuer, n); in {
				delete(want, serial)
			}
		}
	}

	// Unban: the same node attests again with new evidence and renews.
	if _, err := op.BanNode(tctx(t, 10*time.Second), &operatorpb.BanNodeRequest{SpiffeId: nodeID, Banned: false}); err != nil {
		t.Fatal(err)
	}
	if err := renew(nc); grpcstatus.Code(err) != codes.PermissionDenied {
		t.Errorf("renewal with the revoked SVID after the unban: %v, want PermissionDenied", err)
	}
	nc2, svid2, err := pop.attest()
	if err != nil {
		t.Fatalf("attestation after the unban: %v", err)
	}
	if svid2.ID.String() != nodeID {
		t.Fatalf("attested as %s, want %s", svid2.ID, nodeID)
	}
	if err := renew(nc2); err != nil {
		t.Fatalf("renewal after the unban: %v", err)
	}

	// Evict: reported with its entries; the agent must attest again.
	ev, err := op.EvictNode(tctx(t, 10*time.Second), &operatorpb.EvictNodeRequest{SpiffeId: nodeID})
	if err != nil || len(ev.Entries) != 1 || ev.Entries[0].Id != entry.Id {
		t.Fatalf("evict: %v, %v", ev, err)
	}
	if _, err := op.GetNode(tctx(t, 10*time.Second), &operatorpb.GetNodeRequest{SpiffeId: nodeID}); grpcstatus.Code(err) != codes.NotFound {
		t.Errorf("evicted node still listed: %v", err)
	}
	if err := renew(nc2); grpcstatus.Code(err) != codes.PermissionDenied {
		t.Errorf("renewal of an evicted node: %v, want PermissionDenied", err)
	}
	nc3, _, err := pop.attest()
	if err != nil {
		t.Fatalf("attestation after the eviction: %v", err)
	}
	if _, err := signWorkload(nc3, entry.Id); err != nil {
		t.Errorf("the entry did not apply again after re-attestation: %v", err)
	}
}
