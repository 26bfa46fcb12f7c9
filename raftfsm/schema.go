package raftfsm

import (
	"encoding/hex"
	"fmt"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// Table names.
const (
	tableMeta        = "meta"
	tableServers     = "servers"
	tableAuthorities = "authorities"
	tableEntries     = "entries"
	tableNodes       = "nodes"
	tableTokens      = "join_tokens"
	tableRevocations = "revocations"
	tablePolicies    = "policies"
	tableLedger      = "ledger"
	tableJWTKeys     = "jwt_keys"
	tableAdmins      = "admins"
	tableRequests    = "requests"
	tableCRLs        = "crls"
)

// tableOrder is the order tables appear in snapshots and the state hash.
var tableOrder = []string{tableMeta, tableServers, tableAuthorities, tableEntries, tableNodes, tableTokens, tableRevocations, tablePolicies, tableLedger, tableJWTKeys, tableRequests, tableCRLs,
	tableAdmins}

// keyIndex indexes an object by a string its function computes. All keys
// are plain strings terminated by a NUL, as memdb's own string indexes do,
// so that FromArgs and FromObject agree.
type keyIndex struct {
	key func(obj any) (string, bool)
}

func (k keyIndex) FromObject(obj any) (bool, []byte, error) {
	s, ok := k.key(obj)
	if !ok {
		return false, nil, nil
	}
	return true, append([]byte(s), 0), nil
}

func (k keyIndex) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("raftfsm: index takes one argument, got %d", len(args))
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("raftfsm: index argument is %T, want string", args[0])
	}
	return append([]byte(s), 0), nil
}

func (k keyIndex) PrefixFromArgs(args ...any) ([]byte, error) {
	b, err := k.FromArgs(args...)
	if err != nil {
		return nil, err
	}
	return b[:len(b)-1], nil
}

func idx(name string, unique, allowMissing bool, key func(obj any) (string, bool)) *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: name, Unique: unique, AllowMissing: allowMissing, Indexer: keyIndex{key}}
}

func nonEmpty(s string) (string, bool) { return s, s != "" }

// metaTrustDomain is the key of the trust-domain row of the meta table.
const metaTrustDomain = "trust_domain"

// serialKey is the key of a serial number: lowercase hex.
func serialKey(serial []byte) string { return hex.EncodeToString(serial) }

func revocationKey(issuer string, serial []byte) string { return issuer + "/" + serialKey(serial) }

func policyKey(rev uint64) string { return fmt.Sprintf("%020d", rev) }

func blockKey(index uint64) string { return fmt.Sprintf("%020d", index) }

var schema = &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
	tableMeta: {Name: tableMeta, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) {
			if _, ok := o.(*raftpb.TrustDomain); ok {
				return metaTrustDomain, true
			}
			return "", false
		}),
	}},
	tableServers: {Name: tableServers, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Server).NodeId) }),
	}},
	tableAuthorities: {Name: tableAuthorities, Indexes: map[string]*memdb.IndexSchema{
		"id":      idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Authority).Id) }),
		"profile": idx("profile", false, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Authority).Profile) }),
	}},
	tableEntries: {Name: tableEntries, Indexes: map[string]*memdb.IndexSchema{
		"id":        idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Entry).Id) }),
		"parent":    idx("parent", false, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Entry).ParentId) }),
		"spiffe_id": idx("spiffe_id", false, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Entry).SpiffeId) }),
	}},
	tableNodes: {Name: tableNodes, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Node).SpiffeId) }),
	}},
	tableTokens: {Name: tableTokens, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) {
			h := o.(*raftpb.JoinToken).Hash
			return hex.EncodeToString(h), len(h) > 0
		}),
	}},
	tableRevocations: {Name: tableRevocations, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) {
			r := o.(*raftpb.Revocation)
			return revocationKey(r.IssuerId, r.Serial), r.IssuerId != "" && len(r.Serial) > 0
		}),
		"issuer": idx("issuer", false, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Revocation).IssuerId) }),
		// By serial alone, whoever the issuer: for the one question asked
		// of every node API call, whether the caller's SVID is revoked.
		"serial": idx("serial", false, false, func(o any) (string, bool) {
			r := o.(*raftpb.Revocation)
			return serialKey(r.Serial), len(r.Serial) > 0
		}),
		"expiry": idx("expiry", false, true, func(o any) (string, bool) {
			r := o.(*raftpb.Revocation)
			return expiryKey(r.NotAfterUnix), r.NotAfterUnix != 0
		}),
	}},
	tablePolicies: {Name: tablePolicies, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) {
			p := o.(*raftpb.Policy)
			return policyKey(p.Revision), p.Revision > 0
		}),
	}},
	tableJWTKeys: {Name: tableJWTKeys, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.JWTKey).Kid) }),
	}},
	tableAdmins: {Name: tableAdmins, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.Admin).SpiffeId) }),
	}},
	tableCRLs: {Name: tableCRLs, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.CRL).AuthorityId) }),
	}},
	tableRequests: {Name: tableRequests, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) { return nonEmpty(o.(*raftpb.AppliedRequest).RequestId) }),
	}},
	tableLedger: {Name: tableLedger, Indexes: map[string]*memdb.IndexSchema{
		"id": idx("id", true, false, func(o any) (string, bool) {
			return blockKey(o.(*raftpb.LedgerBlock).Index), true
		}),
		// Secondary indexes of the ledger are in ledgerIndex.
	}},
}}
