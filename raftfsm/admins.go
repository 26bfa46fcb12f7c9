package raftfsm

import (
	"strings"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// maxAdminIDBytes bounds an admin's SPIFFE ID.
const maxAdminIDBytes = 2048

// putAdmin records an admin; recording one again changes nothing (a retry
// or a second server seeding the same ID).
func putAdmin(txn *memdb.Txn, a *raftpb.Admin) *raftpb.Result {
	if a == nil || !strings.HasPrefix(a.SpiffeId, "spiffe://") || len(a.SpiffeId) > maxAdminIDBytes {
		return fail(raftpb.ErrorCode_INVALID, "an admin needs a SPIFFE ID")
	}
	if first(txn, tableAdmins, "id", a.SpiffeId) != nil {
		return ok
	}
	insert(txn, tableAdmins, a)
	return ok
}

func deleteAdmin(txn *memdb.Txn, id string) *raftpb.Result {
	a := first(txn, tableAdmins, "id", id)
	if a == nil {
		return fail(raftpb.ErrorCode_NOT_FOUND, "no admin "+id)
	}
	deleteObj(txn, tableAdmins, a)
	return ok
}

// Admins returns the operators who may use the operator API over mutual
// TLS, by SPIFFE ID.
func (r *Reader) Admins() []*raftpb.Admin { return all[*raftpb.Admin](r, tableAdmins, "id") }

// IsAdmin reports whether id is an admin.
func (r *Reader) IsAdmin(id string) bool { return first(r.txn, tableAdmins, "id", id) != nil }
