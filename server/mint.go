package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
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
	issuer, ok := o.s.issuer(profile)
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "unknown profile %q: want %q or %q", profile, ca.ProfileECDSA, ca.ProfileSM2)
	}
	deny := func(reason string) error {
		o.s.audit.Warn("mint x509-svid", "decision", "deny", "spiffe_id", req.SpiffeId, "reason", reason)
		return status.Error(codes.InvalidArgument, reason)
	}
	ttl, err := duration.Seconds("ttl_seconds", req.TtlSeconds, 0, duration.Max)
	if err != nil {
		return nil, deny(err.Error())
	}
	// The /meshca/ paths name servers and agents: a minted one would be
	// accepted by the cluster API as a server, or open an agent's Sync
	// stream and receive its entries.
	if id, err := ca.ParseWorkloadID(req.SpiffeId); err == nil && reservedPath(id.Path()) {
		return nil, deny(fmt.Sprintf("SPIFFE ID %s: the /meshca/ path is reserved for servers and agents", req.SpiffeId))
	}
	done, err := o.s.admission.admit(operatorNodeID, 1)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := o.s.admission.acquire(ctx); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	svid, err := issuer.SignX509SVID(ctx, ca.X509SVIDParams{CSR: req.Csr, SPIFFEID: req.SpiffeId, DNSNames: req.DnsNames,
		TTL: ttl})
	o.s.admission.release()
	var re *ca.RequestError
	switch {
	case errors.As(err, &re):
		return nil, deny(err.Error())
	case err != nil:
		return nil, fmt.Errorf("sign: %w", err)
	}
	if err := o.s.commitSVID(ctx, svid, operatorNodeID, issuer); err != nil {
		return nil, err // a failed commit is Unavailable, by type
	}
	o.s.audit.Info("mint x509-svid", "decision", "allow", "spiffe_id", svid.SPIFFEID, "profile", profile, "serial", fmt.Sprintf("%x", svid.SerialNumber))
	resp := &operatorpb.MintX509SVIDResponse{Chain: svid.Certificates}
	for _, a := range o.s.fsm.Read().Authorities() {
		if a.Kind == raftpb.AuthorityKind_ROOT && a.State == raftpb.AuthorityState_ACTIVE && a.Profile == profile {
			resp.Roots = append(resp.Roots, a.Certificate)
		}
	}
	return resp, nil
}
