package raftfsm

import (
	"testing"

	"github.com/meshca/meshca/proto/raftpb"
)

// The export reads blocks in Raft order from its cursor, in batches of
// whole blocks, and sees how far it lags.
func TestLedgerBlocksAfter(t *testing.T) {
	a := newApplier(t)
	a.mustApply(ledger("a", "b", "c")) // index 1
	a.mustApply(ledger("d"))           // index 2
	a.mustApply(ledger("e", "f"))      // index 3
	rd := a.f.Read()
	if got := rd.LedgerBlocksAfter(0, 4); len(got) != 2 || got[0].Index != 1 || got[1].Index != 2 {
		t.Fatalf("after 0, at most 4: %v", got)
	}
	if got := rd.LedgerBlocksAfter(0, 1); len(got) != 1 || len(got[0].Records) != 3 {
		t.Fatalf("a block larger than the batch still comes whole: %v", got)
	}
	if got := rd.LedgerBlocksAfter(2, 100); len(got) != 1 || got[0].Index != 3 {
		t.Fatalf("after 2: %v", got)
	}
	if got := rd.LedgerBlocksAfter(3, 100); len(got) != 0 {
		t.Fatalf("after the last: %v", got)
	}
	if n, oldest := rd.LedgerAfter(1); n != 3 || oldest != 100 {
		t.Fatalf("lag after 1: %d records, oldest %d", n, oldest)
	}
	if n, _ := rd.LedgerAfter(3); n != 0 {
		t.Fatalf("lag after 3: %d", n)
	}
}

// Pruning holds the blocks the export has not taken, up to the hold's
// bound, and prunes exported blocks as before.
func TestPruneHoldsUnexported(t *testing.T) {
	a := newApplier(t)
	a.mustApply(ledger("a", "b")) // index 1: expire 1000, 1001
	a.mustApply(ledger("c", "d")) // index 2: expire 1000, 1001
	prune := func(op *raftpb.PruneLedger) uint64 {
		return a.mustApply(&raftpb.Command{Op: &raftpb.Command_PruneLedger{PruneLedger: op}}).Value
	}
	// Exported up to 1: block 1 pruned, block 2 held (bound far in the past).
	if n := prune(&raftpb.PruneLedger{ExpiredBeforeUnix: 2000, HoldUnexported: true, ExportedIndex: 1, UnexportedExpiredBeforeUnix: 500}); n != 2 {
		t.Fatalf("pruned %d, want 2 (block 1)", n)
	}
	rd := a.f.Read()
	if rd.LedgerRecord([]byte("a")) != nil || rd.LedgerRecord([]byte("c")) == nil || rd.LedgerLen() != 2 {
		t.Fatal("hold kept the wrong records")
	}
	if n := rd.LedgerExpiredAfter(1, 1001); n != 1 {
		t.Fatalf("%d held records expired before 1001, want 1", n)
	}
	// The hold's bound passed for c (expired 1000) but not d (1001).
	if n := prune(&raftpb.PruneLedger{ExpiredBeforeUnix: 2000, HoldUnexported: true, ExportedIndex: 1, UnexportedExpiredBeforeUnix: 1001}); n != 1 {
		t.Fatalf("pruned %d past the bound, want 1", n)
	}
	if a.f.Read().LedgerRecord([]byte("d")) == nil {
		t.Fatal("d pruned before its bound")
	}
	// Exported: pruned.
	if n := prune(&raftpb.PruneLedger{ExpiredBeforeUnix: 2000, HoldUnexported: true, ExportedIndex: 2, UnexportedExpiredBeforeUnix: 0}); n != 1 || a.f.Read().LedgerLen() != 0 {
		t.Fatalf("pruned %d once exported", n)
	}
}
