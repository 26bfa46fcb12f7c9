package e2e

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A server that cannot commit (cut off from its quorum) answers the node
// API with Unavailable, naming the cause, never InvalidArgument: agents
// retry it, through another server, and never give up their evidence. An
// agent whose first server is on the minority side attests and gets its
// workload's SVID through the other.
func TestNodeAPIUnavailableIsNotARefusal(t *testing.T) {
	fc := newFaultCluster(t, 3)
	s1 := fc.members[0]
	token := fc.token(server.TokenKindAgent)
	en, err := fc.ops["s1"].CreateEntry(tctx(t, 20*time.Second), &operatorpb.CreateEntryRequest{Entry: &operatorpb.Entry{
		ParentId: agentIDFor(token), SpiffeId: "spiffe://example.org/w", TtlSeconds: 3600,
		Selectors: []*operatorpb.Selector{{Type: "unix", Value: "uid:" + uid}}}})
	if err != nil {
		t.Fatal(err)
	}
	node := fc.nodeClient(s1.srv.APIAddr(), token)
	agentToken := fc.token(server.TokenKindAgent)
	fc.ops["s1"].CreateEntry(tctx(t, 20*time.Second), &operatorpb.CreateEntryRequest{Entry: &operatorpb.Entry{
		ParentId: agentIDFor(agentToken), SpiffeId: "spiffe://example.org/agent-workload", TtlSeconds: 3600,
		Selectors: []*operatorpb.Selector{{Type: "unix", Value: "uid:" + uid}}}})

	fc.net.Partition("s1")
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	check := func(what string, err error) {
		t.Helper()
		st := status.Convert(err)
		if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "no leader") && !strings.Contains(st.Message(), "quorum") {
			t.Errorf("%s on a server without quorum: %v; want Unavailable naming a missing leader or quorum", what, err)
		}
	}
	_, err = node.RenewAgentSVID(tctx(t, 10*time.Second), &nodepb.RenewAgentSVIDRequest{Csr: csr})
	check("RenewAgentSVID", err)
	_, err = node.SignX509SVIDs(tctx(t, 10*time.Second), &nodepb.SignX509SVIDsRequest{Requests: []*nodepb.SVIDRequest{{EntryId: en.Entry.Id, Csr: csr}}})
	check("SignX509SVIDs", err)
	_, err = fc.ops["s1"].MintX509SVID(tctx(t, 10*time.Second), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/m", Csr: csr})
	check("MintX509SVID", err)

	// An agent trying s1 first: refused as Unavailable there, it moves on.
	dir := tempDir(t)
	a, err := agent.New(agent.Config{Servers: []string{s1.srv.APIAddr(), fc.members[1].srv.APIAddr()}, TrustBundle: fc.bundle, DataDir: dir,
		SocketPath: filepath.Join(dir, "agent.sock"), Evidence: jointoken.NewEvidence(agentToken),
		WorkloadAttestors: []attest.WorkloadAttestor{unix.New(unix.Config{})}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c := client(t, a)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.FetchX509SVID(tctx(t, 2*time.Second)); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the agent gave up: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("no SVID through the majority side 20 s after the agent started")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
