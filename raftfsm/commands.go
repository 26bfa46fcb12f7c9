package raftfsm

import (
	"bytes"
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
//
// A command with a request ID already applied is not applied again: it
// returns the first application's result (see dedupable).
func apply(txn *memdb.Txn, lx *ledgerIndex, c *raftpb.Command, index uint64) *raftpb.Result {
	h := c.GetHeader()
	if h == nil {
		return fail(raftpb.ErrorCode_INVALID, "command without header")
	}
	dedupe := dedupable(c) && h.RequestId != ""
	if dedupe {
		if prev, _ := first(txn, tableRequests, "id", h.RequestId).(*raftpb.AppliedRequest); prev != nil {
			return proto.Clone(prev.Result).(*raftpb.Result)
		}
	}
	res := applyOp(txn, lx, c, h, index)
	if dedupe {
		insert(txn, tableRequests, &raftpb.AppliedRequest{RequestId: h.RequestId, TimeUnixNano: h.TimeUnixNano, Result: res})
	}
	return res
}

// dedupable reports whether a command's request ID is remembered. Ledger
// appends dedupe per record (they are by far the most frequent commands);
// prunes and no-ops are idempotent by nature.
func dedupable(c *raftpb.Command) bool {
	switch c.Op.(type) {
	case *raftpb.Command_AppendLedger, *raftpb.Command_PruneLedger, *raftpb.Command_Noop, nil:
		return false
	}
	return true
}

func applyOp(txn *memdb.Txn, lx *ledgerIndex, c *raftpb.Command, h *raftpb.Header, index uint64) *raftpb.Result {
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
		return pruneLedger(txn, lx, op.PruneLedger)
	case *raftpb.Command_Noop:
		return ok
	case *raftpb.Command_PutJwtKey:
		return putJWTKey(txn, op.PutJwtKey.GetKey())
	case *raftpb.Command_ActivateAuthority:
		return activateAuthority(txn, op.ActivateAuthority.GetId())
	case *raftpb.Command_ActivateJwtKey:
		return activateJWTKey(txn, op.ActivateJwtKey.GetKid())
	case *raftpb.Command_AttestAgent:
		return attestAgent(txn, lx, op.AttestAgent, h.TimeUnixNano, index)
	case *raftpb.Command_AdmitServer:
		return admitServer(txn, op.AdmitServer, h.TimeUnixNano)
	case *raftpb.Command_PutCrl:
		return putCRL(txn, op.PutCrl.GetCrl())
	case *raftpb.Command_PutAdmin:
		return putAdmin(txn, op.PutAdmin.GetAdmin())
	case *raftpb.Command_DeleteAdmin:
		return deleteAdmin(txn, op.DeleteAdmin.GetSpiffeId())
	case *raftpb.Command_PutEntries:
		return putEntries(txn, op.PutEntries)
	case *raftpb.Command_BanNode:
		return banNode(txn, op.BanNode)
	case *raftpb.Command_EvictNode:
		return evictNode(txn, op.EvictNode)
	case *raftpb.Command_TaintAuthority:
		return taintAuthority(txn, op.TaintAuthority.GetId())
	case *raftpb.Command_RevokeAuthority:
		return revokeAuthority(txn, op.RevokeAuthority)
	case *raftpb.Command_PutIssuancePolicy, *raftpb.Command_PutOpaBundle, *raftpb.Command_PutOpaKey:
		res, _ := applyPolicy(txn, c) // issue 12
		return res
	case *raftpb.Command_RequestAuthorityStep:
		return requestAuthorityStep(txn, op.RequestAuthorityStep)
	case *raftpb.Command_PrepareRoot:
		return prepareRoot(txn, op.PrepareRoot)
	case *raftpb.Command_ActivateRoot:
		return activateRoot(txn, op.ActivateRoot.GetId())
	case *raftpb.Command_TaintJwtKey:
		return taintJWTKey(txn, op.TaintJwtKey, h.TimeUnixNano)
	case *raftpb.Command_RevokeJwtKey:
		return revokeJWTKey(txn, op.RevokeJwtKey.GetKid())
	case *raftpb.Command_PutBundleToken: // issue 12 tokens
		return putBundleToken(txn, op.PutBundleToken, h.TimeUnixNano)
	case *raftpb.Command_DeleteBundleToken:
		return deleteBundleToken(txn, op.DeleteBundleToken.GetId())
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
// The consumer that used the token may use it again with the same
// attempt ID before it expires: its first answer may have been lost.
func consumeJoinToken(txn *memdb.Txn, op *raftpb.ConsumeJoinToken, now int64) *raftpb.Result {
	n, res := checkJoinToken(txn, op, now)
	if n != nil {
		insert(txn, tableTokens, n)
	}
	return res
}

// checkJoinToken decides a consumption without writing: it returns the
// token record to store (nil if nothing changes) and the result.
func checkJoinToken(txn *memdb.Txn, op *raftpb.ConsumeJoinToken, now int64) (*raftpb.JoinToken, *raftpb.Result) {
	cur, _ := first(txn, tableTokens, "id", keyOf(op.GetHash())).(*raftpb.JoinToken)
	switch {
	case cur == nil || cur.Kind != op.GetKind():
		return nil, fail(raftpb.ErrorCode_NOT_FOUND, "unknown join token")
	case now >= cur.ExpiresUnixNano:
		return nil, fail(raftpb.ErrorCode_TOKEN_EXPIRED, "join token expired")
	case cur.ConsumedUnixNano != 0 && op.GetAttempt() != "" && cur.ConsumedAttempt == op.GetAttempt() && cur.ConsumedBy == op.GetConsumer():
		return nil, ok // the same attempt again
	case cur.ConsumedUnixNano != 0:
		return nil, fail(raftpb.ErrorCode_TOKEN_CONSUMED, "join token already used")
	}
	n := proto.Clone(cur).(*raftpb.JoinToken)
	n.ConsumedUnixNano, n.ConsumedBy, n.ConsumedAttempt = now, op.GetConsumer(), op.GetAttempt()
	return n, ok
}

// putCRL stores an authority's CRL if its number is higher than the
// current one's; the same CRL again is a retry and succeeds.
func putCRL(txn *memdb.Txn, c *raftpb.CRL) *raftpb.Result {
	if c.GetAuthorityId() == "" || c.GetNumber() == 0 || len(c.GetDer()) == 0 {
		return fail(raftpb.ErrorCode_INVALID, "incomplete CRL record")
	}
	if first(txn, tableAuthorities, "id", c.AuthorityId) == nil {
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no authority %q", c.AuthorityId))
	}
	if cur, _ := first(txn, tableCRLs, "id", c.AuthorityId).(*raftpb.CRL); cur != nil {
		switch {
		case cur.Number == c.Number && bytes.Equal(cur.Der, c.Der):
			return ok
		case cur.Number >= c.Number:
			return fail(raftpb.ErrorCode_CONFLICT, fmt.Sprintf("authority %q has CRL number %d; %d does not follow it", c.AuthorityId, cur.Number, c.Number))
		}
	}
	insert(txn, tableCRLs, c)
	return ok
}

// activateAuthority makes an authority ACTIVE and the others of its kind,
// profile and server that were ACTIVE OLD.
func activateAuthority(txn *memdb.Txn, id string) *raftpb.Result {
	cur, _ := first(txn, tableAuthorities, "id", id).(*raftpb.Authority)
	switch {
	case cur == nil:
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no authority %q", id))
	case cur.State != raftpb.AuthorityState_PREPARED && cur.State != raftpb.AuthorityState_ACTIVE:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("authority %q is %s; only a prepared authority can be activated", id, cur.State))
	}
	for _, a := range allOf[*raftpb.Authority](txn, tableAuthorities, "profile", cur.Profile) {
		if a.Id != id && a.Kind == cur.Kind && a.ServerId == cur.ServerId && a.State == raftpb.AuthorityState_ACTIVE {
			o := proto.Clone(a).(*raftpb.Authority)
			o.State = raftpb.AuthorityState_OLD
			insert(txn, tableAuthorities, o)
		}
	}
	if cur.State != raftpb.AuthorityState_ACTIVE {
		a := proto.Clone(cur).(*raftpb.Authority)
		a.State = raftpb.AuthorityState_ACTIVE
		insert(txn, tableAuthorities, a)
	}
	return ok
}

func allOf[T any](txn *memdb.Txn, table, index string, args ...any) []T {
	it, err := txn.Get(table, index, args...)
	if err != nil {
		panic(fmt.Sprintf("raftfsm: read %s by %s: %v", table, index, err))
	}
	var out []T
	for obj := it.Next(); obj != nil; obj = it.Next() {
		out = append(out, obj.(T))
	}
	return out
}

// JWTKeyActive reports whether a JWT key signs: ACTIVE, or written before
// keys had states.
func JWTKeyActive(k *raftpb.JWTKey) bool {
	return k.State == raftpb.AuthorityState_ACTIVE || k.State == raftpb.AuthorityState_AUTHORITY_STATE_UNSPECIFIED
}

// putJWTKey stores a JWT key. There is at most one PREPARED key: a second
// one (a retried preparation with a new key ID) is refused.
func putJWTKey(txn *memdb.Txn, k *raftpb.JWTKey) *raftpb.Result {
	if k.GetKid() == "" || len(k.GetPublicKey()) == 0 {
		return fail(raftpb.ErrorCode_INVALID, "incomplete "+tableJWTKeys+" record")
	}
	if k.State == raftpb.AuthorityState_PREPARED {
		for _, o := range allOf[*raftpb.JWTKey](txn, tableJWTKeys, "id") {
			if o.Kid != k.Kid && o.State == raftpb.AuthorityState_PREPARED {
				return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("JWT key %s is already prepared", o.Kid))
			}
		}
	}
	insert(txn, tableJWTKeys, k)
	return ok
}

// activateJWTKey makes a JWT key ACTIVE and the previously active ones OLD.
func activateJWTKey(txn *memdb.Txn, kid string) *raftpb.Result {
	cur, _ := first(txn, tableJWTKeys, "id", kid).(*raftpb.JWTKey)
	switch {
	case cur == nil:
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no JWT key %q", kid))
	case cur.State != raftpb.AuthorityState_PREPARED && !JWTKeyActive(cur):
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("JWT key %q is %s; only a prepared key can be activated", kid, cur.State))
	}
	for _, k := range allOf[*raftpb.JWTKey](txn, tableJWTKeys, "id") {
		if k.Kid != kid && JWTKeyActive(k) {
			o := proto.Clone(k).(*raftpb.JWTKey)
			o.State = raftpb.AuthorityState_OLD
			insert(txn, tableJWTKeys, o)
		}
	}
	if cur.State != raftpb.AuthorityState_ACTIVE {
		k := proto.Clone(cur).(*raftpb.JWTKey)
		k.State = raftpb.AuthorityState_ACTIVE
		insert(txn, tableJWTKeys, k)
	}
	return ok
}

// attestAgent records an attested agent: token consumed (if any), node
// recorded, SVID ledger record appended, or nothing at all.
func attestAgent(txn *memdb.Txn, lx *ledgerIndex, op *raftpb.AttestAgent, now int64, index uint64) *raftpb.Result {
	node, rec := op.GetNode(), op.GetRecord()
	switch {
	case node.GetSpiffeId() == "":
		return fail(raftpb.ErrorCode_INVALID, "attestation without a node")
	case len(rec.GetSerial()) == 0 || rec.GetSpiffeId() != node.GetSpiffeId():
		return fail(raftpb.ErrorCode_INVALID, "attestation without the agent's ledger record")
	}
	if cur, _ := first(txn, tableNodes, "id", node.SpiffeId).(*raftpb.Node); cur != nil && cur.Banned {
		return fail(raftpb.ErrorCode_INVALID, "node "+node.SpiffeId+" is banned")
	}
	if _, seen := lx.lookup(rec.Serial); seen {
		return fail(raftpb.ErrorCode_CONFLICT, "serial number already in the ledger")
	}
	var tok *raftpb.JoinToken
	if op.GetToken() != nil {
		var res *raftpb.Result
		if tok, res = checkJoinToken(txn, op.Token, now); res.Code != raftpb.ErrorCode_OK {
			return res
		}
	}
	if tok != nil {
		insert(txn, tableTokens, tok)
	}
	insert(txn, tableNodes, node)
	b := &raftpb.LedgerBlock{Index: index, Records: []*raftpb.LedgerRecord{rec}}
	insert(txn, tableLedger, b)
	lx.addBlock(b)
	return ok
}

// admitServer records a joining server: token consumed, server and
// intermediates recorded, or nothing at all. A server admitted by a
// pre-shared server-join secret (join_secret_id, no token) records its join
// attempt: the same attempt is admitted again, any other with its name is
// refused.
func admitServer(txn *memdb.Txn, op *raftpb.AdmitServer, now int64) *raftpb.Result {
	srv := op.GetServer()
	bySecret := op.GetToken() == nil && op.GetJoinSecretId() != ""
	switch {
	case srv.GetNodeId() == "":
		return fail(raftpb.ErrorCode_INVALID, "admission needs the server")
	case bySecret && srv.GetJoinAttempt() == "":
		return fail(raftpb.ErrorCode_INVALID, "admission by a server-join secret needs the join attempt")
	case bySecret:
	case op.GetToken() == nil || op.Token.GetConsumer() != srv.NodeId || op.GetJoinSecretId() != "":
		return fail(raftpb.ErrorCode_INVALID, "admission needs the server and its token, or a server-join secret")
	}
	keep := map[string]bool{}
	for _, a := range op.GetIntermediates() {
		if a.GetId() == "" || a.GetProfile() == "" || len(a.GetCertificate()) == 0 || a.ServerId != srv.NodeId || a.Kind != raftpb.AuthorityKind_INTERMEDIATE {
			return fail(raftpb.ErrorCode_INVALID, "incomplete intermediate of "+srv.NodeId)
		}
		keep[a.Id] = true
	}
	var tok *raftpb.JoinToken
	cur, _ := first(txn, tableServers, "id", srv.NodeId).(*raftpb.Server)
	if bySecret {
		if cur != nil && cur.JoinAttempt != srv.JoinAttempt {
			return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("a server named %q is already a member", srv.NodeId))
		}
	} else {
		var res *raftpb.Result
		if tok, res = checkJoinToken(txn, op.Token, now); res.Code != raftpb.ErrorCode_OK {
			return res
		}
		if cur != nil && tok != nil {
			return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("a server named %q is already a member", srv.NodeId))
		}
	}
	if tok != nil {
		insert(txn, tableTokens, tok)
	}
	insert(txn, tableServers, srv)
	for _, a := range allOf[*raftpb.Authority](txn, tableAuthorities, "id") {
		if a.ServerId == srv.NodeId && a.State == raftpb.AuthorityState_ACTIVE && !keep[a.Id] {
			o := proto.Clone(a).(*raftpb.Authority)
			o.State = raftpb.AuthorityState_OLD
			insert(txn, tableAuthorities, o)
		}
	}
	for _, a := range op.GetIntermediates() {
		insert(txn, tableAuthorities, a)
	}
	return ok
}

func revoke(txn *memdb.Txn, rs []*raftpb.Revocation) *raftpb.Result {
	for _, r := range rs {
		if !validRevocation(r) {
			return fail(raftpb.ErrorCode_INVALID, "revocation needs an issuer and a serial of at most 20 bytes")
		}
	}
	insertRevocations(txn, rs)
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
	banned := map[string]bool{}
	for i, r := range records {
		if len(r.GetSerial()) == 0 || r.GetSpiffeId() == "" {
			res.Rejected = append(res.Rejected, uint32(i))
			continue
		}
		if nodeBanned(txn, banned, r.NodeId) {
			// Signed on a server that had not applied the ban yet: the
			// certificate is not recorded, so it is not handed out.
			res.Rejected = append(res.Rejected, uint32(i))
			res.Banned = append(res.Banned, uint32(i))
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

// pruneLedger drops the records whose NotAfter is before the cutoff and,
// when asked, expired intermediates and JWT keys and old request IDs.
func pruneLedger(txn *memdb.Txn, lx *ledgerIndex, op *raftpb.PruneLedger) *raftpb.Result {
	if cut := op.GetAuthoritiesExpiredBeforeUnix(); cut != 0 {
		for _, a := range allOf[*raftpb.Authority](txn, tableAuthorities, "id") {
			if a.Kind == raftpb.AuthorityKind_INTERMEDIATE && a.NotAfterUnix < cut {
				deleteObj(txn, tableAuthorities, a)
				if c := first(txn, tableCRLs, "id", a.Id); c != nil {
					deleteObj(txn, tableCRLs, c)
				}
			}
		}
		for _, k := range allOf[*raftpb.JWTKey](txn, tableJWTKeys, "id") {
			if k.NotAfterUnix < cut {
				deleteObj(txn, tableJWTKeys, k)
			}
		}
		for _, r := range allOf[*raftpb.AppliedRequest](txn, tableRequests, "id") {
			if r.TimeUnixNano < cut*int64(1e9) {
				deleteObj(txn, tableRequests, r)
			}
		}
	}
	if op.GetExpiredBeforeUnix() != 0 {
		pruneRevocations(txn, op.GetExpiredBeforeUnix())
	}
	return pruneLedgerRecords(txn, lx, op)
}

func deleteObj(txn *memdb.Txn, table string, obj any) {
	if err := txn.Delete(table, obj); err != nil {
		panic(fmt.Sprintf("raftfsm: delete from %s: %v", table, err))
	}
}

func pruneLedgerRecords(txn *memdb.Txn, lx *ledgerIndex, op *raftpb.PruneLedger) *raftpb.Result {
	var n uint64
	before := op.GetExpiredBeforeUnix()
	for _, idx := range lx.blocksExpiringBy(before) {
		b, _ := first(txn, tableLedger, "id", blockKey(idx)).(*raftpb.LedgerBlock)
		if b == nil {
			continue
		}
		cut := pruneCutoff(op, idx)
		var keep, gone []*raftpb.LedgerRecord
		for _, r := range b.Records {
			if r.NotAfterUnix < cut {
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
