package agent

import (
	"testing"
	"time"

	"github.com/meshca/meshca/proto/nodepb"
)

func entry(id string, rev uint64, selectors ...string) *nodepb.Entry {
	e := &nodepb.Entry{Id: id, SpiffeId: "spiffe://example.org/" + id, Revision: rev, Profile: "ecdsa"}
	for _, s := range selectors {
		typ, val := s[:4], s[5:] // "unix:uid:1" -> unix, uid:1
		e.Selectors = append(e.Selectors, &nodepb.Selector{Type: typ, Value: val})
	}
	return e
}

// An entry matches a workload only if every one of its selectors does.
func TestEntryMatchesAllSelectors(t *testing.T) {
	sel := map[string]bool{"unix:uid:1000": true, "unix:gid:50": true}
	for _, c := range []struct {
		e    *nodepb.Entry
		want bool
	}{
		{entry("a", 1, "unix:uid:1000"), true},
		{entry("b", 1, "unix:uid:1000", "unix:gid:50"), true},
		{entry("c", 1, "unix:uid:1000", "unix:gid:51"), false},
		{entry("d", 1, "unix:uid:0"), false},
		{entry("e", 1), false}, // no selectors never matches
	} {
		if got := entryMatches(c.e, sel); got != c.want {
			t.Errorf("entry %s: match %v, want %v", c.e.Id, got, c.want)
		}
	}
}

// Renewal comes at the configured fraction of the lifetime left at issuance,
// less at most a tenth of that interval: never in the past, never late.
func TestRenewTime(t *testing.T) {
	issued := time.Now()
	notAfter := issued.Add(time.Hour)
	for i := 0; i < 1000; i++ {
		at := renewTime(issued, notAfter, 0.5)
		if at.Before(issued.Add(27*time.Minute)) || at.After(issued.Add(30*time.Minute)) {
			t.Fatalf("renewal at %s after issuance, want 27m to 30m", at.Sub(issued))
		}
	}
	if at := renewTime(issued, issued.Add(time.Minute), 0.1); !at.After(issued) {
		t.Error("a short SVID is due at once")
	}
}

// What is due: entries with no SVID, with a newer revision, or past renewal.
func TestStoreDue(t *testing.T) {
	s := newStore()
	now := time.Now()
	s.setEntries([]*nodepb.Entry{entry("fresh", 1, "unix:uid:1"), entry("renew", 1, "unix:uid:1"), entry("changed", 2, "unix:uid:1"), entry("new", 1, "unix:uid:1")}, nil)
	s.svids["fresh"] = &svid{entry: entry("fresh", 1), notAfter: now.Add(time.Hour), renewAt: now.Add(30 * time.Minute)}
	s.svids["renew"] = &svid{entry: entry("renew", 1), notAfter: now.Add(time.Hour), renewAt: now.Add(-time.Second)}
	s.svids["changed"] = &svid{entry: entry("changed", 1), notAfter: now.Add(time.Hour), renewAt: now.Add(30 * time.Minute)}
	due, next := s.due(now)
	var ids []string
	for _, e := range due {
		ids = append(ids, e.Id)
	}
	if len(ids) != 3 || ids[0] != "changed" || ids[1] != "new" || ids[2] != "renew" {
		t.Errorf("due %v, want [changed new renew]", ids)
	}
	if !next.Equal(now.Add(30 * time.Minute)) {
		t.Errorf("next renewal %s, want the fresh SVID's", next)
	}
	// Entries that go away take their SVIDs with them.
	s.setEntries([]*nodepb.Entry{entry("fresh", 1, "unix:uid:1")}, nil)
	if len(s.svids) != 1 {
		t.Errorf("%d SVIDs kept, want only the remaining entry's", len(s.svids))
	}
}
