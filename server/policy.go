package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// issue 12: the issuance policy. An operator's Rego policy, stored through
// Raft, is compiled once per revision on every server (policyLoop); the
// policyAuthorizer asks it after registration-entry matching, whose
// decision it receives as input.entries. Without a policy the authorizer
// is entry matching alone plus one atomic load.

// compiledIssuance is the issuance policy of one revision, compiled; err
// is why it did not compile here (then every issuance is denied).
type compiledIssuance struct {
	rev uint64
	p   *policy.Issuance
	err error
}

// issuancePolicy holds the compiled issuance policy; nil: none.
type issuancePolicy struct {
	mu  sync.Mutex // serialises loads
	cur atomic.Pointer[compiledIssuance]
	// cacheSize is how many decisions a compiled policy remembers.
	cacheSize int
	// retired counts the decisions of the revisions replaced (those
	// still being made as one is replaced are not counted).
	retiredEvaluated, retiredCached atomic.Uint64
}

// decisions is how many issuance policy decisions this server evaluated
// and answered from its cache, every revision together.
func (ip *issuancePolicy) decisions() (evaluated, cached uint64) {
	evaluated, cached = ip.retiredEvaluated.Load(), ip.retiredCached.Load()
	if c := ip.cur.Load(); c != nil && c.p != nil {
		evaluated += c.p.Evaluations()
		cached += c.p.CachedDecisions()
	}
	return evaluated, cached
}

// store makes c the current policy, counting the replaced one's decisions.
func (ip *issuancePolicy) store(c *compiledIssuance) {
	if old := ip.cur.Swap(c); old != nil && old.p != nil {
		ip.retiredEvaluated.Add(old.p.Evaluations())
		ip.retiredCached.Add(old.p.CachedDecisions())
	}
}

// load compiles the newest stored revision if it is not the one held.
func (ip *issuancePolicy) load(ctx context.Context, r *raftfsm.Reader) {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	p := r.IssuancePolicy()
	cur := ip.cur.Load()
	switch {
	case p == nil || len(p.Files) == 0:
		ip.store(nil)
	case cur != nil && cur.rev == p.Revision:
	default:
		c, err := policy.CompileIssuance(ctx, p.Revision, fromRaftFiles(p.Files))
		if c != nil {
			c.CacheDecisions(ip.cacheSize)
		}
		ip.store(&compiledIssuance{rev: p.Revision, p: c, err: err})
	}
}

// policyLoop compiles each new issuance policy revision as it is applied.
func (s *Server) policyLoop(ctx context.Context) error {
	for {
		changed := s.fsm.Watch(raftfsm.ScopeIssuancePolicy)
		s.issuance.load(ctx, s.fsm.Read())
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// policyAuthorizer asks the issuance policy, when there is one, after the
// base Authorizer (registration entries).
type policyAuthorizer struct {
	base Authorizer
	td   spiffeid.TrustDomain
	ip   *issuancePolicy
}

// Authorize implements Authorizer.
func (a *policyAuthorizer) Authorize(ctx context.Context, r *Request) (Decision, error) {
	base, err := a.base.Authorize(ctx, r)
	c := a.ip.cur.Load()
	if c == nil || err != nil {
		return base, err
	}
	if c.err != nil {
		return c.compileDenial(), nil
	}
	d, err := c.p.Decide(ctx, issuanceInput(r, base))
	return a.finish(ctx, r, base, d, err)
}

// maxBatchInputs bounds the distinct policy inputs of a batch remembered
// for reuse.
const maxBatchInputs = 16

// AuthorizeBatch implements batchAuthorizer: the batch is decided by one
// policy revision, and requests whose policy input is identical (replicas
// of one workload renewing together, say) are evaluated once. The input is
// all the policy sees, so the decision is the same; what follows it
// (checkID) runs per request.
func (a *policyAuthorizer) AuthorizeBatch(ctx context.Context, reqs []*Request, out []Decision) error {
	c := a.ip.cur.Load()
	type memo struct {
		in  *policy.Input
		d   policy.Decision
		err error
	}
	var seen []memo
	for i, r := range reqs {
		base, err := a.base.Authorize(ctx, r)
		if err != nil {
			return err
		}
		switch {
		case c == nil:
			out[i] = base
			continue
		case c.err != nil:
			out[i] = c.compileDenial()
			continue
		}
		in := issuanceInput(r, base)
		var m *memo
		for k := range seen {
			if inputEqual(seen[k].in, in) {
				m = &seen[k]
				break
			}
		}
		if m == nil {
			d, err := c.p.Decide(ctx, in)
			if len(seen) < maxBatchInputs {
				seen = append(seen, memo{in: in, d: d, err: err})
			}
			m = &memo{in: in, d: d, err: err}
		}
		if out[i], err = a.finish(ctx, r, base, m.d, m.err); err != nil {
			return err
		}
	}
	return nil
}

func (c *compiledIssuance) compileDenial() Decision {
	return Decision{Reason: fmt.Sprintf("issuance policy revision %d does not compile on this server: %v", c.rev, c.err)}
}

// finish turns the policy's decision d (or its error) on r into the
// Authorizer's.
func (a *policyAuthorizer) finish(ctx context.Context, r *Request, base Decision, d policy.Decision, err error) (Decision, error) {
	if err != nil {
		if ctx.Err() != nil {
			return Decision{}, err
		}
		return Decision{Reason: err.Error()}, nil // fail closed
	}
	if !d.Allow {
		return Decision{Reason: d.Reason}, nil
	}
	out := Decision{Allow: true, SPIFFEID: base.SPIFFEID, TTL: d.TTL, DNSNames: slices.Clone(d.DNSNames)}
	if d.SPIFFEID != "" {
		out.SPIFFEID = d.SPIFFEID
	}
	id := out.SPIFFEID
	if id == "" {
		id = r.SPIFFEID
	}
	if reason := a.checkID(r.Kind, id); reason != "" {
		return Decision{Reason: "the issuance policy allowed " + reason}, nil
	}
	return out, nil
}

// inputEqual reports whether two policy inputs are the same.
func inputEqual(x, y *policy.Input) bool {
	return x.Node.ID == y.Node.ID && x.Node.Attestor == y.Node.Attestor && slices.Equal(x.Node.Selectors, y.Node.Selectors) &&
		slices.Equal(x.Workload.Selectors, y.Workload.Selectors) && x.Entries == y.Entries &&
		x.Request.SPIFFEID == y.Request.SPIFFEID && slices.Equal(x.Request.DNSNames, y.Request.DNSNames) && x.Request.TTL == y.Request.TTL &&
		x.Request.Profile == y.Request.Profile && x.Request.Kind == y.Request.Kind && entryEqual(x.Entry, y.Entry)
}

func entryEqual(x, y *policy.EntryInput) bool {
	if x == nil || y == nil {
		return x == y
	}
	return x.ID == y.ID && x.SPIFFEID == y.SPIFFEID && x.ParentID == y.ParentID && slices.Equal(x.Selectors, y.Selectors) &&
		slices.Equal(x.DNSNames, y.DNSNames) && x.TTL == y.TTL && x.Profile == y.Profile
}

// checkID refuses an identity a policy may not hand out, whatever it says:
// one outside the trust domain, or a server's or agent's reserved path for
// a workload.
func (a *policyAuthorizer) checkID(kind Kind, s string) string {
	if s == "" {
		return "a request that names no SPIFFE ID and gave it none"
	}
	id, err := spiffeid.FromString(s)
	switch {
	case err != nil:
		return fmt.Sprintf("an invalid SPIFFE ID %q: %v", s, err)
	case id.TrustDomain() != a.td:
		return fmt.Sprintf("%s, which is not in trust domain %s", s, a.td.Name())
	case kind == KindAgentSVID && !naming.IsAgentID(a.td, id):
		return fmt.Sprintf("%s, which is no agent ID, for an agent SVID", s)
	case kind != KindAgentSVID && naming.IsReserved(id.Path()):
		return fmt.Sprintf("%s: the /meshca/ path is reserved for servers and agents", s)
	}
	return ""
}

func selectorsInput(ss []*raftpb.Selector) []policy.Selector {
	out := make([]policy.Selector, len(ss))
	for i, s := range ss {
		out[i] = policy.Selector{Type: s.Type, Value: s.Value}
	}
	return out
}

// issuanceInput is the policy's input for r; base is entry matching's
// decision. A workload's selectors are those of the entry it matched.
func issuanceInput(r *Request, base Decision) *policy.Input {
	in := &policy.Input{
		Request: policy.RequestInput{SPIFFEID: r.SPIFFEID, DNSNames: r.DNSNames, TTL: int64(r.TTL.Seconds()), Profile: r.Profile, Kind: r.Kind.String()},
		Entries: policy.EntriesInput{Allow: base.Allow, Reason: base.Reason},
	}
	if c := r.Caller; c != nil {
		in.Node.ID = c.AgentID
		if n := c.Node; n != nil {
			in.Node.Attestor, in.Node.Selectors = n.Attestor, selectorsInput(n.Selectors)
		}
	}
	if e := r.Entry; e != nil {
		in.Entry = &policy.EntryInput{ID: e.Id, SPIFFEID: e.SpiffeId, ParentID: e.ParentId, Selectors: selectorsInput(e.Selectors),
			DNSNames: e.DnsNames, TTL: e.TtlSeconds, Profile: e.Profile}
		in.Workload.Selectors = in.Entry.Selectors
	} else {
		in.Workload.Selectors = selectorsInput(r.WorkloadSelectors)
	}
	return in
}

func fromRaftFiles(fs []*raftpb.PolicyFile) []policy.File {
	out := make([]policy.File, len(fs))
	for i, f := range fs {
		out[i] = policy.File{Path: f.Path, Content: f.Content}
	}
	return out
}

func toRaftFiles(fs []*operatorpb.PolicyFile) []*raftpb.PolicyFile {
	out := make([]*raftpb.PolicyFile, len(fs))
	for i, f := range fs {
		out[i] = &raftpb.PolicyFile{Path: f.Path, Content: f.Content}
	}
	return out
}

func toPBFiles(fs []*raftpb.PolicyFile) []*operatorpb.PolicyFile {
	out := make([]*operatorpb.PolicyFile, len(fs))
	for i, f := range fs {
		out[i] = &operatorpb.PolicyFile{Path: f.Path, Content: f.Content}
	}
	return out
}

// policyStatus maps a policy refusal to InvalidArgument with its words.
func policyStatus(err error) error {
	var ie *policy.InvalidError
	if errors.As(err, &ie) {
		return status.Error(codes.InvalidArgument, ie.Error())
	}
	return fsmStatus(err)
}

// maxRevisionRetries bounds the retries of a revision taken by a
// concurrent write.
const maxRevisionRetries = 8

// SetIssuancePolicy compiles the policy (a refusal stores nothing) and
// stores it as the next revision; it returns once this server decides
// with it.
func (o *operatorService) SetIssuancePolicy(ctx context.Context, req *operatorpb.SetIssuancePolicyRequest) (*operatorpb.IssuancePolicyResponse, error) {
	files := toRaftFiles(req.Files)
	if len(files) > 0 {
		p, err := policy.CompileIssuance(ctx, 0, fromRaftFiles(files))
		if err == nil {
			err = p.SelfTest(ctx)
		}
		if err != nil {
			o.s.auditOp(ctx, "policy.issuance.set", "issuance", audit.Deny, err.Error(), nil)
			return nil, policyStatus(err)
		}
	}
	var rev uint64
	for attempt := 0; ; attempt++ {
		if err := o.s.node.ReadIndex(ctx); err != nil {
			return nil, status.Errorf(codes.Unavailable, "%v", err)
		}
		rev = 1
		if cur := o.s.fsm.Read().IssuancePolicy(); cur != nil {
			rev = cur.Revision + 1
		}
		p := &raftpb.IssuancePolicy{Revision: rev, Files: files, CreatedUnixNano: o.s.cfg.Clock.Now().UnixNano(), Author: adminActor(ctx)}
		_, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PutIssuancePolicy{PutIssuancePolicy: &raftpb.PutIssuancePolicy{Policy: p}}})
		if err == nil {
			break
		}
		if !errors.Is(err, raftfsm.ErrConflict) || attempt == maxRevisionRetries {
			o.s.auditOp(ctx, "policy.issuance.set", "issuance", audit.Deny, err.Error(), nil)
			return nil, fsmStatus(err)
		}
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	o.s.issuance.load(ctx, o.s.fsm.Read())
	o.s.auditOp(ctx, "policy.issuance.set", "issuance", audit.Allow, "", map[string]string{"revision": strconv.FormatUint(rev, 10),
		"files": strconv.Itoa(len(files))})
	return o.GetIssuancePolicy(ctx, nil)
}

// GetIssuancePolicy returns the newest issuance policy revision.
func (o *operatorService) GetIssuancePolicy(ctx context.Context, _ *operatorpb.GetIssuancePolicyRequest) (*operatorpb.IssuancePolicyResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	p := o.s.fsm.Read().IssuancePolicy()
	if p == nil {
		return &operatorpb.IssuancePolicyResponse{}, nil
	}
	return &operatorpb.IssuancePolicyResponse{Revision: p.Revision, Files: toPBFiles(p.Files), CreatedUnix: p.CreatedUnixNano / 1e9, Author: p.Author}, nil
}

// PolicyEntryPrefix marks the entry ID of an identity with no entry: the
// agent asks for it with the workload's selectors, the issuance policy
// derives it.
const PolicyEntryPrefix = "policy:"

// Bounds of the selectors an agent sends for an identity with no entry.
const (
	maxWorkloadSelectors   = 64
	maxWorkloadSelectorLen = 1024
)

// policyRequest fills in a workload request with no entry from the
// selectors its agent sent (identity as policy). Only the selector types
// the current policy derives from are kept.
func (s *Server) policyRequest(q *Request, sr *nodepb.SVIDRequest) error {
	if !strings.HasPrefix(sr.EntryId, PolicyEntryPrefix) {
		return nil
	}
	if len(sr.WorkloadSelectors) > maxWorkloadSelectors {
		return status.Errorf(codes.InvalidArgument, "%d workload selectors; at most %d", len(sr.WorkloadSelectors), maxWorkloadSelectors)
	}
	c := s.issuance.cur.Load()
	types := map[string]bool{}
	if c != nil && c.p != nil {
		for _, t := range c.p.SelectorTypes {
			types[t] = true
		}
	}
	for _, sel := range sr.WorkloadSelectors {
		if len(sel.Type)+len(sel.Value) > maxWorkloadSelectorLen {
			return status.Errorf(codes.InvalidArgument, "a workload selector of %d bytes; at most %d", len(sel.Type)+len(sel.Value), maxWorkloadSelectorLen)
		}
		if types[sel.Type] {
			q.WorkloadSelectors = append(q.WorkloadSelectors, &raftpb.Selector{Type: sel.Type, Value: sel.Value})
		}
	}
	q.Profile = ca.ProfileECDSA
	return nil
}

// identityPolicyResource is the Sync resource that tells agents which
// workload selector types the issuance policy derives identities from;
// nil when it derives none.
func (s *Server) identityPolicyResource(ctx context.Context, r *raftfsm.Reader) *nodepb.Resource {
	s.issuance.load(ctx, r)
	c := s.issuance.cur.Load()
	if c == nil || c.p == nil || len(c.p.SelectorTypes) == 0 {
		return nil
	}
	return &nodepb.Resource{Kind: ResourceIdentityPolicy, Name: s.td.Name(), Version: strconv.FormatUint(c.rev, 10),
		Body: &nodepb.Resource_IdentityPolicy{IdentityPolicy: &nodepb.IdentityPolicy{Revision: c.rev, SelectorTypes: c.p.SelectorTypes}}}
}
