package raftfsm

import (
	"bytes"
	"fmt"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// issue 12: OPA policy state. The issuance policy's revisions, the named
// OPA authorization bundles' revisions, and the trust domain's OPA signing
// key, each in a table of its own.

// Policy tables.
const (
	tableIssuancePolicies = "issuance_policies"
	tableOPABundles       = "opa_bundles"
	tableOPAKeys          = "opa_keys"
)

// Scopes of policy changes (see FSM.Watch).
const (
	// ScopeIssuancePolicy is the issuance policy.
	ScopeIssuancePolicy = "issuance-policy"
	// ScopeOPAKey is the OPA bundle signing key.
	ScopeOPAKey = "opa-key"
	// ScopeOPABundles is woken by a new revision of any OPA bundle.
	ScopeOPABundles = "opa-bundles"
)

// ScopeOPABundle is the scope of one named OPA bundle.
func ScopeOPABundle(name string) string { return "opa-bundle:" + name }

func opaBundleKey(name string, rev uint64) string { return fmt.Sprintf("%s\x00%020d", name, rev) }

func init() {
	schema.Tables[tableIssuancePolicies] = &memdb.TableSchema{Name: tableIssuancePolicies, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) {
			p := o.(*raftpb.IssuancePolicy)
			return policyKey(p.Revision), p.Revision > 0
		}),
	}}
	schema.Tables[tableOPABundles] = &memdb.TableSchema{Name: tableOPABundles, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) {
			b := o.(*raftpb.OPABundle)
			return opaBundleKey(b.Name, b.Revision), b.Name != "" && b.Revision > 0
		}),
		"name": idx("name", false, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.OPABundle).Name) }),
	}}
	schema.Tables[tableOPAKeys] = &memdb.TableSchema{Name: tableOPAKeys, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.OPAKey).Kid) }),
	}}
	tableOrder = append(tableOrder, tableIssuancePolicies, tableOPABundles, tableOPAKeys)
}

// policyScopes adds the scopes of a policy command; it reports whether c
// is one.
func policyScopes(c *raftpb.Command, touched map[string]bool) bool {
	switch op := c.Op.(type) {
	case *raftpb.Command_PutIssuancePolicy:
		touched[ScopeIssuancePolicy] = true
	case *raftpb.Command_PutOpaBundle:
		touched[ScopeOPABundles] = true
		touched[ScopeOPABundle(op.PutOpaBundle.GetBundle().GetName())] = true
	case *raftpb.Command_PutOpaKey:
		touched[ScopeOPAKey] = true
	case *raftpb.Command_PutBundleToken, *raftpb.Command_DeleteBundleToken:
		touched[ScopeBundleTokens] = true
	default:
		return false
	}
	return true
}

// applyPolicy applies a policy command; ok is false if c is none.
func applyPolicy(txn *memdb.Txn, c *raftpb.Command) (res *raftpb.Result, ok bool) {
	switch op := c.Op.(type) {
	case *raftpb.Command_PutIssuancePolicy:
		return putIssuancePolicy(txn, op.PutIssuancePolicy), true
	case *raftpb.Command_PutOpaBundle:
		return putOPABundle(txn, op.PutOpaBundle), true
	case *raftpb.Command_PutOpaKey:
		return putOPAKey(txn, op.PutOpaKey.GetKey()), true
	}
	return nil, false
}

// keepBound is the most revisions a command may ask to keep, and the
// default when it asks for none.
const (
	defaultKeep = 16
	maxKeep     = 1024
)

func keepOf(n uint32) int {
	switch {
	case n == 0:
		return defaultKeep
	case n > maxKeep:
		return maxKeep
	}
	return int(n)
}

func putIssuancePolicy(txn *memdb.Txn, op *raftpb.PutIssuancePolicy) *raftpb.Result {
	p := op.GetPolicy()
	if p == nil || p.Revision == 0 {
		return fail(raftpb.ErrorCode_INVALID, "issuance policy without a revision")
	}
	all := allOf[*raftpb.IssuancePolicy](txn, tableIssuancePolicies, "id")
	var latest uint64
	if len(all) > 0 {
		latest = all[len(all)-1].Revision
	}
	if p.Revision != latest+1 {
		return fail(raftpb.ErrorCode_CONFLICT, fmt.Sprintf("issuance policy revision %d is not the next one (latest is %d)", p.Revision, latest))
	}
	insert(txn, tableIssuancePolicies, p)
	for i := 0; i < len(all)+1-keepOf(op.Keep); i++ {
		deleteObj(txn, tableIssuancePolicies, all[i])
	}
	return &raftpb.Result{Value: p.Revision}
}

func putOPABundle(txn *memdb.Txn, op *raftpb.PutOPABundle) *raftpb.Result {
	b := op.GetBundle()
	if b == nil || b.Name == "" || b.Revision == 0 || len(b.Bundle) == 0 {
		return fail(raftpb.ErrorCode_INVALID, "OPA bundle without a name, a revision or content")
	}
	all := allOf[*raftpb.OPABundle](txn, tableOPABundles, "name", b.Name)
	var latest uint64
	if len(all) > 0 {
		latest = all[len(all)-1].Revision
	}
	if b.Revision != latest+1 {
		return fail(raftpb.ErrorCode_CONFLICT, fmt.Sprintf("bundle %q revision %d is not the next one (latest is %d)", b.Name, b.Revision, latest))
	}
	insert(txn, tableOPABundles, b)
	for i := 0; i < len(all)+1-keepOf(op.Keep); i++ {
		deleteObj(txn, tableOPABundles, all[i])
	}
	return &raftpb.Result{Value: b.Revision}
}

func putOPAKey(txn *memdb.Txn, k *raftpb.OPAKey) *raftpb.Result {
	if k == nil || k.Kid == "" || len(k.PublicKey) == 0 || len(k.SealedKey) == 0 {
		return fail(raftpb.ErrorCode_INVALID, "OPA key without a kid or key")
	}
	for _, cur := range allOf[*raftpb.OPAKey](txn, tableOPAKeys, "id") {
		if cur.Kid == k.Kid && bytes.Equal(cur.PublicKey, k.PublicKey) {
			return ok // a retry
		}
		return fail(raftpb.ErrorCode_ALREADY_EXISTS, "the trust domain has an OPA signing key already")
	}
	insert(txn, tableOPAKeys, k)
	return ok
}

// IssuancePolicy returns the newest issuance policy revision, or nil.
func (r *Reader) IssuancePolicy() *raftpb.IssuancePolicy {
	it, err := r.txn.GetReverse(tableIssuancePolicies, "id")
	if err != nil {
		panic(fmt.Sprintf("raftfsm: read issuance policies: %v", err))
	}
	p, _ := it.Next().(*raftpb.IssuancePolicy)
	return p
}

// OPABundles returns the kept revisions of a named bundle, oldest first.
func (r *Reader) OPABundles(name string) []*raftpb.OPABundle {
	return all[*raftpb.OPABundle](r, tableOPABundles, "name", name)
}

// OPABundle returns one revision of a named bundle (0: the latest), or nil.
func (r *Reader) OPABundle(name string, revision uint64) *raftpb.OPABundle {
	if revision != 0 {
		return one[*raftpb.OPABundle](r, tableOPABundles, opaBundleKey(name, revision))
	}
	bs := r.OPABundles(name)
	if len(bs) == 0 {
		return nil
	}
	return bs[len(bs)-1]
}

// OPABundleNames returns the latest revision of every bundle, by name.
func (r *Reader) OPABundleNames() []*raftpb.OPABundle {
	var out []*raftpb.OPABundle
	for _, b := range all[*raftpb.OPABundle](r, tableOPABundles, "id") {
		if n := len(out); n > 0 && out[n-1].Name == b.Name {
			out[n-1] = b
			continue
		}
		out = append(out, b)
	}
	return out
}

// OPAKey returns the trust domain's OPA signing key, or nil.
func (r *Reader) OPAKey() *raftpb.OPAKey {
	ks := all[*raftpb.OPAKey](r, tableOPAKeys, "id")
	if len(ks) == 0 {
		return nil
	}
	return ks[0]
}
