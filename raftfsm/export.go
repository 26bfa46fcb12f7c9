package raftfsm

import (
	"github.com/meshca/meshca/proto/raftpb"
)

// The history export (issue 15) reads the ledger in Raft order, block after
// block from its cursor, and holds back pruning of what it has not taken.

// pruneCutoff is the expiry before which PruneLedger drops the records of
// block idx: the command's cutoff, or, for a block not yet exported while
// the export holds them, the earlier bound of that hold.
func pruneCutoff(op *raftpb.PruneLedger, idx uint64) int64 {
	cut := op.GetExpiredBeforeUnix()
	if op.GetHoldUnexported() && idx > op.GetExportedIndex() {
		cut = min(cut, op.GetUnexportedExpiredBeforeUnix())
	}
	return cut
}

// LedgerBlocksAfter returns, in increasing index order, the ledger blocks
// after index whose records add up to at most maxRecords (but at least one
// block, if there is one after index).
func (r *Reader) LedgerBlocksAfter(index uint64, maxRecords int) []*raftpb.LedgerBlock {
	it, err := r.txn.LowerBound(tableLedger, "id", blockKey(index+1))
	if err != nil {
		panic("raftfsm: read ledger: " + err.Error())
	}
	var out []*raftpb.LedgerBlock
	n := 0
	for obj := it.Next(); obj != nil; obj = it.Next() {
		b := obj.(*raftpb.LedgerBlock)
		if len(out) > 0 && n+len(b.Records) > maxRecords {
			break
		}
		out = append(out, b)
		n += len(b.Records)
	}
	return out
}

// LedgerAfter counts the records in the ledger blocks after index, and
// returns the earliest not-before among those of the first such block (zero
// if there is none): how far an export with that cursor lags.
func (r *Reader) LedgerAfter(index uint64) (records int, oldestNotBeforeUnix int64) {
	it, err := r.txn.LowerBound(tableLedger, "id", blockKey(index+1))
	if err != nil {
		panic("raftfsm: read ledger: " + err.Error())
	}
	for obj := it.Next(); obj != nil; obj = it.Next() {
		b := obj.(*raftpb.LedgerBlock)
		if records == 0 {
			for _, rec := range b.Records {
				if oldestNotBeforeUnix == 0 || rec.NotBeforeUnix < oldestNotBeforeUnix {
					oldestNotBeforeUnix = rec.NotBeforeUnix
				}
			}
		}
		records += len(b.Records)
	}
	return records, oldestNotBeforeUnix
}

// LedgerExpiredAfter counts the records in the blocks after index that
// expired before beforeUnix: those a PruneLedger bounded at beforeUnix
// drops although the export has not taken them.
func (r *Reader) LedgerExpiredAfter(index uint64, beforeUnix int64) int {
	it, err := r.txn.LowerBound(tableLedger, "id", blockKey(index+1))
	if err != nil {
		panic("raftfsm: read ledger: " + err.Error())
	}
	n := 0
	for obj := it.Next(); obj != nil; obj = it.Next() {
		for _, rec := range obj.(*raftpb.LedgerBlock).Records {
			if rec.NotAfterUnix < beforeUnix {
				n++
			}
		}
	}
	return n
}
