package raftfsm

import (
	"fmt"
	"strings"
	"testing"

	"github.com/meshca/meshca/proto/raftpb"
)

func batchEntry(id, parent string) *raftpb.Entry {
	return &raftpb.Entry{Id: id, ParentId: parent, SpiffeId: "spiffe://td/w/" + id,
		Selectors: []*raftpb.Selector{{Type: "unix", Value: "uid:1"}}}
}

func putEntriesCmd(es ...*raftpb.Entry) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PutEntries{PutEntries: &raftpb.PutEntries{Entries: es}}}
}

// PutEntries creates a whole batch at revision 1, wakes the streams of
// every parent it concerns, and creates nothing when one entry is refused.
func TestPutEntries(t *testing.T) {
	a := newApplier(t)
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutEntry{PutEntry: &raftpb.PutEntry{Entry: batchEntry("e0", "spiffe://td/agent/a")}}})
	wakeA, wakeB, wakeC := a.f.Watch(ScopeNode("spiffe://td/agent/a")), a.f.Watch(ScopeNode("spiffe://td/agent/b")), a.f.Watch(ScopeNode("spiffe://td/agent/c"))
	a.mustApply(putEntriesCmd(batchEntry("e1", "spiffe://td/agent/a"), batchEntry("e2", "spiffe://td/agent/b")))
	for _, id := range []string{"e1", "e2"} {
		if e := a.f.Read().Entry(id); e == nil || e.Revision != 1 {
			t.Fatalf("entry %s after the batch: %v", id, e)
		}
	}
	for name, ch := range map[string]<-chan struct{}{"a": wakeA, "b": wakeB} {
		select {
		case <-ch:
		default:
			t.Errorf("the stream of agent %s was not woken", name)
		}
	}
	select {
	case <-wakeC:
		t.Error("the stream of agent c was woken by entries of others")
	default:
	}

	before := len(a.f.Read().Entries())
	for name, tc := range map[string]struct {
		es   []*raftpb.Entry
		code raftpb.ErrorCode
		msg  string
	}{
		"existing ID": {[]*raftpb.Entry{batchEntry("n1", "p"), batchEntry("e1", "p")}, raftpb.ErrorCode_ALREADY_EXISTS, "entry 1 of the batch"},
		"repeated ID": {[]*raftpb.Entry{batchEntry("n1", "p"), batchEntry("n1", "p")}, raftpb.ErrorCode_INVALID, "entry 1 of the batch repeats"},
		"no parent":   {[]*raftpb.Entry{batchEntry("n1", "p"), batchEntry("n2", "")}, raftpb.ErrorCode_INVALID, "entry 1 of the batch needs"},
		"empty":       {nil, raftpb.ErrorCode_INVALID, "at least one"},
		"too many":    {manyEntries(MaxBatchEntries + 1), raftpb.ErrorCode_INVALID, "at most"},
	} {
		r := a.apply(putEntriesCmd(tc.es...))
		if r.Code != tc.code || !strings.Contains(r.Message, tc.msg) {
			t.Errorf("%s: %v, want %s %q", name, r, tc.code, tc.msg)
		}
	}
	if n := len(a.f.Read().Entries()); n != before || a.f.Read().Entry("n1") != nil {
		t.Fatalf("refused batches changed the entries: %d, want %d", n, before)
	}
}

func manyEntries(n int) []*raftpb.Entry {
	var out []*raftpb.Entry
	for i := range n {
		out = append(out, batchEntry(fmt.Sprint("m", i), "p"))
	}
	return out
}
