package raftfsm

import (
	"slices"
	"sync"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// The ledger is stored as blocks: the records one AppendLedger command
// added, keyed by the index of its log entry, which is the same on every
// server. A group commit of hundreds of certificates is then one insert in
// the MVCC tables instead of hundreds. ledgerIndex finds records in the
// blocks: by serial (also how Apply detects a retried or colliding serial),
// SPIFFE ID, node and expiry hour. It is derived data, kept beside the MVCC
// tables and rebuilt on Restore; only Apply and Restore change it. A Reader
// resolves what it finds in its own consistent view, so a lookup never
// returns a record that view does not hold.
type ledgerIndex struct {
	mu       sync.RWMutex
	bySerial map[string]serialEntry
	bySPIFFE map[string]map[string]struct{}
	byNode   map[string]map[string]struct{}
	byIssuer map[string]map[string]struct{}
	byExpiry map[int64]map[uint64]struct{} // NotAfter / 3600 -> block indexes
}

type serialEntry struct {
	block     uint64
	requestID string
}

func newLedgerIndex() *ledgerIndex {
	return &ledgerIndex{bySerial: map[string]serialEntry{}, bySPIFFE: map[string]map[string]struct{}{},
		byNode: map[string]map[string]struct{}{}, byIssuer: map[string]map[string]struct{}{}, byExpiry: map[int64]map[uint64]struct{}{}}
}

func expiryHour(r *raftpb.LedgerRecord) int64 { return r.NotAfterUnix / 3600 }

func addTo[K, V comparable](m map[K]map[V]struct{}, k K, v V) {
	s, ok := m[k]
	if !ok {
		s = map[V]struct{}{}
		m[k] = s
	}
	s[v] = struct{}{}
}

func removeFrom[K, V comparable](m map[K]map[V]struct{}, k K, v V) {
	if s, ok := m[k]; ok {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

func (x *ledgerIndex) lookup(serial []byte) (serialEntry, bool) {
	x.mu.RLock()
	e, ok := x.bySerial[string(serial)]
	x.mu.RUnlock()
	return e, ok
}

func (x *ledgerIndex) addBlock(b *raftpb.LedgerBlock) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, r := range b.Records {
		k := string(r.Serial)
		x.bySerial[k] = serialEntry{block: b.Index, requestID: r.RequestId}
		addTo(x.bySPIFFE, r.SpiffeId, k)
		if r.NodeId != "" {
			addTo(x.byNode, r.NodeId, k)
		}
		if r.IssuerId != "" {
			addTo(x.byIssuer, r.IssuerId, k)
		}
		addTo(x.byExpiry, expiryHour(r), b.Index)
	}
}

func (x *ledgerIndex) removeRecord(r *raftpb.LedgerRecord) {
	k := string(r.Serial)
	x.mu.Lock()
	delete(x.bySerial, k)
	removeFrom(x.bySPIFFE, r.SpiffeId, k)
	removeFrom(x.byNode, r.NodeId, k)
	removeFrom(x.byIssuer, r.IssuerId, k)
	x.mu.Unlock()
}

// forgetExpiry drops a block from the expiry hours of the given records.
func (x *ledgerIndex) forgetExpiry(block uint64, records []*raftpb.LedgerRecord) {
	x.mu.Lock()
	for _, r := range records {
		removeFrom(x.byExpiry, expiryHour(r), block)
	}
	x.mu.Unlock()
}

// serials returns the sorted serials under key in m.
func serials(x *ledgerIndex, m map[string]map[string]struct{}, key string) []string {
	x.mu.RLock()
	out := make([]string, 0, len(m[key]))
	for k := range m[key] {
		out = append(out, k)
	}
	x.mu.RUnlock()
	slices.Sort(out)
	return out
}

// blocksExpiringBy returns, sorted, the blocks holding records that expire
// in the hour of before or earlier (callers check the exact time).
func (x *ledgerIndex) blocksExpiringBy(before int64) []uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	set := map[uint64]struct{}{}
	for h, blocks := range x.byExpiry {
		if h <= before/3600 {
			for b := range blocks {
				set[b] = struct{}{}
			}
		}
	}
	out := make([]uint64, 0, len(set))
	for b := range set {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

// rebuild replaces the index with that of db's ledger.
func (x *ledgerIndex) rebuild(db *memdb.MemDB) {
	n := newLedgerIndex()
	it, err := db.Txn(false).Get(tableLedger, "id")
	if err != nil {
		panic("raftfsm: read ledger: " + err.Error())
	}
	for obj := it.Next(); obj != nil; obj = it.Next() {
		n.addBlock(obj.(*raftpb.LedgerBlock))
	}
	x.mu.Lock()
	x.bySerial, x.bySPIFFE, x.byNode, x.byIssuer, x.byExpiry = n.bySerial, n.bySPIFFE, n.byNode, n.byIssuer, n.byExpiry
	x.mu.Unlock()
}
