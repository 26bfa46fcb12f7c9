package raftfsm

import (
	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// Scopes name what a change concerns, so that a push stream is woken only
// by the changes it serves (see FSM.Watch): a node agent's stream watches
// its own node's scope and the trust domain's bundle and JWT authorities,
// so an entry change wakes only its parent's stream, and an attestation
// only the attested node's.
const (
	// ScopeBundle is the trust domain's roots.
	ScopeBundle = "bundle"
	// ScopeJWT is the JWT-SVID signing keys.
	ScopeJWT = "jwt"
	// ScopeIntermediates is the servers' intermediates.
	ScopeIntermediates = "intermediates"
	// ScopeCRL is the authorities' CRLs.
	ScopeCRL = "crl"
	// ScopeAll is woken by every change but the ledger's, and by a restore.
	ScopeAll = "*"
)

// ScopeNode is the scope of a node agent: its node record and the entries
// whose parent it is.
func ScopeNode(spiffeID string) string { return "node:" + spiffeID }

// scopesOf adds to touched the scopes cmd changes, read from the state
// before it is applied (a deleted entry's parent, an authority's kind).
// A command that will be refused may add scopes: a spurious wake-up costs a
// comparison.
func scopesOf(txn *memdb.Txn, c *raftpb.Command, touched map[string]bool) {
	authority := func(kind raftpb.AuthorityKind) {
		if kind == raftpb.AuthorityKind_ROOT {
			touched[ScopeBundle] = true
		} else {
			touched[ScopeIntermediates] = true
		}
	}
	entryParent := func(id string) {
		if e, _ := first(txn, tableEntries, "id", id).(*raftpb.Entry); e != nil {
			touched[ScopeNode(e.ParentId)] = true
		}
	}
	switch op := c.Op.(type) {
	case *raftpb.Command_AppendLedger, *raftpb.Command_Noop, nil:
		return
	case *raftpb.Command_PruneLedger:
		cut := op.PruneLedger.GetAuthoritiesExpiredBeforeUnix()
		if cut == 0 {
			return
		}
		for _, a := range allOf[*raftpb.Authority](txn, tableAuthorities, "id") {
			if a.Kind == raftpb.AuthorityKind_INTERMEDIATE && a.NotAfterUnix < cut {
				touched[ScopeIntermediates] = true
				touched[ScopeCRL] = true
			}
		}
		for _, k := range allOf[*raftpb.JWTKey](txn, tableJWTKeys, "id") {
			if k.NotAfterUnix < cut {
				touched[ScopeJWT] = true
			}
		}
		return
	case *raftpb.Command_PutEntry:
		entryParent(op.PutEntry.GetEntry().GetId())
		touched[ScopeNode(op.PutEntry.GetEntry().GetParentId())] = true
	case *raftpb.Command_DeleteEntry:
		entryParent(op.DeleteEntry.GetId())
	case *raftpb.Command_PutEntries:
		for _, e := range op.PutEntries.GetEntries() {
			touched[ScopeNode(e.GetParentId())] = true
		}
	case *raftpb.Command_PutNode:
		touched[ScopeNode(op.PutNode.GetNode().GetSpiffeId())] = true
	case *raftpb.Command_AttestAgent:
		touched[ScopeNode(op.AttestAgent.GetNode().GetSpiffeId())] = true
	case *raftpb.Command_PutAuthority:
		authority(op.PutAuthority.GetAuthority().GetKind())
	case *raftpb.Command_SetAuthorityState:
		if a, _ := first(txn, tableAuthorities, "id", op.SetAuthorityState.GetId()).(*raftpb.Authority); a != nil {
			authority(a.Kind)
		}
	case *raftpb.Command_ActivateAuthority:
		if a, _ := first(txn, tableAuthorities, "id", op.ActivateAuthority.GetId()).(*raftpb.Authority); a != nil {
			authority(a.Kind)
		}
	case *raftpb.Command_AdmitServer:
		touched[ScopeIntermediates] = true
	case *raftpb.Command_PutJwtKey, *raftpb.Command_ActivateJwtKey, *raftpb.Command_TaintJwtKey, *raftpb.Command_RevokeJwtKey:
		touched[ScopeJWT] = true
	case *raftpb.Command_PutCrl:
		touched[ScopeCRL] = true
		if a, _ := first(txn, tableAuthorities, "id", op.PutCrl.GetCrl().GetAuthorityId()).(*raftpb.Authority); a != nil && a.Kind == raftpb.AuthorityKind_ROOT {
			touched[ScopeBundle] = true // a prepared root joins the bundle with its first CRL
		}
	case *raftpb.Command_Revoke:
		touched[ScopeRevocations] = true
	case *raftpb.Command_BanNode:
		touched[ScopeRevocations] = true
		touched[ScopeNode(op.BanNode.GetNodeId())] = true
	case *raftpb.Command_EvictNode:
		touched[ScopeNode(op.EvictNode.GetNodeId())] = true
	case *raftpb.Command_TaintAuthority:
		if a, _ := first(txn, tableAuthorities, "id", op.TaintAuthority.GetId()).(*raftpb.Authority); a != nil {
			authority(a.Kind)
			touched[ScopeIntermediates] = true // a root's taint taints the intermediates it signed
		}
		// Agents learn of it with the authority's CRL resource.
		touched[ScopeCRL] = true
	case *raftpb.Command_RequestAuthorityStep:
		touched[ScopeIntermediates] = true
	case *raftpb.Command_RevokeAuthority:
		if a, _ := first(txn, tableAuthorities, "id", op.RevokeAuthority.GetId()).(*raftpb.Authority); a != nil {
			authority(a.Kind)
			touched[ScopeIntermediates] = true // a root's revocation revokes the intermediates it signed
		}
		touched[ScopeRevocations] = true
		touched[ScopeCRL] = true
	case *raftpb.Command_PrepareRoot, *raftpb.Command_ActivateRoot:
		// The bundle changes; an activation has every server replace its
		// intermediate.
		touched[ScopeBundle] = true
		touched[ScopeIntermediates] = true
	default:
		policyScopes(c, touched) // issue 12
	}
	touched[ScopeAll] = true
}
