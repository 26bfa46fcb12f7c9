package raftfsm

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// MaxBatchEntries bounds the entries of one PutEntries command.
const MaxBatchEntries = 1000

// putEntries creates every entry of op, each at revision 1, or none: an
// entry without an ID, SPIFFE ID or parent, an ID that exists or repeats
// in the batch refuses the whole command, naming the entry's position.
func putEntries(txn *memdb.Txn, op *raftpb.PutEntries) *raftpb.Result {
	es := op.GetEntries()
	switch {
	case len(es) == 0:
		return fail(raftpb.ErrorCode_INVALID, "a batch of entries needs at least one entry")
	case len(es) > MaxBatchEntries:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("a batch of %d entries: at most %d", len(es), MaxBatchEntries))
	}
	seen := make(map[string]bool, len(es))
	for i, e := range es {
		switch {
		case e.GetId() == "" || e.GetSpiffeId() == "" || e.GetParentId() == "":
			return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("entry %d of the batch needs an ID, a SPIFFE ID and a parent ID", i))
		case seen[e.Id]:
			return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("entry %d of the batch repeats the ID %q", i, e.Id))
		case first(txn, tableEntries, "id", e.Id) != nil:
			return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("entry %d of the batch: entry %q exists", i, e.Id))
		}
		seen[e.Id] = true
	}
	for _, e := range es {
		e.Revision = 1
		insert(txn, tableEntries, e)
	}
	return ok
}
