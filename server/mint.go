package server

import (
	"context"
	"fmt"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/proto/operatorpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// operatorNodeID stands in the ledger's node field for certificates an
// operator minted directly.
const operatorNodeID = "operator"

// MintX509SVID issues an X509-SVID for the operator: from this server's
// own intermediate, admitted like agents' work, recorded in the ledger
// before it is returned, and audited.
func (o *operatorService) MintX509SVID(ctx context.Context, req *operatorpb.MintX509SVIDRequest) (*operatorpb.MintX509SVIDResponse, error) {
	profile := req.Profile
	if profile == "" {
		profile = ca.ProfileECDSA
	}
	if _, err := ca.ProfileByName(profile); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "unknown profile %q: want %q or %q", profile, ca.ProfileECDSA, ca.ProfileSM2)
	}
	invalid := func(reason string) error {
		o.s.events.Record(audit.Event{Actor: adminActor(ctx), Action: KindMint.action(), Subject: req.SpiffeId, Decision: audit.Deny, Reason: reason})
		return status.Error(codes.InvalidArgument, reason)
	}
	ttl, err := duration.Seconds("ttl_seconds", req.TtlSeconds, 0, duration.Max)
	if err != nil {
		return nil, invalid(err.Error())
	}
	id, err := ca.ParseWorkloadID(req.SpiffeId)
	if err != nil {
		return nil, invalid(err.Error())
	}
	if id.TrustDomain() != o.s.td {
		return nil, invalid(fmt.Sprintf("%q is not in trust domain %q", req.SpiffeId, o.s.td.Name()))
	}
	// The Authorizer refuses the /meshca/ paths: they name servers and
	// agents, and a minted one would be accepted by the cluster API as a
	// server, or open an agent's Sync stream and receive its entries.
	svid, _, err := o.s.issueOne(ctx, &Request{Kind: KindMint, Caller: &Caller{Admin: adminActor(ctx)}, SPIFFEID: req.SpiffeId,
		Profile: profile, DNSNames: req.DnsNames, TTL: ttl, CSR: req.Csr}, nil)
	if err != nil {
		return nil, err // a refusal keeps its code; a bad CSR is InvalidArgument, a failed commit Unavailable, by type
	}
	resp := &operatorpb.MintX509SVIDResponse{Chain: svid.Certificates}
	for _, a := range bundleRoots(o.s.fsm.Read(), profile) {
		resp.Roots = append(resp.Roots, a.Certificate)
	}
	return resp, nil
}
