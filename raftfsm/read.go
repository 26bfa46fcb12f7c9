package raftfsm

import (
	"fmt"
	"io"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// Reader is a consistent read-only view of the state at one moment: the
// state after the entry AppliedIndex. Records it returns are shared with
// the state: callers must not modify them.
type Reader struct {
	txn    *memdb.Txn
	ledger *ledgerIndex
	index  uint64
}

// AppliedIndex is the index of the last log entry applied to this view.
func (r *Reader) AppliedIndex() uint64 { return r.index }

// StateHash is the SHA-256 of this view's snapshot encoding, the state at
// AppliedIndex: equal hashes, equal state.
func (r *Reader) StateHash() ([32]byte, error) {
	_, sum, err := writeSnapshot(io.Discard, r.txn, r.index)
	return sum, err
}

func all[T any](r *Reader, table, index string, args ...any) []T {
	it, err := r.txn.Get(table, index, args...)
	if err != nil {
		panic(fmt.Sprintf("raftfsm: read %s by %s: %v", table, index, err))
	}
	var out []T
	for obj := it.Next(); obj != nil; obj = it.Next() {
		out = append(out, obj.(T))
	}
	return out
}

func one[T any](r *Reader, table, key string) T {
	obj := first(r.txn, table, "id", key)
	v, _ := obj.(T)
	return v
}

// TrustDomain returns the cluster's trust domain record, or nil before bootstrap.
func (r *Reader) TrustDomain() *raftpb.TrustDomain {
	return one[*raftpb.TrustDomain](r, tableMeta, metaTrustDomain)
}

// Servers returns the cluster's servers by node ID.
func (r *Reader) Servers() []*raftpb.Server { return all[*raftpb.Server](r, tableServers, "id") }

// Server returns one server, or nil.
func (r *Reader) Server(nodeID string) *raftpb.Server {
	return one[*raftpb.Server](r, tableServers, nodeID)
}

// Authorities returns every authority by ID.
func (r *Reader) Authorities() []*raftpb.Authority {
	return all[*raftpb.Authority](r, tableAuthorities, "id")
}

// Authority returns one authority, or nil.
func (r *Reader) Authority(id string) *raftpb.Authority {
	return one[*raftpb.Authority](r, tableAuthorities, id)
}

// Entries returns every registration entry by ID.
func (r *Reader) Entries() []*raftpb.Entry { return all[*raftpb.Entry](r, tableEntries, "id") }

// Entry returns one registration entry, or nil.
func (r *Reader) Entry(id string) *raftpb.Entry { return one[*raftpb.Entry](r, tableEntries, id) }

// EntriesByParent returns the entries whose parent is parentID.
func (r *Reader) EntriesByParent(parentID string) []*raftpb.Entry {
	return all[*raftpb.Entry](r, tableEntries, "parent", parentID)
}

// Node returns an attested node, or nil.
func (r *Reader) Node(spiffeID string) *raftpb.Node {
	return one[*raftpb.Node](r, tableNodes, spiffeID)
}

// Nodes returns every attested node.
func (r *Reader) Nodes() []*raftpb.Node { return all[*raftpb.Node](r, tableNodes, "id") }

// JoinToken returns the token with this SHA-256, or nil.
func (r *Reader) JoinToken(hash []byte) *raftpb.JoinToken {
	return one[*raftpb.JoinToken](r, tableTokens, keyOf(hash))
}

// Revoked reports whether issuer revoked serial.
func (r *Reader) Revoked(issuerID string, serial []byte) bool {
	return first(r.txn, tableRevocations, "id", revocationKey(issuerID, serial)) != nil
}

// MaybeRevoked reports whether any issuer revoked serial: false means
// the certificate is not revoked; true calls for Revoked with its issuer.
func (r *Reader) MaybeRevoked(serial []byte) bool {
	return first(r.txn, tableRevocations, "serial", serialKey(serial)) != nil
}

// Revocations returns every revocation, by issuer then serial.
func (r *Reader) Revocations() []*raftpb.Revocation {
	return all[*raftpb.Revocation](r, tableRevocations, "id")
}

// LatestPolicy returns the newest policy revision, or nil.
func (r *Reader) LatestPolicy() *raftpb.Policy {
	it, err := r.txn.GetReverse(tablePolicies, "id")
	if err != nil {
		panic(fmt.Sprintf("raftfsm: read policies: %v", err))
	}
	p, _ := it.Next().(*raftpb.Policy)
	return p
}

// Policy returns one policy revision, or nil.
func (r *Reader) Policy(revision uint64) *raftpb.Policy {
	return one[*raftpb.Policy](r, tablePolicies, policyKey(revision))
}

// LedgerRecord returns the record of a serial, or nil.
func (r *Reader) LedgerRecord(serial []byte) *raftpb.LedgerRecord {
	e, ok := r.ledger.lookup(serial)
	if !ok {
		return nil
	}
	return r.inBlock(e.block, string(serial))
}

func (r *Reader) inBlock(block uint64, serial string) *raftpb.LedgerRecord {
	b := one[*raftpb.LedgerBlock](r, tableLedger, blockKey(block))
	if b == nil {
		return nil
	}
	for _, rec := range b.Records {
		if string(rec.Serial) == serial {
			return rec
		}
	}
	return nil
}

// LedgerBySPIFFEID returns the records of certificates issued to an ID, by serial.
func (r *Reader) LedgerBySPIFFEID(id string) []*raftpb.LedgerRecord {
	return r.resolve(serials(r.ledger, r.ledger.bySPIFFE, id))
}

// LedgerByNode returns the records of certificates issued through a node, by serial.
func (r *Reader) LedgerByNode(nodeID string) []*raftpb.LedgerRecord {
	return r.resolve(serials(r.ledger, r.ledger.byNode, nodeID))
}

// resolve looks serials up in this view, skipping those it does not hold,
// in the order given. Each block is read once, however many of the
// serials it holds (a group commit holds thousands).
func (r *Reader) resolve(serials []string) []*raftpb.LedgerRecord {
	if len(serials) == 1 {
		if e, ok := r.ledger.lookup([]byte(serials[0])); ok {
			if rec := r.inBlock(e.block, serials[0]); rec != nil {
				return []*raftpb.LedgerRecord{rec}
			}
		}
		return nil
	}
	byBlock := map[uint64]map[string]*raftpb.LedgerRecord{}
	for _, s := range serials {
		if e, ok := r.ledger.lookup([]byte(s)); ok {
			if byBlock[e.block] == nil {
				byBlock[e.block] = map[string]*raftpb.LedgerRecord{}
			}
			byBlock[e.block][s] = nil
		}
	}
	for idx, want := range byBlock {
		b := one[*raftpb.LedgerBlock](r, tableLedger, blockKey(idx))
		if b == nil {
			continue
		}
		for _, rec := range b.Records {
			if _, ok := want[string(rec.Serial)]; ok {
				want[string(rec.Serial)] = rec
			}
		}
	}
	out := make([]*raftpb.LedgerRecord, 0, len(serials))
	for _, s := range serials {
		if e, ok := r.ledger.lookup([]byte(s)); ok {
			if rec := byBlock[e.block][s]; rec != nil {
				out = append(out, rec)
			}
		}
	}
	return out
}

// LedgerLen counts the ledger's records. It walks the blocks.
func (r *Reader) LedgerLen() int {
	n := 0
	for _, b := range all[*raftpb.LedgerBlock](r, tableLedger, "id") {
		n += len(b.Records)
	}
	return n
}

// JWTKeys returns the JWT-SVID signing keys, by key ID.
func (r *Reader) JWTKeys() []*raftpb.JWTKey { return all[*raftpb.JWTKey](r, tableJWTKeys, "id") }

// JoinTokensWithHashPrefix returns the join tokens whose SHA-256, in
// lowercase hex, starts with hexPrefix (the join_token agent ID holds the
// first 32 hex digits of its token's hash).
func (r *Reader) JoinTokensWithHashPrefix(hexPrefix string) []*raftpb.JoinToken {
	return all[*raftpb.JoinToken](r, tableTokens, "id_prefix", hexPrefix)
}

// CRL returns an authority's current CRL, or nil.
func (r *Reader) CRL(authorityID string) *raftpb.CRL {
	return one[*raftpb.CRL](r, tableCRLs, authorityID)
}

// CRLs returns every authority's current CRL, by authority ID.
func (r *Reader) CRLs() []*raftpb.CRL { return all[*raftpb.CRL](r, tableCRLs, "id") }
