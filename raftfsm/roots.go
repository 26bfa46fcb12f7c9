package raftfsm

import (
	"bytes"
	"fmt"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/protobuf/proto"
)

// Root rotation (issue 13 roots). A profile's next root is prepared by the
// server an operator asks (its key sealed under the cluster's KEK, as the
// active root's) and recorded PREPARED: from then on it is in every trust
// bundle, so every agent, proxy and server trusts it before it signs
// anything. Activation, refused until the leader has published its CRL,
// makes it ACTIVE and the previous root OLD; every server then replaces
// its intermediate with one the new root certifies. Tainting the old root
// taints the intermediates it signed (agents re-issue what chains to
// them); revoking it revokes them too, and it leaves every bundle.

// rootsOf returns the roots of a profile.
func rootsOf(txn *memdb.Txn, profile string) []*raftpb.Authority {
	var out []*raftpb.Authority
	for _, a := range allOf[*raftpb.Authority](txn, tableAuthorities, "profile", profile) {
		if a.Kind == raftpb.AuthorityKind_ROOT {
			out = append(out, a)
		}
	}
	return out
}

// rootIn returns the first root of a profile in state, or nil.
func rootIn(txn *memdb.Txn, profile string, state raftpb.AuthorityState) *raftpb.Authority {
	for _, a := range rootsOf(txn, profile) {
		if a.State == state {
			return a
		}
	}
	return nil
}

// prepareRoot records a profile's next root.
func prepareRoot(txn *memdb.Txn, op *raftpb.PrepareRoot) *raftpb.Result {
	a := op.GetRoot()
	switch {
	case a.GetId() == "" || a.GetProfile() == "" || len(a.GetCertificate()) == 0 || len(a.GetSealedKey()) == 0:
		return fail(raftpb.ErrorCode_INVALID, "a prepared root needs an ID, a profile, a certificate and its sealed key")
	case a.Kind != raftpb.AuthorityKind_ROOT || a.State != raftpb.AuthorityState_PREPARED || a.ServerId != "" || a.ParentId != "":
		return fail(raftpb.ErrorCode_INVALID, "a prepared root is a PREPARED root without server or parent")
	}
	if cur, _ := first(txn, tableAuthorities, "id", a.Id).(*raftpb.Authority); cur != nil {
		if cur.State == raftpb.AuthorityState_PREPARED && bytes.Equal(cur.Certificate, a.Certificate) {
			return ok // the same root again: a retry
		}
		return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("authority %s exists already (%s)", a.Id, cur.State))
	}
	active := rootIn(txn, a.Profile, raftpb.AuthorityState_ACTIVE)
	switch {
	case active == nil:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("the %s profile has no active root to succeed", a.Profile))
	case op.GetSuccessorOf() != active.Id:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%q is not the active %s root (%s is): name the active root whose successor to prepare", op.GetSuccessorOf(), a.Profile, active.Id))
	}
	if p := rootIn(txn, a.Profile, raftpb.AuthorityState_PREPARED); p != nil {
		return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("%s is already prepared to succeed %s: activate it", p.Id, active.Id))
	}
	insert(txn, tableAuthorities, a)
	return ok
}

// activateRoot makes a prepared root ACTIVE and the active root of its
// profile OLD. It is refused until the prepared root's CRL is published:
// proxies that hold CRLs need one for every CA of a chain.
func activateRoot(txn *memdb.Txn, id string) *raftpb.Result {
	cur, _ := first(txn, tableAuthorities, "id", id).(*raftpb.Authority)
	switch {
	case cur == nil:
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no authority %q", id))
	case cur.Kind != raftpb.AuthorityKind_ROOT:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is not a root", id))
	case cur.State == raftpb.AuthorityState_ACTIVE:
		if p := rootIn(txn, cur.Profile, raftpb.AuthorityState_PREPARED); p != nil {
			return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is active already; the prepared %s root is %s", id, cur.Profile, p.Id))
		}
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is the active %s root and nothing is prepared to succeed it: prepare first", id, cur.Profile))
	case cur.State != raftpb.AuthorityState_PREPARED:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is %s: only a prepared root can be activated", id, cur.State))
	case first(txn, tableCRLs, "id", id) == nil:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("the CRL of %s is not published yet (the leader signs it within moments): try again", id))
	}
	for _, a := range rootsOf(txn, cur.Profile) {
		if a.State == raftpb.AuthorityState_ACTIVE {
			o := proto.Clone(a).(*raftpb.Authority)
			o.State = raftpb.AuthorityState_OLD
			insert(txn, tableAuthorities, o)
		}
	}
	a := proto.Clone(cur).(*raftpb.Authority)
	a.State, a.RequestedStep = raftpb.AuthorityState_ACTIVE, ""
	insert(txn, tableAuthorities, a)
	return ok
}

// cascade sets the intermediates a root signed that are in one of from to
// state to.
func cascade(txn *memdb.Txn, root *raftpb.Authority, to raftpb.AuthorityState, from ...raftpb.AuthorityState) {
	for _, a := range allOf[*raftpb.Authority](txn, tableAuthorities, "profile", root.Profile) {
		if a.Kind != raftpb.AuthorityKind_INTERMEDIATE || a.ParentId != root.Id {
			continue
		}
		for _, f := range from {
			if a.State == f {
				o := proto.Clone(a).(*raftpb.Authority)
				o.State = to
				insert(txn, tableAuthorities, o)
				break
			}
		}
	}
}
