package server

import (
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An operator cannot mint a server's or an agent's identity: the cluster
// API would take a minted /meshca/server/x SVID for a server, and a minted
// agent SVID would open that agent's Sync stream.
func TestMintRefusesReservedPaths(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	for _, id := range []string{"spiffe://example.org/meshca/server/x", "spiffe://example.org/meshca/agent/join_token/abc", "spiffe://example.org/meshca"} {
		_, err := s1.operator().MintX509SVID(ctx(t), &operatorpb.MintX509SVIDRequest{SpiffeId: id, Csr: csr})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("mint %s: %v, want PermissionDenied", id, err)
		}
	}
	if _, err := s1.operator().MintX509SVID(ctx(t), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/meshcafe/x", Csr: csr}); err != nil {
		t.Errorf("a path that only starts like /meshca: %v", err)
	}
}
