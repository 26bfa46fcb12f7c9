package raftfsm

import (
	"slices"
	"sync"

	"github.com/hashicorp/go-memdb"
	"github.com/meshca/meshca/proto/raftpb"
)

// ledgerIndex holds the ledger's secondary indexes: by SPIFFE ID, by node
// and by expiry hour. They are derived data, kept beside the MVCC tables
// rather than in them, so that recording a certificate costs one radix
// insert instead of four; snapshots do not carry them and Restore rebuilds
// them. A Reader resolves the serials they give in its own consistent view,
// so a lookup never returns a record its view does not hold.
type ledgerIndex struct {
	mu       sync.RWMutex
	bySPIFFE map[string]map[string]struct{}
	byNode   map[string]map[string]struct{}
	byExpiry map[int64]map[string]struct{} // NotAfter / 3600 -> serial keys
}

func newLedgerIndex() *ledgerIndex {
	return &ledgerIndex{bySPIFFE: map[string]map[string]struct{}{}, byNode: map[string]map[string]struct{}{}, byExpiry: map[int64]map[string]struct{}{}}
}

func expiryHour(r *raftpb.LedgerRecord) int64 { return r.NotAfterUnix / 3600 }

func addTo[K comparable](m map[K]map[string]struct{}, k K, serial string) {
	s, ok := m[k]
	if !ok {
		s = map[string]struct{}{}
		m[k] = s
	}
	s[serial] = struct{}{}
}

func removeFrom[K comparable](m map[K]map[string]struct{}, k K, serial string) {
	if s, ok := m[k]; ok {
		delete(s, serial)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

func (x *ledgerIndex) add(r *raftpb.LedgerRecord) {
	k := serialKey(r.Serial)
	x.mu.Lock()
	addTo(x.bySPIFFE, r.SpiffeId, k)
	if r.NodeId != "" {
		addTo(x.byNode, r.NodeId, k)
	}
	addTo(x.byExpiry, expiryHour(r), k)
	x.mu.Unlock()
}

func (x *ledgerIndex) remove(r *raftpb.LedgerRecord) {
	k := serialKey(r.Serial)
	x.mu.Lock()
	removeFrom(x.bySPIFFE, r.SpiffeId, k)
	removeFrom(x.byNode, r.NodeId, k)
	removeFrom(x.byExpiry, expiryHour(r), k)
	x.mu.Unlock()
}

// serials returns the sorted serial keys under key in m.
func serials[K comparable](x *ledgerIndex, m map[K]map[string]struct{}, key K) []string {
	x.mu.RLock()
	out := make([]string, 0, len(m[key]))
	for k := range m[key] {
		out = append(out, k)
	}
	x.mu.RUnlock()
	slices.Sort(out)
	return out
}

// expiringBefore returns the serial keys in the expiry hours up to and
// including the hour of before (callers check the exact time).
func (x *ledgerIndex) expiringBefore(before int64) []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []string
	for h, s := range x.byExpiry {
		if h <= before/3600 {
			for k := range s {
				out = append(out, k)
			}
		}
	}
	slices.Sort(out)
	return out
}

// rebuild replaces the indexes with those of db's ledger.
func (x *ledgerIndex) rebuild(db *memdb.MemDB) {
	n := newLedgerIndex()
	it, err := db.Txn(false).Get(tableLedger, "id")
	if err != nil {
		panic("raftfsm: read ledger: " + err.Error())
	}
	for obj := it.Next(); obj != nil; obj = it.Next() {
		n.add(obj.(*raftpb.LedgerRecord))
	}
	x.mu.Lock()
	x.bySPIFFE, x.byNode, x.byExpiry = n.bySPIFFE, n.byNode, n.byExpiry
	x.mu.Unlock()
}
