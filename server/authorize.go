package server

import (
	"context"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kind is what an issuance request asks for.
type Kind int

// The kinds of issuance. Every certificate and JWT a server hands out is
// one of them, and goes through the same pipeline (see issue).
const (
	// KindAgentSVID is a node agent's own X509-SVID, at attestation or
	// renewal.
	KindAgentSVID Kind = iota + 1
	// KindWorkloadSVID is a workload's X509-SVID, for an entry of the
	// calling agent.
	KindWorkloadSVID
	// KindJWTSVID is a workload's JWT-SVID, for an entry of the calling
	// agent.
	KindJWTSVID
	// KindMint is an X509-SVID an operator asked for, for any workload ID.
	KindMint
)

// String names the kind as audit events do.
func (k Kind) String() string {
	switch k {
	case KindAgentSVID:
		return "agent_svid"
	case KindWorkloadSVID:
		return "workload_svid"
	case KindJWTSVID:
		return "jwt_svid"
	case KindMint:
		return "mint"
	}
	return "unknown"
}

// action is the audit action of issuing a kind.
func (k Kind) action() string {
	switch k {
	case KindAgentSVID:
		return "agent.svid"
	case KindWorkloadSVID:
		return "x509.sign"
	case KindJWTSVID:
		return "jwt.sign"
	case KindMint:
		return "x509.mint"
	}
	return "issue"
}

// Caller is who asks for a credential, as the API authenticated it.
type Caller struct {
	// AgentID is the calling agent's SPIFFE ID (agent and workload kinds).
	AgentID string
	// Node is the agent's node record; for an attestation, the record it
	// will get.
	Node *raftpb.Node
	// Admin is who operates the server, for mints: "operator" on the admin
	// socket, or the admin's SPIFFE ID over mutual TLS.
	Admin string
}

// actor names the caller in audit events.
func (c *Caller) actor() string {
	switch {
	case c == nil:
		return ""
	case c.AgentID != "":
		return c.AgentID
	}
	return c.Admin
}

// Request is one credential asked for, before it is authorized.
type Request struct {
	Kind   Kind
	Caller *Caller
	// Entry is the registration entry asked for (workload kinds); nil if
	// the caller named an entry that does not exist.
	Entry *raftpb.Entry
	// EntryID is the entry the caller named (workload kinds).
	EntryID string
	// SPIFFEID is the identity asked for.
	SPIFFEID string
	// Profile is the signing profile ("ecdsa", "sm2").
	Profile  string
	DNSNames []string
	// TTL is the lifetime asked for; zero means the kind's default.
	TTL time.Duration
	// CSR is the DER PKCS#10 request (X.509 kinds).
	CSR []byte
	// Audience is the JWT-SVID's audience (KindJWTSVID).
	Audience []string
	// WorkloadSelectors are the workload's attested selectors, sent by its
	// agent for an identity with no entry (issue 12: identity as policy).
	WorkloadSelectors []*raftpb.Selector
}

// subject names what the request is about in audit events.
func (r *Request) subject() string {
	if r.SPIFFEID != "" {
		return r.SPIFFEID
	}
	return r.EntryID
}

// Decision is an Authorizer's answer to a Request.
type Decision struct {
	Allow bool
	// Reason says why not, in words for the requester and the audit trail.
	Reason string
	// A policy may change what is issued: a non-zero SPIFFEID, TTL or
	// DNSNames replaces the request's.
	SPIFFEID string
	TTL      time.Duration
	DNSNames []string
}

// Authorizer decides whether a request may be issued. It is the seam for
// issuance policy: registration entries decide by default (entryAuthorizer),
// an OPA policy can replace or extend them. An error means it could not
// decide now (a policy engine unavailable): the request is retried, not
// refused. Implementations are safe for concurrent use and fast: they are
// on the issuance hot path.
type Authorizer interface {
	Authorize(ctx context.Context, r *Request) (Decision, error)
}

// batchAuthorizer is an Authorizer that decides a batch of requests at
// once (out[i] for reqs[i]), as Authorize would one by one; an error is
// Authorize's.
type batchAuthorizer interface {
	AuthorizeBatch(ctx context.Context, reqs []*Request, out []Decision) error
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(ctx context.Context, r *Request) (Decision, error)

// Authorize calls f.
func (f AuthorizerFunc) Authorize(ctx context.Context, r *Request) (Decision, error) {
	return f(ctx, r)
}

// entryAuthorizer is the default Authorizer: registration-entry matching,
// as every meshca before policies.
//
//   - an agent SVID: only the agent's own ID, under /meshca/agent/, for a
//     node that is not banned;
//   - a workload SVID or JWT-SVID: only for an entry whose parent is the
//     calling agent, with the entry's SPIFFE ID, profile and DNS names;
//   - a mint: any workload ID of the trust domain except the reserved
//     /meshca/ paths (servers' and agents' identities).
type entryAuthorizer struct {
	td spiffeid.TrustDomain
}

func deny(format string, args ...any) (Decision, error) {
	return Decision{Reason: fmt.Sprintf(format, args...)}, nil
}

// Authorize implements Authorizer.
func (a entryAuthorizer) Authorize(_ context.Context, r *Request) (Decision, error) {
	switch r.Kind {
	case KindAgentSVID:
		switch {
		case r.Caller == nil || r.Caller.AgentID == "" || r.SPIFFEID != r.Caller.AgentID:
			return deny("an agent SVID is only for the agent itself")
		case !isAgentID(a.td, r.SPIFFEID):
			return deny("%s is not an agent ID", r.SPIFFEID)
		case r.Caller.Node != nil && r.Caller.Node.Banned:
			return deny("node %s is banned", r.Caller.AgentID)
		}
		return Decision{Allow: true}, nil
	case KindWorkloadSVID, KindJWTSVID:
		e := r.Entry
		switch {
		case r.Caller == nil || r.Caller.AgentID == "":
			return deny("only a node agent may ask for a workload's identity")
		case e == nil || e.ParentId != r.Caller.AgentID:
			return deny("entry %q does not exist or is not one of this node's", r.EntryID)
		case r.SPIFFEID != "" && r.SPIFFEID != e.SpiffeId:
			return deny("entry %q is for %s, not %s", e.Id, e.SpiffeId, r.SPIFFEID)
		}
		return Decision{Allow: true, SPIFFEID: e.SpiffeId}, nil
	case KindMint:
		id, err := ca.ParseWorkloadID(r.SPIFFEID)
		switch {
		case err != nil:
			return deny("%v", err)
		case id.TrustDomain() != a.td:
			return deny("%q is not in trust domain %q", r.SPIFFEID, a.td.Name())
		case naming.IsReserved(id.Path()):
			return deny("SPIFFE ID %s: the /meshca/ path is reserved for servers and agents", r.SPIFFEID)
		}
		return Decision{Allow: true}, nil
	}
	return deny("unknown kind of request")
}

// isAgentID reports whether s is the SPIFFE ID of a node agent of td.
func isAgentID(td spiffeid.TrustDomain, s string) bool {
	id, err := spiffeid.FromString(s)
	return err == nil && naming.IsAgentID(td, id)
}
