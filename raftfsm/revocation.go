package raftfsm

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/protobuf/proto"
)

// Revocations and node bans (issue 13).
//
// A revocation names its issuer and serial and, copied from the ledger by
// the proposer, the certificate's expiry, SPIFFE ID and node. Revocations
// are indexed by issuer (a CRL lists one issuer's) and by expiry: once a
// certificate has expired its revocation leaves CRLs, and the ledger prune
// drops it from the state, so CRLs stay small however many certificates
// were revoked over the years.

// ScopeRevocations is woken by every change of the revocations (a revoke,
// a ban): the servers sign the affected CRLs again.
const ScopeRevocations = "revocations"

func expiryKey(unix int64) string { return fmt.Sprintf("%020d", max(unix, 0)) }

func validRevocation(r *raftpb.Revocation) bool {
	return r.GetIssuerId() != "" && len(r.GetSerial()) > 0 && len(r.GetSerial()) <= 20
}

// insertRevocations records revocations; the first revocation of a serial stands.
func insertRevocations(txn *memdb.Txn, rs []*raftpb.Revocation) {
	for _, r := range rs {
		if first(txn, tableRevocations, "id", revocationKey(r.IssuerId, r.Serial)) == nil {
			insert(txn, tableRevocations, r)
		}
	}
}

// banNode bans or unbans a recorded node; a ban records the revocations
// of its certificates in the same step.
func banNode(txn *memdb.Txn, op *raftpb.BanNode) *raftpb.Result {
	cur, _ := first(txn, tableNodes, "id", op.GetNodeId()).(*raftpb.Node)
	if cur == nil {
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no node %q", op.GetNodeId()))
	}
	if !op.GetBanned() && len(op.GetRevocations()) > 0 {
		return fail(raftpb.ErrorCode_INVALID, "an unban revokes nothing")
	}
	for _, r := range op.GetRevocations() {
		if !validRevocation(r) {
			return fail(raftpb.ErrorCode_INVALID, "revocation needs an issuer and a serial of at most 20 bytes")
		}
	}
	if cur.Banned != op.Banned {
		n := proto.Clone(cur).(*raftpb.Node)
		n.Banned = op.Banned
		insert(txn, tableNodes, n)
	}
	insertRevocations(txn, op.GetRevocations())
	return ok
}

// nodeBanned reports whether node is a banned node, remembering the
// answers in seen for the rest of a batch.
func nodeBanned(txn *memdb.Txn, seen map[string]bool, node string) bool {
	if node == "" {
		return false
	}
	b, ok := seen[node]
	if !ok {
		n, _ := first(txn, tableNodes, "id", node).(*raftpb.Node)
		b = n != nil && n.Banned
		seen[node] = b
	}
	return b
}

// evictNode forgets a node record.
func evictNode(txn *memdb.Txn, op *raftpb.EvictNode) *raftpb.Result {
	return remove(txn, tableNodes, op.GetNodeId())
}

// pruneRevocations drops the revocations of certificates that expired
// before the cutoff.
func pruneRevocations(txn *memdb.Txn, before int64) {
	it, err := txn.Get(tableRevocations, "expiry")
	if err != nil {
		panic(fmt.Sprintf("raftfsm: read revocations by expiry: %v", err))
	}
	var gone []any
	for obj := it.Next(); obj != nil; obj = it.Next() {
		if obj.(*raftpb.Revocation).NotAfterUnix >= before {
			break
		}
		gone = append(gone, obj)
	}
	for _, obj := range gone {
		deleteObj(txn, tableRevocations, obj)
	}
}

// RevocationsOf returns the revocations of one issuer, by serial.
func (r *Reader) RevocationsOf(issuerID string) []*raftpb.Revocation {
	return all[*raftpb.Revocation](r, tableRevocations, "issuer", issuerID)
}

// Revocation returns the revocation of an issuer's serial, or nil.
func (r *Reader) Revocation(issuerID string, serial []byte) *raftpb.Revocation {
	return one[*raftpb.Revocation](r, tableRevocations, revocationKey(issuerID, serial))
}

// LedgerByIssuer returns the records of certificates an authority signed, by serial.
func (r *Reader) LedgerByIssuer(issuerID string) []*raftpb.LedgerRecord {
	return r.resolve(serials(r.ledger, r.ledger.byIssuer, issuerID))
}

// LedgerAll calls f with every ledger record, in the order they were
// recorded, until f returns false.
func (r *Reader) LedgerAll(f func(*raftpb.LedgerRecord) bool) {
	for _, b := range all[*raftpb.LedgerBlock](r, tableLedger, "id") {
		for _, rec := range b.Records {
			if !f(rec) {
				return
			}
		}
	}
}

// taintAuthority marks an ACTIVE or OLD intermediate, or an OLD root,
// TAINTED.
func taintAuthority(txn *memdb.Txn, id string) *raftpb.Result {
	cur, _ := first(txn, tableAuthorities, "id", id).(*raftpb.Authority)
	switch {
	case cur == nil:
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no authority %q", id))
	case cur.State == raftpb.AuthorityState_TAINTED:
		return ok
	case cur.Kind == raftpb.AuthorityKind_ROOT && cur.State == raftpb.AuthorityState_ACTIVE:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("root %s is the active root of its profile: prepare and activate a successor before tainting it", id))
	case cur.State != raftpb.AuthorityState_ACTIVE && cur.State != raftpb.AuthorityState_OLD:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("authority %s is %s; only an active or old authority can be tainted", id, cur.State))
	}
	a := proto.Clone(cur).(*raftpb.Authority)
	a.State = raftpb.AuthorityState_TAINTED
	insert(txn, tableAuthorities, a)
	if a.Kind == raftpb.AuthorityKind_ROOT {
		// What chains to it chains through the intermediates it signed.
		cascade(txn, a, raftpb.AuthorityState_TAINTED, raftpb.AuthorityState_PREPARED, raftpb.AuthorityState_ACTIVE, raftpb.AuthorityState_OLD)
	}
	return ok
}

// revokeAuthority marks a TAINTED authority REVOKED and records its
// revocation by its parent, if it has one.
func revokeAuthority(txn *memdb.Txn, op *raftpb.RevokeAuthority) *raftpb.Result {
	cur, _ := first(txn, tableAuthorities, "id", op.GetId()).(*raftpb.Authority)
	switch {
	case cur == nil:
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no authority %q", op.GetId()))
	case cur.State == raftpb.AuthorityState_REVOKED:
		return ok
	case cur.State != raftpb.AuthorityState_TAINTED:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("authority %s is %s; only a tainted authority can be revoked (taint it first)", op.GetId(), cur.State))
	}
	rv := op.GetRevocation()
	if rv != nil && (!validRevocation(rv) || rv.IssuerId != cur.ParentId) {
		return fail(raftpb.ErrorCode_INVALID, "an authority's revocation is recorded for its parent")
	}
	a := proto.Clone(cur).(*raftpb.Authority)
	a.State = raftpb.AuthorityState_REVOKED
	insert(txn, tableAuthorities, a)
	if a.Kind == raftpb.AuthorityKind_ROOT {
		cascade(txn, a, raftpb.AuthorityState_REVOKED, raftpb.AuthorityState_PREPARED, raftpb.AuthorityState_ACTIVE, raftpb.AuthorityState_OLD, raftpb.AuthorityState_TAINTED)
	}
	if rv != nil {
		insertRevocations(txn, []*raftpb.Revocation{rv})
	}
	return ok
}

// Steps an operator may request of an intermediate's server.
const (
	StepPrepare  = "prepare"
	StepActivate = "activate"
)

// preparedSibling returns the PREPARED intermediate of the same server and
// profile as a, or nil.
func preparedSibling(txn *memdb.Txn, a *raftpb.Authority) *raftpb.Authority {
	for _, o := range allOf[*raftpb.Authority](txn, tableAuthorities, "profile", a.Profile) {
		if o.Id != a.Id && o.Kind == raftpb.AuthorityKind_INTERMEDIATE && o.ServerId == a.ServerId && o.State == raftpb.AuthorityState_PREPARED {
			return o
		}
	}
	return nil
}

// requestAuthorityStep records a step an operator asked of an
// intermediate's server.
func requestAuthorityStep(txn *memdb.Txn, op *raftpb.RequestAuthorityStep) *raftpb.Result {
	cur, _ := first(txn, tableAuthorities, "id", op.GetId()).(*raftpb.Authority)
	if cur == nil {
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no authority %q", op.GetId()))
	}
	if cur.Kind != raftpb.AuthorityKind_INTERMEDIATE {
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is a root: roots are prepared and activated by the operator's root steps, not by a server", cur.Id))
	}
	sib := preparedSibling(txn, cur)
	switch op.GetStep() {
	case StepPrepare:
		switch {
		case cur.State != raftpb.AuthorityState_ACTIVE:
			return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is %s: name the active intermediate whose successor to prepare", cur.Id, cur.State))
		case sib != nil:
			return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("%s is already prepared to succeed %s: activate it", sib.Id, cur.Id))
		}
	case StepActivate:
		switch {
		case cur.State == raftpb.AuthorityState_PREPARED:
		case cur.State == raftpb.AuthorityState_ACTIVE && sib == nil:
			return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is active and nothing is prepared to succeed it: prepare first", cur.Id))
		case cur.State == raftpb.AuthorityState_ACTIVE:
			return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is active already; the prepared one is %s", cur.Id, sib.Id))
		default:
			return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("%s is %s: only a prepared intermediate can be activated", cur.Id, cur.State))
		}
	default:
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("unknown step %q", op.GetStep()))
	}
	a := proto.Clone(cur).(*raftpb.Authority)
	a.RequestedStep = op.Step
	insert(txn, tableAuthorities, a)
	return ok
}

// CheckCommand decides cmd as Apply would on the current state, without
// applying it, and returns its refusal or nil: an operator's dry run. It
// takes no ledger command. It holds the state's write lock briefly.
func (f *FSM) CheckCommand(c *raftpb.Command) error {
	switch c.Op.(type) {
	case *raftpb.Command_AppendLedger, *raftpb.Command_AttestAgent, *raftpb.Command_PruneLedger, nil:
		return &Error{Code: raftpb.ErrorCode_INVALID, Msg: fmt.Sprintf("CheckCommand does not take %T", c.Op)}
	}
	txn := f.db.Load().Txn(true)
	defer txn.Abort()
	h := c.GetHeader()
	if h == nil {
		h = &raftpb.Header{}
	}
	return ResultError(applyOp(txn, nil, c, h, 0))
}
