package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"sort"
	"strconv"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/server/cluster"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Bulk entry limits.
const (
	// MaxBatchEntries bounds the entries of one BatchCreateEntries call:
	// one Raft command.
	MaxBatchEntries = 500
	// MaxEntriesPage bounds a page of ListEntries.
	MaxEntriesPage = 1000
)

// BatchCreateEntries creates every entry of the request in one Raft
// command, or none: each is checked as CreateEntry checks one (and against
// the others of the batch), and the first refusal names the entry by its
// position. Every created entry is audited; a refused batch is one denial.
func (o *operatorService) BatchCreateEntries(ctx context.Context, req *operatorpb.BatchCreateEntriesRequest) (*operatorpb.BatchCreateEntriesResponse, error) {
	n := len(req.Entries)
	deny := func(code codes.Code, msg string) error {
		o.s.auditOp(ctx, "entry.write", fmt.Sprintf("batch of %d entries", n), audit.Deny, msg, nil)
		return status.Error(code, msg)
	}
	switch {
	case n == 0:
		return nil, deny(codes.InvalidArgument, "no entries given")
	case n > MaxBatchEntries:
		return nil, deny(codes.InvalidArgument, fmt.Sprintf("a batch of %d entries: at most %d per call", n, MaxBatchEntries))
	}
	for i, e := range req.Entries {
		if err := validateEntry(o.s.td, e); err != nil {
			return nil, deny(codes.InvalidArgument, fmt.Sprintf("invalid entry %d (%s): %v", i, e.GetSpiffeId(), err))
		}
	}
	// As of a linearizable read, as for one entry.
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	resp := &operatorpb.BatchCreateEntriesResponse{}
	inBatch := map[string]int{} // parent, SPIFFE ID and selectors -> position
	now := o.s.cfg.Clock.Now().UnixNano()
	var create []*raftpb.Entry
	var positions []int
	for i, e := range req.Entries {
		key := e.ParentId + "\x00" + e.SpiffeId + "\x00" + selectorSet(e.Selectors)
		if j, ok := inBatch[key]; ok {
			return nil, deny(codes.InvalidArgument, fmt.Sprintf("invalid entry %d (%s): it repeats entry %d of the batch", i, e.SpiffeId, j))
		}
		inBatch[key] = i
		e.Id, e.Revision = "", 0
		if err := checkDuplicate(r, e); err != nil {
			if req.SkipExisting {
				resp.Skipped = append(resp.Skipped, uint32(i))
				resp.ExistingIds = append(resp.ExistingIds, existingEntry(r, e))
				continue
			}
			return nil, deny(status.Code(err), fmt.Sprintf("entry %d: %s", i, status.Convert(err).Message()))
		}
		if err := o.checkParent(r, e.ParentId, req.AllowUnknownParent); err != nil {
			return nil, deny(status.Code(err), fmt.Sprintf("entry %d: %s", i, status.Convert(err).Message()))
		}
		e.Id = cluster.NewRequestID()
		re := toRaftEntry(e)
		re.CreatedUnixNano = now
		create, positions = append(create, re), append(positions, i)
	}
	if len(create) == 0 {
		return resp, nil // every entry exists already
	}
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PutEntries{PutEntries: &raftpb.PutEntries{Entries: create}}}); err != nil {
		return nil, deny(status.Code(fsmStatus(err)), status.Convert(fsmStatus(err)).Message())
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r = o.s.fsm.Read()
	for k, re := range create {
		o.s.auditOp(ctx, "entry.write", re.SpiffeId, audit.Allow, "", map[string]string{"entry": re.Id, "parent_id": re.ParentId,
			"revision": "1", "batch_position": strconv.Itoa(positions[k])})
		if e := r.Entry(re.Id); e != nil {
			resp.Entries = append(resp.Entries, fromRaftEntry(e))
		}
	}
	return resp, nil
}

// existingEntry returns the ID of the entry that e repeats.
func existingEntry(r *raftfsm.Reader, e *operatorpb.Entry) string {
	want := selectorSet(e.Selectors)
	for _, other := range r.EntriesByParent(e.ParentId) {
		if other.SpiffeId == e.SpiffeId && selectorSet(other.Selectors) == want {
			return other.Id
		}
	}
	return ""
}

// entriesPage cuts the entries es (in the order of their IDs) after the
// page token and to the page size, and returns the next token ("" on the
// last page). The token is the last ID of the previous page: a page starts
// after it even if that entry was deleted meanwhile.
func entriesPage(es []*raftpb.Entry, size uint32, token string) ([]*raftpb.Entry, string, error) {
	if size > MaxEntriesPage {
		return nil, "", status.Errorf(codes.InvalidArgument, "page size %d: at most %d", size, MaxEntriesPage)
	}
	if token != "" {
		after, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil || len(after) == 0 {
			return nil, "", status.Error(codes.InvalidArgument, "malformed page token: give the next_page_token of the previous page")
		}
		i := sort.Search(len(es), func(i int) bool { return es[i].Id > string(after) })
		es = es[i:]
	}
	if size == 0 || len(es) <= int(size) {
		return es, "", nil
	}
	es = es[:size]
	return es, base64.RawURLEncoding.EncodeToString([]byte(es[len(es)-1].Id)), nil
}
