package raftfsm

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/protobuf/proto"
)

// JWT signing keys an operator taints and revokes (issue 13). A tainted
// key signs nothing more but stays in every JWT bundle, so the JWT-SVIDs
// it signed (they live minutes) keep validating until agents have re-signed
// them; revoked, it leaves every JWT bundle.

// taintJWTKey marks an active or old JWT key TAINTED at now. The active
// key is succeeded at once by the prepared key or, when none is, by the
// proposer's successor.
func taintJWTKey(txn *memdb.Txn, op *raftpb.TaintJWTKey, now int64) *raftpb.Result {
	cur, _ := first(txn, tableJWTKeys, "id", op.GetKid()).(*raftpb.JWTKey)
	switch {
	case cur == nil:
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no JWT key %q", op.GetKid()))
	case cur.State == raftpb.AuthorityState_TAINTED:
		return ok
	case !JWTKeyActive(cur) && cur.State != raftpb.AuthorityState_OLD:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("JWT key %s is %s; only an active or old key can be tainted", cur.Kid, cur.State))
	}
	if JWTKeyActive(cur) {
		var next *raftpb.JWTKey
		for _, k := range allOf[*raftpb.JWTKey](txn, tableJWTKeys, "id") {
			if k.State == raftpb.AuthorityState_PREPARED {
				next = k
			}
		}
		if next == nil {
			s := op.GetSuccessor()
			switch {
			case s.GetKid() == "" || len(s.GetPublicKey()) == 0 || len(s.GetSealedKey()) == 0 || s.State != raftpb.AuthorityState_ACTIVE:
				return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("JWT key %s is the active key: tainting it needs a successor", cur.Kid))
			case first(txn, tableJWTKeys, "id", s.Kid) != nil:
				return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("JWT key %s exists already", s.Kid))
			}
			insert(txn, tableJWTKeys, s)
			next = s
		}
		if res := activateJWTKey(txn, next.Kid); res.Code != raftpb.ErrorCode_OK {
			return res
		}
	}
	k := proto.Clone(cur).(*raftpb.JWTKey)
	k.State, k.TaintedUnixNano = raftpb.AuthorityState_TAINTED, now
	insert(txn, tableJWTKeys, k)
	return ok
}

// revokeJWTKey marks a TAINTED JWT key REVOKED.
func revokeJWTKey(txn *memdb.Txn, kid string) *raftpb.Result {
	cur, _ := first(txn, tableJWTKeys, "id", kid).(*raftpb.JWTKey)
	switch {
	case cur == nil:
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no JWT key %q", kid))
	case cur.State == raftpb.AuthorityState_REVOKED:
		return ok
	case cur.State != raftpb.AuthorityState_TAINTED:
		state := cur.State
		if JWTKeyActive(cur) {
			state = raftpb.AuthorityState_ACTIVE
		}
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("JWT key %s is %s; only a tainted key can be revoked (taint it first)", kid, state))
	}
	k := proto.Clone(cur).(*raftpb.JWTKey)
	k.State = raftpb.AuthorityState_REVOKED
	insert(txn, tableJWTKeys, k)
	return ok
}
