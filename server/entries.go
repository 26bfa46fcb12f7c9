package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/k8s"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/internal/rpcerr"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/server/cluster"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Entry limits and defaults.
const (
	DefaultEntryTTL = 24 * time.Hour
	MinEntryTTL     = time.Minute
	MaxEntryTTL     = 30 * 24 * time.Hour
	maxSelectors    = 32
	maxSelectorLen  = 4096 // a unix:path can be a long path
)

// workloadSelectors are the selector types the workload attestors
// produce, each with the validator of its values: an entry may only use
// these, with values the attestor could produce, so that a typo cannot
// make an entry that never matches (or matches by accident).
var workloadSelectors = map[string]struct {
	keys     []string
	validate func(value string) error
}{
	unix.Name: {unix.SelectorKeys, unix.ValidateSelectorValue},
	k8s.Name:  {k8s.SelectorKeys, k8s.ValidateSelectorValue},
}

func knownSelectors() string {
	var out []string
	for t, ws := range workloadSelectors {
		for _, k := range ws.keys {
			out = append(out, t+":"+k)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// validateSelector checks a workload selector: a known type and key and a
// value the attestor of that type could produce, e.g. unix:uid:1000 or
// k8s:pod-label:app:web.
func validateSelector(s *operatorpb.Selector) error {
	ws, ok := workloadSelectors[s.GetType()]
	if !ok {
		return fmt.Errorf("unknown selector type %q; known selectors: %s", s.GetType(), knownSelectors())
	}
	if len(s.GetValue()) > maxSelectorLen {
		return fmt.Errorf("selector %s:%.40s...: longer than %d bytes", s.GetType(), s.GetValue(), maxSelectorLen)
	}
	key, _, found := strings.Cut(s.GetValue(), ":")
	if !found {
		return fmt.Errorf("selector %s:%s: want %s:<key>:<value>; known selectors: %s", s.GetType(), s.GetValue(), s.GetType(), knownSelectors())
	}
	if !slices.Contains(ws.keys, key) {
		return fmt.Errorf("unknown selector %s:%s; known selectors: %s", s.GetType(), key, knownSelectors())
	}
	if err := ws.validate(s.GetValue()); err != nil {
		var ae *attest.Error
		if errors.As(err, &ae) {
			return fmt.Errorf("selector %s", ae.Msg)
		}
		return fmt.Errorf("selector %s:%s: %w", s.GetType(), s.GetValue(), err)
	}
	return nil
}

// selectorSet is the sorted, de-duplicated "type:value" list of ss, the
// key under which two entries have the same selectors.
func selectorSet[S interface {
	GetType() string
	GetValue() string
}](ss []S) string {
	set := make([]string, 0, len(ss))
	for _, s := range ss {
		set = append(set, s.GetType()+":"+s.GetValue())
	}
	sort.Strings(set)
	return strings.Join(slices.Compact(set), "\x00")
}

// validateEntry checks an entry against the trust domain and fills defaults.
func validateEntry(td spiffeid.TrustDomain, e *operatorpb.Entry) error {
	if e == nil {
		return errors.New("no entry given")
	}
	var errs []error
	id, err := ca.ParseWorkloadID(e.SpiffeId)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("SPIFFE ID: %w", err))
	case id.TrustDomain() != td:
		errs = append(errs, fmt.Errorf("SPIFFE ID %s is not in trust domain %s", e.SpiffeId, td.Name()))
	case naming.IsReserved(id.Path()):
		errs = append(errs, fmt.Errorf("SPIFFE ID %s: the /meshca/ path is reserved for servers and agents", e.SpiffeId))
	}
	if parent, err := spiffeid.FromString(e.ParentId); err != nil || parent.TrustDomain() != td {
		errs = append(errs, fmt.Errorf("parent ID %q: want the SPIFFE ID of a node agent of %s", e.ParentId, td.Name()))
	}
	if len(e.Selectors) == 0 || len(e.Selectors) > maxSelectors {
		errs = append(errs, fmt.Errorf("an entry needs 1 to %d selectors, all of which a workload must match", maxSelectors))
	}
	seen := map[string]bool{}
	for _, s := range e.Selectors {
		if err := validateSelector(s); err != nil {
			errs = append(errs, err)
			continue
		}
		if k := s.GetType() + ":" + s.GetValue(); seen[k] {
			errs = append(errs, fmt.Errorf("selector %s is given twice", k))
		} else {
			seen[k] = true
		}
	}
	if e.TtlSeconds == 0 {
		e.TtlSeconds = int64(DefaultEntryTTL / time.Second)
	} else if _, err := duration.Seconds("TTL", e.TtlSeconds, MinEntryTTL, MaxEntryTTL); err != nil {
		errs = append(errs, err)
	}
	if err := ca.CheckDNSNames(e.DnsNames); err != nil {
		errs = append(errs, err)
	}
	if e.Profile == "" {
		e.Profile = ca.ProfileECDSA
	}
	if _, err := ca.ProfileByName(e.Profile); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func toRaftEntry(e *operatorpb.Entry) *raftpb.Entry {
	r := &raftpb.Entry{Id: e.Id, ParentId: e.ParentId, SpiffeId: e.SpiffeId, TtlSeconds: e.TtlSeconds,
		DnsNames: e.DnsNames, Profile: e.Profile, Revision: e.Revision}
	for _, s := range e.Selectors {
		r.Selectors = append(r.Selectors, &raftpb.Selector{Type: s.Type, Value: s.Value})
	}
	return r
}

func fromRaftEntry(e *raftpb.Entry) *operatorpb.Entry {
	o := &operatorpb.Entry{Id: e.Id, ParentId: e.ParentId, SpiffeId: e.SpiffeId, TtlSeconds: e.TtlSeconds,
		DnsNames: e.DnsNames, Profile: e.Profile, Revision: e.Revision, CreatedUnix: e.CreatedUnixNano / int64(time.Second)}
	for _, s := range e.Selectors {
		o.Selectors = append(o.Selectors, &operatorpb.Selector{Type: s.Type, Value: s.Value})
	}
	return o
}

// fsmStatus maps a write's error by type (see internal/rpcerr): a refusal
// by the state machine keeps its code and its own words, a Raft failure is
// Unavailable.
func fsmStatus(err error) error {
	var fe *raftfsm.Error
	if errors.As(err, &fe) {
		return status.Error(rpcerr.Code(err), fe.Msg)
	}
	return rpcerr.Status(err)
}

// checkParent refuses a parent ID that is no attested agent, no server of
// the cluster and no join_token agent of a pending (unused, unexpired)
// agent token, unless allowUnknown: such an entry would reach no agent.
func (o *operatorService) checkParent(r *raftfsm.Reader, parent string, allowUnknown bool) error {
	if allowUnknown || r.Node(parent) != nil {
		return nil
	}
	id, err := spiffeid.FromString(parent)
	if err != nil {
		return err // refused by validateEntry already
	}
	if nodeID, ok := naming.ServerNodeID(o.s.td, id); ok && r.Server(nodeID) != nil {
		return nil
	}
	if h, ok := strings.CutPrefix(id.Path(), naming.AgentPathPrefix(jointoken.Name)); ok && len(h) == 32 {
		now := o.s.cfg.Clock.Now().UnixNano()
		for _, t := range r.JoinTokensWithHashPrefix(h) {
			switch {
			case t.Kind != TokenKindAgent:
			case t.ConsumedUnixNano == 0 && now < t.ExpiresUnixNano:
				return nil // the agent of a pending join token
			case t.ConsumedBy == parent:
				return nil // the agent that used it, attesting now
			}
		}
	}
	return status.Errorf(codes.FailedPrecondition, "invalid entry: parent ID %s is no attested agent, no server and no agent of a pending join token of this cluster, so no agent would serve the entry: check it against meshca node list, or allow it for an agent that attests later (--allow-unknown-parent)", parent)
}

// checkDuplicate refuses an entry with the parent, SPIFFE ID and selector
// set of another entry: it would add nothing but a second SVID.
func checkDuplicate(r *raftfsm.Reader, e *operatorpb.Entry) error {
	want := selectorSet(e.Selectors)
	for _, other := range r.EntriesByParent(e.ParentId) {
		if other.Id != e.Id && other.SpiffeId == e.SpiffeId && selectorSet(other.Selectors) == want {
			return status.Errorf(codes.AlreadyExists, "invalid entry: entry %s already gives %s to the same selectors under the same parent", other.Id, e.SpiffeId)
		}
	}
	return nil
}

func (o *operatorService) putEntry(ctx context.Context, e *operatorpb.Entry, create, allowUnknownParent bool) (*operatorpb.EntryResponse, error) {
	if err := validateEntry(o.s.td, e); err != nil {
		o.s.auditOp(ctx, "entry.write", e.GetSpiffeId(), audit.Deny, err.Error(), nil)
		return nil, status.Errorf(codes.InvalidArgument, "invalid entry: %v", err)
	}
	expect := e.Revision
	if create {
		e.Id, expect = cluster.NewRequestID(), 0
	} else if e.Id == "" {
		return nil, status.Error(codes.InvalidArgument, "an entry ID is required")
	}
	// Checks against the state: as of a linearizable read, so that an
	// agent or entry just written counts.
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	err := checkDuplicate(r, e)
	if cur := r.Entry(e.Id); err == nil && (create || cur == nil || cur.ParentId != e.ParentId) {
		err = o.checkParent(r, e.ParentId, allowUnknownParent)
	}
	if err != nil {
		o.s.auditOp(ctx, "entry.write", e.GetSpiffeId(), audit.Deny, status.Convert(err).Message(), map[string]string{"parent_id": e.GetParentId()})
		return nil, err
	}
	re := toRaftEntry(e)
	re.CreatedUnixNano = o.s.cfg.Clock.Now().UnixNano()
	res, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PutEntry{PutEntry: &raftpb.PutEntry{Entry: re, ExpectRevision: expect}}})
	if err != nil {
		o.s.auditOp(ctx, "entry.write", e.SpiffeId, audit.Deny, status.Convert(fsmStatus(err)).Message(), map[string]string{"entry": e.Id})
		return nil, fsmStatus(err)
	}
	o.s.auditOp(ctx, "entry.write", e.SpiffeId, audit.Allow, "", map[string]string{"entry": e.Id, "parent_id": e.ParentId, "revision": strconv.FormatUint(res.Value, 10)})
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	return &operatorpb.EntryResponse{Entry: fromRaftEntry(o.s.fsm.Read().Entry(e.Id))}, nil
}

func (o *operatorService) CreateEntry(ctx context.Context, req *operatorpb.CreateEntryRequest) (*operatorpb.EntryResponse, error) {
	if req.Entry == nil {
		return nil, status.Error(codes.InvalidArgument, "no entry given")
	}
	return o.putEntry(ctx, req.Entry, true, req.AllowUnknownParent)
}

func (o *operatorService) UpdateEntry(ctx context.Context, req *operatorpb.UpdateEntryRequest) (*operatorpb.EntryResponse, error) {
	if req.Entry == nil {
		return nil, status.Error(codes.InvalidArgument, "no entry given")
	}
	return o.putEntry(ctx, req.Entry, false, req.AllowUnknownParent)
}

func (o *operatorService) DeleteEntry(ctx context.Context, req *operatorpb.DeleteEntryRequest) (*operatorpb.DeleteEntryResponse, error) {
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_DeleteEntry{DeleteEntry: &raftpb.DeleteEntry{Id: req.Id}}}); err != nil {
		o.s.auditOp(ctx, "entry.delete", req.Id, audit.Deny, status.Convert(fsmStatus(err)).Message(), nil)
		return nil, fsmStatus(err)
	}
	o.s.auditOp(ctx, "entry.delete", req.Id, audit.Allow, "", nil)
	return &operatorpb.DeleteEntryResponse{}, nil
}

func (o *operatorService) GetEntry(ctx context.Context, req *operatorpb.GetEntryRequest) (*operatorpb.EntryResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	e := o.s.fsm.Read().Entry(req.Id)
	if e == nil {
		return nil, status.Errorf(codes.NotFound, "no entry %q", req.Id)
	}
	return &operatorpb.EntryResponse{Entry: fromRaftEntry(e)}, nil
}

func (o *operatorService) ListEntries(ctx context.Context, req *operatorpb.ListEntriesRequest) (*operatorpb.ListEntriesResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	var es []*raftpb.Entry
	if req.ParentId != "" {
		es = r.EntriesByParent(req.ParentId)
	} else {
		es = r.Entries()
	}
	if req.SpiffeId != "" {
		var match []*raftpb.Entry
		for _, e := range es {
			if e.SpiffeId == req.SpiffeId {
				match = append(match, e)
			}
		}
		es = match
	}
	// Pages in the order of the IDs (issue 16a).
	sort.Slice(es, func(i, j int) bool { return es[i].Id < es[j].Id })
	es, next, err := entriesPage(es, req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	resp := &operatorpb.ListEntriesResponse{NextPageToken: next}
	for _, e := range es {
		resp.Entries = append(resp.Entries, fromRaftEntry(e))
	}
	return resp, nil
}

func fromRaftNode(n *raftpb.Node) *operatorpb.Node {
	o := &operatorpb.Node{SpiffeId: n.SpiffeId, Attestor: n.Attestor, AttestedUnix: n.AttestedUnixNano / int64(time.Second),
		ExpiresUnix: n.ExpiresUnixNano / int64(time.Second), Banned: n.Banned}
	for _, s := range n.Selectors {
		o.Selectors = append(o.Selectors, &operatorpb.Selector{Type: s.Type, Value: s.Value})
	}
	return o
}

func (o *operatorService) ListNodes(ctx context.Context, _ *operatorpb.ListNodesRequest) (*operatorpb.ListNodesResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	resp := &operatorpb.ListNodesResponse{}
	for _, n := range o.s.fsm.Read().Nodes() {
		resp.Nodes = append(resp.Nodes, fromRaftNode(n))
	}
	return resp, nil
}

func (o *operatorService) GetNode(ctx context.Context, req *operatorpb.GetNodeRequest) (*operatorpb.NodeResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	n := o.s.fsm.Read().Node(req.SpiffeId)
	if n == nil {
		return nil, status.Errorf(codes.NotFound, "no node %q", req.SpiffeId)
	}
	return &operatorpb.NodeResponse{Node: fromRaftNode(n)}, nil
}
