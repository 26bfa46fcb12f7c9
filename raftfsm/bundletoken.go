package raftfsm

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// issue 12 tokens: bearer tokens of the OPA bundle service. Only the
// SHA-256 of a token's secret is replicated; a token is found by its
// public ID and checked by its hash (server side, in constant time).

const tableBundleTokens = "bundle_tokens"

// ScopeBundleTokens is woken when a bundle token is created or revoked.
const ScopeBundleTokens = "bundle-tokens"

// MaxBundleTokens bounds the bundle tokens the trust domain holds.
const MaxBundleTokens = 1024

func init() {
	schema.Tables[tableBundleTokens] = &memdb.TableSchema{Name: tableBundleTokens, Indexes: map[string]*memdb.IndexSchema{
		"id":   idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.BundleToken).Id) }),
		"name": idx("name", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.BundleToken).Name) }),
	}}
	tableOrder = append(tableOrder, tableBundleTokens)
}

// putBundleToken stores a new token. Tokens that expired before the
// proposer's time (now) are dropped first, so that expired tokens do not
// count against MaxBundleTokens.
func putBundleToken(txn *memdb.Txn, op *raftpb.PutBundleToken, now int64) *raftpb.Result {
	t := op.GetToken()
	if t == nil || t.Id == "" || t.Name == "" || len(t.SecretSha256) != 32 {
		return fail(raftpb.ErrorCode_INVALID, "bundle token without an ID, a name or a 32-byte secret hash")
	}
	if first(txn, tableBundleTokens, "id", t.Id) != nil {
		return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("bundle token ID %s is taken", t.Id))
	}
	if first(txn, tableBundleTokens, "name", t.Name) != nil {
		return fail(raftpb.ErrorCode_ALREADY_EXISTS, fmt.Sprintf("a bundle token named %q exists already", t.Name))
	}
	all := allOf[*raftpb.BundleToken](txn, tableBundleTokens, "id")
	n := len(all)
	for _, cur := range all {
		if cur.ExpiresUnixNano != 0 && cur.ExpiresUnixNano <= now {
			deleteObj(txn, tableBundleTokens, cur)
			n--
		}
	}
	if n >= MaxBundleTokens {
		return fail(raftpb.ErrorCode_INVALID, fmt.Sprintf("the trust domain holds %d bundle tokens, the most it may; revoke some first", n))
	}
	insert(txn, tableBundleTokens, t)
	return ok
}

func deleteBundleToken(txn *memdb.Txn, id string) *raftpb.Result {
	t, _ := first(txn, tableBundleTokens, "id", id).(*raftpb.BundleToken)
	if t == nil {
		return fail(raftpb.ErrorCode_NOT_FOUND, fmt.Sprintf("no bundle token %s", id))
	}
	deleteObj(txn, tableBundleTokens, t)
	return ok
}

// BundleToken returns the bundle token with that ID, or nil.
func (r *Reader) BundleToken(id string) *raftpb.BundleToken {
	if id == "" {
		return nil
	}
	return one[*raftpb.BundleToken](r, tableBundleTokens, id)
}

// BundleTokenByName returns the bundle token with that name, or nil.
func (r *Reader) BundleTokenByName(name string) *raftpb.BundleToken {
	if name == "" {
		return nil
	}
	t, _ := first(r.txn, tableBundleTokens, "name", name).(*raftpb.BundleToken)
	return t
}

// BundleTokens returns every bundle token, by ID.
func (r *Reader) BundleTokens() []*raftpb.BundleToken {
	return all[*raftpb.BundleToken](r, tableBundleTokens, "id")
}
