package e2e

import (
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// attestRaw attests through the node API as an agent would, with a join
// token and an attempt ID, and returns the result.
func attestRaw(t *testing.T, addr string, bundle []*x509.Certificate, token, attempt string, csr []byte) (*nodepb.AttestResult, error) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, bundle), tlsconfig.AuthorizeMemberOf(td)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := nodepb.NewNodeClient(conn).Attest(tctx(t, 20*time.Second))
	if err != nil {
		return nil, err
	}
	payload, err := jointoken.NewEvidence(token).Payload()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&nodepb.AttestRequest{Step: &nodepb.AttestRequest_Start{Start: &nodepb.AttestStart{
		Attestor: jointoken.Name, Payload: payload, Csr: csr, AttemptId: attempt}}}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	return resp.GetResult(), nil
}

func agentCSR(t *testing.T) []byte {
	t.Helper()
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// A join token is spent only by an attestation that succeeds: one refused
// for its CSR, or shed by the server's rate limit, leaves it usable.
func TestJoinTokenNotSpentOnRefusals(t *testing.T) {
	e := startServerWith(t, func(c *server.Config) { c.NodeSignRate, c.NodeSignBurst, c.AdmissionWait = 0.5, 1, -1 })
	token := e.token()
	sum := sha256.Sum256([]byte(token))
	hash := sum[:]
	unspent := func(when string) {
		t.Helper()
		if tok := e.srv.Node().FSM().Read().JoinToken(hash); tok == nil || tok.ConsumedUnixNano != 0 {
			t.Fatalf("%s: the token was spent: %v", when, tok)
		}
	}
	if _, err := attestRaw(t, e.srv.APIAddr(), e.bundle, token, "a1", []byte("not a CSR")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("garbage CSR: %v, want InvalidArgument", err)
	}
	unspent("after a garbage CSR")
	// The garbage CSR used the agent's one-request burst: the next is shed.
	_, err := attestRaw(t, e.srv.APIAddr(), e.bundle, token, "a1", agentCSR(t))
	if c := status.Code(err); c != codes.ResourceExhausted && c != codes.Unavailable {
		t.Fatalf("over the rate limit: %v, want a retryable refusal", err)
	}
	unspent("after a rate-limit refusal")
	var res *nodepb.AttestResult
	waitFor(t, 10*time.Second, "attestation once the limit allows", func() error {
		res, err = attestRaw(t, e.srv.APIAddr(), e.bundle, token, "a1", agentCSR(t))
		return err
	})
	if res.AgentId != agentIDFor(token) {
		t.Fatalf("agent ID %s, want %s", res.AgentId, agentIDFor(token))
	}
	if tok := e.srv.Node().FSM().Read().JoinToken(hash); tok.ConsumedBy != res.AgentId {
		t.Fatalf("token consumed by %q, want %s", tok.ConsumedBy, res.AgentId)
	}
}

// An agent whose attestation answer was lost presents the token again
// with the same attempt ID and is admitted again, as the same agent; any
// other attempt is refused.
func TestAttestationAnswerLost(t *testing.T) {
	e := startServer(t)
	token := e.token()
	first, err := attestRaw(t, e.srv.APIAddr(), e.bundle, token, "attempt-1", agentCSR(t))
	if err != nil {
		t.Fatal(err)
	}
	again, err := attestRaw(t, e.srv.APIAddr(), e.bundle, token, "attempt-1", agentCSR(t))
	if err != nil {
		t.Fatalf("the same attempt again: %v", err)
	}
	if again.AgentId != first.AgentId {
		t.Fatalf("the retried attempt became %s, not %s", again.AgentId, first.AgentId)
	}
	_, err = attestRaw(t, e.srv.APIAddr(), e.bundle, token, "attempt-2", agentCSR(t))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("another attempt with the used token: %v, want PermissionDenied (already used)", err)
	}
	if n := len(e.srv.Node().FSM().Read().LedgerByNode(first.AgentId)); n != 2 {
		t.Fatalf("%d ledger records for the agent, want 2 (one per SVID handed out)", n)
	}
}

// When an agent renews its SVID, its node record's expiry moves with it.
func TestAgentRenewalMovesNodeExpiry(t *testing.T) {
	fc := clockwork.NewFakeClock()
	f := newFleet(t, fleetOpts{servers: 1, agents: 1, clock: fc})
	waitFor(t, 20*time.Second, "first SVID", func() error { return f.checkWorkloads(fc.Now()) })
	agentID := f.agentIDs[0]
	expiry := func() int64 {
		n, err := f.op.GetNode(tctx(t, 10*time.Second), &operatorpb.GetNodeRequest{SpiffeId: agentID})
		if err != nil {
			t.Fatal(err)
		}
		return n.Node.ExpiresUnix
	}
	before := expiry()
	f.advance(fc, 13*time.Hour, fleetStep)
	waitFor(t, 10*time.Second, "node expiry after renewal", func() error {
		if got := expiry(); got <= before {
			return fmt.Errorf("node expires at %d, as before the renewal", got)
		}
		return nil
	})
}
