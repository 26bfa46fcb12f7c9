package e2e

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// policy is a test Authorizer: it denies the requests of one kind (none
// while zero) and lets registration entries decide the others.
type policy struct {
	deny atomic.Int32
}

const policyReason = "denied by the test policy"

func (p *policy) Authorize(_ context.Context, r *server.Request) (server.Decision, error) {
	if server.Kind(p.deny.Load()) == r.Kind {
		return server.Decision{Reason: policyReason}, nil
	}
	return server.Decision{Allow: true, SPIFFEID: entryID(r)}, nil
}

func entryID(r *server.Request) string {
	if r.Entry != nil {
		return r.Entry.SpiffeId
	}
	return ""
}

// Every issuance path asks the Authorizer: agent attestation, agent SVID
// renewal, workload X509-SVIDs, JWT-SVIDs and operator mints. A deny is
// refused to the caller and audited as an event.
func TestEveryIssuancePathAsksTheAuthorizer(t *testing.T) {
	p := &policy{}
	e := startServerWith(t, func(c *server.Config) { c.Authorizer = p })
	denied := func(kind server.Kind, action string, err error) {
		t.Helper()
		if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != policyReason {
			t.Errorf("%s denied by the policy: %v, want PermissionDenied %q", kind, err, policyReason)
		}
		if _, werr := e.events.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
			return ev.Decision == audit.Deny && ev.Action == action && ev.Reason == policyReason
		}); werr != nil {
			t.Errorf("%s deny not audited as a %s event: %v", kind, action, werr)
		}
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")

	p.deny.Store(int32(server.KindAgentSVID))
	_, err := attestRaw(t, e.srv.APIAddr(), e.bundle, e.token(), "a", agentCSR(t))
	denied(server.KindAgentSVID, "agent.svid", err)

	p.deny.Store(0)
	token := e.token()
	svid, err := attestNode(tctx(t, 20*time.Second), nodepbClient(t, e), token)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///"+e.srv.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(svid, x509svidBundle(e.bundle), tlsconfig.AuthorizeMemberOf(td)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	node := nodepb.NewNodeClient(conn)
	en := e.entry(agentIDFor(token), "spiffe://example.org/pipeline/w", time.Hour, "unix:uid:"+uid)

	p.deny.Store(int32(server.KindAgentSVID))
	_, err = node.RenewAgentSVID(tctx(t, 10*time.Second), &nodepb.RenewAgentSVIDRequest{Csr: agentCSR(t)})
	denied(server.KindAgentSVID, "agent.svid", err)

	p.deny.Store(int32(server.KindWorkloadSVID))
	resp, err := node.SignX509SVIDs(tctx(t, 10*time.Second), &nodepb.SignX509SVIDsRequest{Requests: []*nodepb.SVIDRequest{{EntryId: en.Id, Csr: agentCSR(t)}}})
	if err != nil || resp.Results[0].Error != policyReason || len(resp.Results[0].Chain) > 0 {
		t.Errorf("workload SVID denied by the policy: %v, %+v", err, resp.GetResults())
	}
	denied(server.KindWorkloadSVID, "x509.sign", status.Error(codes.PermissionDenied, resp.GetResults()[0].GetError()))

	p.deny.Store(int32(server.KindJWTSVID))
	_, err = node.SignJWTSVID(tctx(t, 10*time.Second), &nodepb.SignJWTSVIDRequest{EntryId: en.Id, Audience: []string{"db"}})
	denied(server.KindJWTSVID, "jwt.sign", err)

	p.deny.Store(int32(server.KindMint))
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	_, err = e.op.MintX509SVID(tctx(t, 10*time.Second), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/ops/x", Csr: csr})
	denied(server.KindMint, "x509.mint", err)

	// With nothing denied, every path issues again, and says so.
	p.deny.Store(0)
	if resp, err := node.SignX509SVIDs(tctx(t, 10*time.Second), &nodepb.SignX509SVIDsRequest{Requests: []*nodepb.SVIDRequest{{EntryId: en.Id, Csr: agentCSR(t)}}}); err != nil || len(resp.Results[0].Chain) == 0 {
		t.Fatalf("allowed workload SVID: %v, %+v", err, resp.GetResults())
	}
	if _, err := e.events.Wait(tctx(t, 5*time.Second), func(ev audit.Event) bool {
		return ev.Decision == audit.Allow && ev.Action == "x509.sign" && ev.Subject == en.SpiffeId && ev.Details["serial"] != ""
	}); err != nil {
		t.Errorf("issuance not audited: %v", err)
	}
}

// nodepbClient is a node API client that authenticates the server only.
func nodepbClient(t *testing.T, e *env) nodepb.NodeClient {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	conn, err := grpc.NewClient("passthrough:///"+e.srv.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.TLSClientConfig(x509svidBundle(e.bundle), tlsconfig.AuthorizeMemberOf(td)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return nodepb.NewNodeClient(conn)
}
