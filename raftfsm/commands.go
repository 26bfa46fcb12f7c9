package raftfsm

import (
	"encoding/hex"
	"fmt"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/protobuf/proto"
)

// apply applies one command inside txn. Handlers check everything before
// they write, so a refused command leaves txn untouched, and they never
// modify a stored record in place (memdb readers may hold it): they insert
// a changed clone. Records taken from the command itself are stored as
// they are: the command was decoded for this apply and nothing else holds it.
func apply(txn *memdb.Txn, lx *ledgerIndex, c *raftpb.Command, index uint64) *raftpb.Result {
	h := c.GetHeader()
	if h == nil {
		return fail(raftpb.ErrorCode_INVALID, "command without header")
	}
	switch op := c.Op.(type) {
	case *raftpb.Command_SetTrustDomain:
		return setTrustDomain(txn, op.SetTrustDomain)
	case *raftpb.Command_PutServer:
		return put(txn, tableServers, op.PutServer.GetServer(), op.PutServer.GetServer().GetNodeId() != "")
	case *raftpb.Command_RemoveServer:
		return remove(txn, tableServers, op.RemoveServer.GetNodeId())
	case *raftpb.Command_PutAuthority:
		a := op.PutAuthority.GetAuthority()
		return put(txn, tableAuthorities, a, a.GetId() != "" && a.GetProfile() != "" && len(a.GetCertificate()) > 0)
	case *raftpb.Command_SetAuthorityState:
		return setAuthorityState(txn, op.SetAuthorityState)
	case *raftpb.Command_PutEntry:
		return putEntry(txn, op.PutEntry)
	case *raftpb.Command_DeleteEntry:
		return remove(txn, tableEntries, op.DeleteEntry.GetId())
	case *raftpb.Command_PutNode:
		return put(txn, tableNodes, op.PutNode.GetNode(), op.PutNode.GetNode().GetSpiffeId() != "")
	case *raftpb.Command_CreateJoinToken:
		return createJoinToken(txn, op.CreateJoinToken.GetToken())
	case *raftpb.Command_ConsumeJoinToken:
		return consumeJoinToken(txn, op.ConsumeJoinToken, h.TimeUnixNano)
	case *raftpb.Command_Revoke:
		return revoke(txn, op.Revoke.GetRevocations())
	case *raftpb.Command_NextCrlNumber:
		return nextCRLNumber(txn, op.NextCrlNumber.GetAuthorityId())
	case *raftpb.Command_PutPolicy:
		return putPolicy(txn, op.PutPolicy.GetPolicy())
	case *raftpb.Command_AppendLedger:
		return appendLedger(txn, lx, op.AppendLedger.GetRecords(), index)
	case *raftpb.Command_PruneLedger:
		return pruneLedger(txn, lx, op.PruneLedger.GetExpiredBeforeUnix())
	case *raftpb.Command_Noop:
		return ok
	case *raftpb.Command_PutJwtKey:
		k := op.PutJwtKey.GetKey()
		return put(txn, tableJWTKeys, k, k.GetKid() != "" && len(k.GetPublicKey()) > 0)
	case nil:
		// Written by a newer meshca: applying nothing here would let this
		// replica diverge from the ones that understood it.
		panic(fmt.Sprintf("raftfsm: log entry %d holds a command this server does not know; upgrade it", index))
	}
	panic(fmt.Sprintf("raftfsm: log entry %d: unhandled command %T", index, c.Op))
}

func insert(txn *memdb.Txn, table string, obj any) {
	if err := txn.Insert(table, obj); err != nil {
		// Only a schema bug gets here; a replica must not go on diverging.
		panic(fmt.Sprintf("raftfsm: insert into %s: %v", table, err))
	}
}

func first(txn *memdb.Txn, table, index, key string) any {
	obj, err := txn.First(table, index, key)
	if err != nil {
		panic(fmt.Sprintf("raftfsm: read %s by %s: %v", table, index, err))
	}
	return obj
}

func put(txn *memdb.Txn, table string, obj proto.Message, valid bool) *raftpb.Result {
	if obj == nil || !valid {
		return fail(raftpb.ErrorCode_INVALID, "incomplete "+table+" record")
	}
	insert(txn, table, obj)
	return ok
}

func remove(txn *memdb.Txn, table, id string) *raftpb.Result {
	obj := first(txn, table, "id", id)
	if obj == nil {
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no %s %q", table, id))
	}
	if err := txn.Delete(table, obj); err != nil {
		panic(fmt.Sprintf("raftfsm: delete from %s: %v", table, err))
	}
	return ok
}

func setTrustDomain(txn *memdb.Txn, op *raftpb.SetTrustDomain) *raftpb.Result {
	td := op.GetTrustDomain()
	if td.GetName() == "" {
		return fail(raftpb.ErrorCode_INVALID, "trust domain without a name")
	}
	if cur, _ := first(txn, tableMeta, "id", metaTrustDomain).(*raftpb.TrustDomain); cur != nil && cur.Name != td.Name {
		return fail(raftpb.ErrorCode_CONFLICT, fmt.Sprintf("the cluster's trust domain is %q", cur.Name))
	}
	insert(txn, tableMeta, td)
	return ok
}

func setAuthorityState(txn *memdb.Txn, op *raftpb.SetAuthorityState) *raftpb.Result {
	cur, _ := first(txn, tableAuthorities, "id", op.GetId()).(*raftpb.Authority)
	if cur == nil {
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no authority %q", op.GetId()))
	}
	a := proto.Clone(cur).(*raftpb.Authority)
	a.State = op.GetState()
	insert(txn, tableAuthorities, a)
	return ok
}

func putEntry(txn *memdb.Txn, op *raftpb.PutEntry) *raftpb.Result {
	e := op.GetEntry()
	if e.GetId() == "" || e.GetSpiffeId() == "" || e.GetParentId() == "" {
		return fail(raftpb.ErrorCode_INVALID, "entry needs an ID, a SPIFFE ID and a parent ID")
	}
	cur, _ := first(txn, tableEntries, "id", e.Id).(*raftpb.Entry)
	switch {
	case cur == nil && op.ExpectRevision != 0:
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no entry %q", e.Id))
	case cur != nil && op.ExpectRevision == 0:
		return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("entry %q exists", e.Id))
	case cur != nil && cur.Revision != op.ExpectRevision:
		return fail(raftpb.ErrorCode_CONFLICT, fmt.Sprintf("entry %q is at revision %d, not %d", e.Id, cur.Revision, op.ExpectRevision))
	}
	n := e
	n.Revision = op.ExpectRevision + 1
	if cur != nil {
		n.CreatedUnixNano = cur.CreatedUnixNano
	}
	insert(txn, tableEntries, n)
	return &raftpb.Result{Value: n.Revision}
}

func createJoinToken(txn *memdb.Txn, t *raftpb.JoinToken) *raftpb.Result {
	if len(t.GetHash()) == 0 || t.GetExpiresUnixNano() == 0 || t.GetKind() == "" {
		return fail(raftpb.ErrorCode_INVALID, "join token needs a hash, a kind and an expiry")
	}
	if first(txn, tableTokens, "id", keyOf(t.Hash)) != nil {
		return fail(raftpb.ErrorCode_ALREADY_EXISTS, "join token exists")
	}
	n := t
	n.ConsumedUnixNano, n.ConsumedBy = 0, ""
	insert(txn, tableTokens, n)
	return ok
}

func keyOf(hash []byte) string { return hex.EncodeToString(hash) }

// consumeJoinToken succeeds once per token, before its expiry by the
// proposer's clock. Unknown tokens and tokens of another kind are both
// "not found", so a caller learns nothing about tokens it does not hold.
func consumeJoinToken(txn *memdb.Txn, op *raftpb.ConsumeJoinToken, now int64) *raftpb.Result {
	cur, _ := first(txn, tableTokens, "id", keyOf(op.GetHash())).(*raftpb.JoinToken)
	switch {
	case cur == nil || cur.Kind != op.GetKind():
		return fail(raftpb.ErrorCode_NOT_FOUND, "unknown join token")
	case cur.ConsumedUnixNano != 0:
		return fail(raftpb.ErrorCode_TOKEN_CONSUMED, "join token already used")
	case now >= cur.ExpiresUnixNano:
		return fail(raftpb.ErrorCode_TOKEN_EXPIRED, "join token expired")
	}
	n := proto.Clone(cur).(*raftpb.JoinToken)
	n.ConsumedUnixNano, n.ConsumedBy = now, op.GetConsumer()
	insert(txn, tableTokens, n)
	return ok
}

func revoke(txn *memdb.Txn, rs []*raftpb.Revocation) *raftpb.Result {
	for _, r := range rs {
		if r.GetIssuerId() == "" || len(r.GetSerial()) == 0 {
			return fail(raftpb.ErrorCode_INVALID, "revocation needs an issuer and a serial")
		}
	}
	for _, r := range rs {
		// The first revocation of a serial stands.
		if first(txn, tableRevocations, "id", revocationKey(r.IssuerId, r.Serial)) == nil {
			insert(txn, tableRevocations, r)
		}
	}
	return ok
}

func nextCRLNumber(txn *memdb.Txn, id string) *raftpb.Result {
	cur, _ := first(txn, tableAuthorities, "id", id).(*raftpb.Authority)
	if cur == nil {
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no authority %q", id))
	}
	a := proto.Clone(cur).(*raftpb.Authority)
	a.CrlNumber++
	insert(txn, tableAuthorities, a)
	return &raftpb.Result{Value: a.CrlNumber}
}

// putPolicy stores the next policy revision; the revision is assigned here
// (latest + 1), so concurrent pushes never collide.
func putPolicy(txn *memdb.Txn, p *raftpb.Policy) *raftpb.Result {
	if p == nil || len(p.Bundle) == 0 {
		return fail(raftpb.ErrorCode_INVALID, "policy without a bundle")
	}
	var latest uint64
	if it, err := txn.GetReverse(tablePolicies, "id"); err == nil {
		if last, _ := it.Next().(*raftpb.Policy); last != nil {
			latest = last.Revision
		}
	}
	n := p
	n.Revision = latest + 1
	insert(txn, tablePolicies, n)
	return &raftpb.Result{Value: n.Revision}
}

// appendLedger records issued certificates, as one block keyed by the log
// index. A serial already recorded with the same request ID is a retry and
// succeeds; with another request ID it is a collision and that record is
// rejected.
func appendLedger(txn *memdb.Txn, lx *ledgerIndex, records []*raftpb.LedgerRecord, index uint64) *raftpb.Result {
	res := &raftpb.Result{}
	kept := make([]*raftpb.LedgerRecord, 0, len(records))
	inBatch := map[string]string{}
	for i, r := range records {
		if len(r.GetSerial()) == 0 || r.GetSpiffeId() == "" {
			res.Rejected = append(res.Rejected, uint32(i))
			continue
		}
		reqID, seen := inBatch[string(r.Serial)]
		if !seen {
			if e, ok := lx.lookup(r.Serial); ok {
				reqID, seen = e.requestID, true
			}
		}
		if seen {
			if reqID == "" || reqID != r.RequestId {
				res.Rejected = append(res.Rejected, uint32(i))
			}
			continue
		}
		inBatch[string(r.Serial)] = r.RequestId
		kept = append(kept, r)
	}
	if len(kept) > 0 {
		b := &raftpb.LedgerBlock{Index: index, Records: kept}
		insert(txn, tableLedger, b)
		lx.addBlock(b)
	}
	res.Value = uint64(len(records) - len(res.Rejected))
	return res
}

// pruneLedger drops the records whose NotAfter is before the cutoff.
func pruneLedger(txn *memdb.Txn, lx *ledgerIndex, before int64) *raftpb.Result {
	var n uint64
	for _, idx := range lx.blocksExpiringBy(before) {
		b, _ := first(txn, tableLedger, "id", blockKey(idx)).(*raftpb.LedgerBlock)
		if b == nil {
			continue
		}
		var keep, gone []*raftpb.LedgerRecord
		for _, r := range b.Records {
			if r.NotAfterUnix < before {
				gone = append(gone, r)
			} else {
				keep = append(keep, r)
			}
		}
		if len(gone) == 0 {
			continue
		}
		for _, r := range gone {
			lx.removeRecord(r)
		}
		lx.forgetExpiry(idx, gone)
		if len(keep) == 0 {
			if err := txn.Delete(tableLedger, b); err != nil {
				panic(fmt.Sprintf("raftfsm: prune ledger: %v", err))
			}
		} else {
			insert(txn, tableLedger, &raftpb.LedgerBlock{Index: idx, Records: keep})
			lx.addBlock(&raftpb.LedgerBlock{Index: idx, Records: keep}) // keep the survivors' expiry hours
		}
		n += uint64(len(gone))
	}
	return &raftpb.Result{Value: n}
}
