package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/internal/rpcerr"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/server/cluster"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Agent SVIDs and node API limits.
const (
	AgentSVIDTTL = 24 * time.Hour
	// MaxSignBatch bounds the CSRs of one SignX509SVIDs call.
	MaxSignBatch = 512
)

// nodeService is the node API agents call.
type nodeService struct {
	nodepb.UnimplementedNodeServer
	s *Server
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		return p.Addr.String()
	}
	return ""
}

// Attest runs a node attestor and, when it vouches for the node, issues
// the agent's SVID and records the node.
func (n *nodeService) Attest(stream nodepb.Node_AttestServer) error {
	ctx := stream.Context()
	from := peerAddr(ctx)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return status.Error(codes.InvalidArgument, "attestation must begin with a start message")
	}
	deny := func(code codes.Code, reason string) error {
		n.s.events.Record(audit.Event{Actor: from, Action: "node.attest", Subject: start.Attestor, Decision: audit.Deny, Reason: reason})
		return status.Error(code, reason)
	}
	att, ok := (*n.s.attestors.Load())[start.Attestor]
	if !ok {
		return deny(codes.InvalidArgument, fmt.Sprintf("node attestor %q is not enabled on this server (enabled: %s)", start.Attestor, n.s.attestorNames()))
	}
	challenge := func(ctx context.Context, c []byte) ([]byte, error) {
		if err := stream.Send(&nodepb.AttestResponse{Step: &nodepb.AttestResponse_Challenge{Challenge: c}}); err != nil {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		return resp.GetChallengeResponse(), nil
	}
	res, err := att.Attest(ctx, start.Payload, challenge)
	if err != nil {
		// Invalid evidence and refusals are final; an attestor that could
		// not reach what it checks against (or the Raft log) is retried.
		return deny(rpcerr.Code(err), err.Error())
	}
	agentID := res.AgentID.String()
	if len(start.AttemptId) > maxTokenLen {
		return deny(codes.InvalidArgument, "attempt ID too long")
	}
	var token *raftpb.ConsumeJoinToken
	if res.JoinToken != nil {
		token = &raftpb.ConsumeJoinToken{Hash: res.JoinToken, Kind: TokenKindAgent, Consumer: agentID, Attempt: start.AttemptId}
		// Refuse early a token that cannot be consumed; the consumption
		// itself comes last, with the record of the agent.
		if err := n.s.checkToken(ctx, token); err != nil {
			if st, ok := status.FromError(err); ok && st.Code() == codes.PermissionDenied {
				return deny(codes.PermissionDenied, st.Message())
			}
			return err
		}
	}
	node := &raftpb.Node{SpiffeId: agentID, Attestor: att.Name(), AttestedUnixNano: n.s.cfg.Clock.Now().UnixNano()}
	for _, sel := range res.Selectors {
		node.Selectors = append(node.Selectors, &raftpb.Selector{Type: sel.Type, Value: sel.Value})
	}
	caller := &Caller{AgentID: agentID, Node: node}
	if cur := n.s.fsm.Read().Node(agentID); cur != nil && cur.Banned {
		// Unbanned a moment ago through another server? Decide on a
		// linearizable read (the apply refuses a banned node anyway).
		if err := n.s.node.ReadIndex(ctx); err != nil {
			return status.Errorf(codes.Unavailable, "look the node up: %v", err)
		}
		if cur := n.s.fsm.Read().Node(agentID); cur != nil && cur.Banned {
			caller.Node = cur // a banned node stays banned: the Authorizer refuses it
		}
	}
	// One command records it all: the token is consumed, the node recorded
	// and the SVID's ledger record appended, all or nothing; retried with
	// its request ID after a leader change, it is applied once.
	commit := n.s.commitCommand(func(rec *raftpb.LedgerRecord) *raftpb.Command {
		node.ExpiresUnixNano = rec.NotAfterUnix * int64(time.Second)
		return &raftpb.Command{Op: &raftpb.Command_AttestAgent{AttestAgent: &raftpb.AttestAgent{Token: token, Node: node, Record: rec}}}
	})
	svid, _, err := n.s.issueOne(ctx, &Request{Kind: KindAgentSVID, Caller: caller, SPIFFEID: agentID, Profile: ca.ProfileECDSA,
		TTL: AgentSVIDTTL, CSR: start.Csr}, commit)
	var fsmErr *raftfsm.Error
	switch {
	case errors.Is(err, raftfsm.ErrConflict):
		return status.Errorf(codes.Unavailable, "record the agent: %v; retry", err)
	case errors.As(err, &fsmErr):
		return deny(codes.PermissionDenied, tokenRefusal(fsmErr))
	case err != nil:
		return err
	}
	return stream.Send(&nodepb.AttestResponse{Step: &nodepb.AttestResponse_Result{Result: &nodepb.AttestResult{
		AgentId: agentID, SvidChain: svid.Certificates, Bundle: bundleOf(n.s.fsm.Read(), n.s.td)}}})
}

// tokenRefusal words the state machine's refusal of an attestation.
func tokenRefusal(err *raftfsm.Error) string {
	switch {
	case errors.Is(err, raftfsm.ErrNotFound):
		return "join token refused: unknown, already used, expired, or not an agent token"
	case errors.Is(err, raftfsm.ErrTokenConsumed):
		return "join token refused: already used"
	case errors.Is(err, raftfsm.ErrTokenExpired):
		return "join token refused: expired"
	}
	return err.Msg
}

// checkToken tells whether a join token could be consumed now, without
// consuming it: on the local state, and on a linearizable read if the local
// state does not know it (it may have been created a moment ago through
// another server). A refusal is PermissionDenied.
func (s *Server) checkToken(ctx context.Context, op *raftpb.ConsumeJoinToken) error {
	check := func() error {
		t := s.fsm.Read().JoinToken(op.Hash)
		now := s.cfg.Clock.Now().UnixNano()
		switch {
		case t == nil || t.Kind != op.Kind:
			return raftfsm.ErrNotFound
		case now >= t.ExpiresUnixNano:
			return raftfsm.ErrTokenExpired
		case t.ConsumedUnixNano != 0 && (op.Attempt == "" || t.ConsumedAttempt != op.Attempt || t.ConsumedBy != op.Consumer):
			return raftfsm.ErrTokenConsumed
		}
		return nil
	}
	err := check()
	if errors.Is(err, raftfsm.ErrNotFound) {
		if rerr := s.node.ReadIndex(ctx); rerr != nil {
			return status.Errorf(codes.Unavailable, "read the cluster state: %v", rerr)
		}
		err = check()
	}
	var fe *raftfsm.Error
	if errors.As(err, &fe) {
		return status.Error(codes.PermissionDenied, tokenRefusal(fe))
	}
	return err
}

// ledgerRecord is the ledger record of an issued certificate.
func ledgerRecord(svid *ca.X509SVID, nodeID string, iss *issuer) *raftpb.LedgerRecord {
	return &raftpb.LedgerRecord{Serial: svid.SerialNumber.Bytes(), SpiffeId: svid.SPIFFEID, NodeId: nodeID, Profile: svid.Profile,
		IssuerId: iss.id, NotBeforeUnix: svid.NotBefore.Unix(), NotAfterUnix: svid.NotAfter.Unix()}
}

// requireAgent returns the calling agent's ID: its SVID (verified during
// the TLS handshake) must name an agent of the trust domain that is a known,
// unbanned node.
func (s *Server) requireAgent(ctx context.Context) (string, error) {
	id, ok := cluster.PeerID(ctx)
	if !ok || !naming.IsAgentID(s.td, id) {
		return "", status.Error(codes.Unauthenticated, "this method needs a node agent's X509-SVID (attest first)")
	}
	agentID := id.String()
	node := s.fsm.Read().Node(agentID)
	if node == nil || node.Banned {
		// Attested (or unbanned) through another server a moment ago?
		if err := s.node.ReadIndex(ctx); err != nil {
			return "", fmt.Errorf("look the node up: %w", err)
		}
		node = s.fsm.Read().Node(agentID)
	}
	switch {
	case node == nil:
		return "", status.Errorf(codes.PermissionDenied, "node %s is not known (evicted?): attest again", agentID)
	case node.Banned:
		s.events.Record(audit.Event{Actor: agentID, Action: "node.api", Decision: audit.Deny, Reason: "banned"})
		return "", status.Errorf(codes.PermissionDenied, "node %s is banned", agentID)
	case s.peerRevoked(ctx):
		s.events.Record(audit.Event{Actor: agentID, Action: "node.api", Decision: audit.Deny, Reason: "agent SVID revoked"})
		return "", status.Errorf(codes.PermissionDenied, "the SVID node %s presented is revoked: attest again", agentID)
	}
	return agentID, nil
}

// bundleOf returns the trust domain's roots: every root but revoked ones.
func bundleOf(r *raftfsm.Reader, td spiffeid.TrustDomain) *nodepb.Bundle {
	b := &nodepb.Bundle{TrustDomain: td.Name()}
	// Every root in the bundle (issue 13 roots): a prepared one before it
	// signs, the old one while what it certified is still in use.
	for _, a := range bundleRoots(r, "") {
		b.Roots = append(b.Roots, &nodepb.Root{Profile: a.Profile, Certificate: a.Certificate})
	}
	b.JwtAuthorities = jwtAuthorities(r)
	return b
}

func toNodeEntry(e *raftpb.Entry) *nodepb.Entry {
	o := &nodepb.Entry{Id: e.Id, SpiffeId: e.SpiffeId, ParentId: e.ParentId, TtlSeconds: e.TtlSeconds,
		DnsNames: e.DnsNames, Profile: e.Profile, Revision: e.Revision, CreatedUnixNano: e.CreatedUnixNano}
	for _, s := range e.Selectors {
		o.Selectors = append(o.Selectors, &nodepb.Selector{Type: s.Type, Value: s.Value})
	}
	return o
}

// SignX509SVIDs signs a batch of workload CSRs for entries whose parent is
// the calling agent. Refusals are per request and audited.
func (n *nodeService) SignX509SVIDs(ctx context.Context, req *nodepb.SignX509SVIDsRequest) (*nodepb.SignX509SVIDsResponse, error) {
	agentID, err := n.s.requireAgent(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.Requests) > MaxSignBatch {
		return nil, status.Errorf(codes.InvalidArgument, "%d CSRs in one batch; at most %d", len(req.Requests), MaxSignBatch)
	}
	r := n.s.fsm.Read()
	// An entry created a moment ago may not be applied here yet: one
	// linearizable read for the batch, not one per missing entry.
	for _, sr := range req.Requests {
		if r.Entry(sr.EntryId) == nil {
			if err := n.s.node.ReadIndex(ctx); err != nil {
				return nil, fmt.Errorf("look the entries up: %w", err)
			}
			r = n.s.fsm.Read()
			break
		}
	}
	caller := &Caller{AgentID: agentID, Node: r.Node(agentID)}
	reqs := make([]*Request, len(req.Requests))
	resp := &nodepb.SignX509SVIDsResponse{Results: make([]*nodepb.SVIDResult, len(req.Requests))}
	for i, sr := range req.Requests {
		resp.Results[i] = &nodepb.SVIDResult{EntryId: sr.EntryId}
		q := &Request{Kind: KindWorkloadSVID, Caller: caller, EntryID: sr.EntryId, CSR: sr.Csr}
		if e := r.Entry(sr.EntryId); e != nil {
			ttl, err := duration.Seconds("entry ttl_seconds", e.TtlSeconds, 0, MaxEntryTTL)
			if err != nil {
				return nil, err
			}
			q.Entry, q.Profile, q.DNSNames, q.TTL = e, e.Profile, e.DnsNames, ttl
		} else if err := n.s.policyRequest(q, sr); err != nil { // issue 12
			return nil, err
		}
		reqs[i] = q
	}
	out, err := n.s.issueX509(ctx, reqs, nil)
	if err != nil {
		// Not a refusal of these requests (a failed commit, load shed):
		// the agent retries the batch, here or through another server.
		return nil, err
	}
	for i, o := range out {
		if o.err != nil {
			resp.Results[i].Error = status.Convert(o.err).Message()
			continue
		}
		resp.Results[i].Chain = o.svid.Certificates
	}
	return resp, nil
}

// RenewAgentSVID renews the calling agent's SVID for the same ID.
func (n *nodeService) RenewAgentSVID(ctx context.Context, req *nodepb.RenewAgentSVIDRequest) (*nodepb.RenewAgentSVIDResponse, error) {
	agentID, err := n.s.requireAgent(ctx)
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromString(agentID)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	cur := n.s.fsm.Read().Node(agentID)
	if cur == nil {
		return nil, status.Errorf(codes.PermissionDenied, "node %s was evicted: attest again", agentID)
	}
	// The node's expiry moves with its SVID, in the same command as the
	// SVID's ledger record.
	commit := n.s.commitCommand(func(rec *raftpb.LedgerRecord) *raftpb.Command {
		node := proto.Clone(cur).(*raftpb.Node)
		node.ExpiresUnixNano = rec.NotAfterUnix * int64(time.Second)
		return &raftpb.Command{Op: &raftpb.Command_AttestAgent{AttestAgent: &raftpb.AttestAgent{Node: node, Record: rec}}}
	})
	svid, _, err := n.s.issueOne(ctx, &Request{Kind: KindAgentSVID, Caller: &Caller{AgentID: agentID, Node: cur}, SPIFFEID: id.String(),
		Profile: ca.ProfileECDSA, TTL: AgentSVIDTTL, CSR: req.Csr}, commit)
	var fsmErr *raftfsm.Error
	switch {
	case errors.Is(err, raftfsm.ErrInvalid) && errors.As(err, &fsmErr):
		return nil, status.Error(codes.PermissionDenied, fsmErr.Msg) // banned meanwhile
	case err != nil:
		return nil, err
	}
	return &nodepb.RenewAgentSVIDResponse{SvidChain: svid.Certificates}, nil
}
