package agent

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
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

// Renewal counts from the certificate's issue (NotBefore without the
// backdating), not from its arrival: an SVID that arrives 13 hours after it
// was issued (a clock that moved while the request was in flight) is due
// at once, not 5.5 hours later; one from a server whose clock runs ahead
// counts from its arrival.
func TestRenewalCountsFromIssue(t *testing.T) {
	issued := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	notBefore, notAfter := issued.Add(-ca.Backdate), issued.Add(24*time.Hour)
	arrived := issued.Add(13 * time.Hour)
	if got := issuedAt(arrived, notBefore); !got.Equal(issued) {
		t.Fatalf("issuedAt(arrival 13h late) = %s, want %s", got, issued)
	}
	if at := renewTime(issuedAt(arrived, notBefore), notAfter, 0.5); at.After(arrived) {
		t.Errorf("an SVID past half its life on arrival is due at %s, %s after it arrived", at, at.Sub(arrived))
	}
	early := issued.Add(-5 * time.Minute) // the agent's clock is behind the server's
	if got := issuedAt(early, notBefore); !got.Equal(early) {
		t.Errorf("issuedAt(before the issue) = %s, want the arrival %s", got, early)
	}
	if at := renewTime(notAfter.Add(time.Hour), notAfter, 0.5); at.After(notAfter) {
		t.Errorf("an SVID that arrived expired is due at %s, after it expired", at)
	}
}

// What is due: entries with no SVID, with a newer revision, or past renewal.
func TestStoreDue(t *testing.T) {
	s := newStore()
	now := time.Now()
	s.apply(entriesUpdate(entry("fresh", 1, "unix:uid:1"), entry("renew", 1, "unix:uid:1"), entry("changed", 2, "unix:uid:1"), entry("new", 1, "unix:uid:1")))
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
	s.apply(&nodepb.SyncUpdate{Removed: []string{"entry/renew", "entry/changed", "entry/new"}})
	if len(s.svids) != 1 {
		t.Errorf("%d SVIDs kept, want only the remaining entry's", len(s.svids))
	}
}

// The default order of a workload's SVIDs: ECDSA before SM2, then by SPIFFE
// ID, then oldest entry first, then by entry ID, whatever the map order.
func TestDefaultSVIDOrder(t *testing.T) {
	mk := func(id, profile, spiffeID string, created int64) *nodepb.Entry {
		return &nodepb.Entry{Id: id, Profile: profile, SpiffeId: "spiffe://example.org/" + spiffeID, CreatedUnixNano: created, Revision: 1,
			Selectors: []*nodepb.Selector{{Type: "unix", Value: "uid:1"}}}
	}
	entries := []*nodepb.Entry{
		mk("f0", "sm2", "a", 1),
		mk("e0", "ecdsa", "b", 5),
		mk("d0", "ecdsa", "b", 2),
		mk("c1", "ecdsa", "c", 7),
		mk("c0", "ecdsa", "c", 7),
		mk("a9", "ecdsa", "a", 9),
		mk("b0", "sm2", "0", 0),
	}
	want := []string{"a9", "d0", "e0", "c0", "c1", "b0", "f0"}
	now := time.Now()
	for round := 0; round < 20; round++ { // map order varies from round to round
		s := newStore()
		s.apply(entriesUpdate(entries...))
		for _, e := range entries {
			s.svids[e.Id] = &svid{entry: e, notAfter: now.Add(time.Hour)}
		}
		m := s.matching(map[string]bool{"unix:uid:1": true}, map[string]bool{"ecdsa": true, "sm2": true}, now)
		var got []string
		for _, v := range m.svids {
			got = append(got, v.entry.Id)
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("round %d: order %v, want %v", round, got, want)
		}
		var jwt []string
		for _, e := range s.matchingEntries(map[string]bool{"unix:uid:1": true}) {
			jwt = append(jwt, e.Id)
		}
		if strings.Join(jwt, " ") != strings.Join(want, " ") {
			t.Fatalf("round %d: JWT entry order %v, want %v", round, jwt, want)
		}
	}
}

// A client that asks for ECDSA only never gets, nor waits for, SM2 SVIDs;
// the SM2 entries it matches are named so that it can be told why.
func TestMatchingFiltersProfiles(t *testing.T) {
	now := time.Now()
	s := newStore()
	ec, sm := entry("ec", 1, "unix:uid:1"), entry("sm", 1, "unix:uid:1")
	sm.Profile = "sm2"
	s.apply(entriesUpdate(ec, sm))
	sel := map[string]bool{"unix:uid:1": true}
	ecdsaOnly := map[string]bool{"ecdsa": true}

	// The SM2 SVID alone is there: the ECDSA client waits for its own.
	s.svids["sm"] = &svid{entry: sm, notAfter: now.Add(time.Hour)}
	if m := s.matching(sel, ecdsaOnly, now); m.complete || !m.matched || len(m.svids) != 0 {
		t.Fatalf("ECDSA client with only the SM2 SVID issued: %+v, want incomplete, matched, no SVID", m)
	}
	s.svids["ec"] = &svid{entry: ec, notAfter: now.Add(time.Hour)}
	m := s.matching(sel, ecdsaOnly, now)
	if !m.complete || !m.matched || len(m.svids) != 1 || m.svids[0].entry.Id != "ec" {
		t.Fatalf("ECDSA client: %+v, want the ECDSA SVID only", m)
	}
	if m := s.matching(sel, map[string]bool{"sm2": true}, now); len(m.svids) != 1 || m.svids[0].entry.Id != "sm" {
		t.Fatalf("SM2 client: %+v, want the SM2 SVID only", m)
	}

	// Only an SM2 entry matches: an ECDSA client matches nothing, and
	// learns that SM2 SVIDs exist for it.
	s.apply(&nodepb.SyncUpdate{Removed: []string{"entry/ec"}})
	m = s.matching(sel, ecdsaOnly, now)
	if m.matched || len(m.svids) != 0 || strings.Join(m.otherProfiles, ",") != "sm2" {
		t.Fatalf("ECDSA client with only an SM2 entry: %+v, want unmatched, other profiles [sm2]", m)
	}
}

func TestRequestedProfiles(t *testing.T) {
	for _, c := range []struct {
		name   string
		values []string
		want   string
		err    bool
	}{
		{name: "ok/none-means-ecdsa", want: "ecdsa"},
		{name: "ok/sm2", values: []string{"sm2"}, want: "sm2"},
		{name: "ok/both", values: []string{"sm2,ecdsa"}, want: "ecdsa,sm2"},
		{name: "ok/repeated-key", values: []string{"sm2", "ecdsa"}, want: "ecdsa,sm2"},
		{name: "ok/spaces", values: []string{" ecdsa , sm2 "}, want: "ecdsa,sm2"},
		{name: "fail/unknown", values: []string{"rsa"}, err: true},
		{name: "fail/empty", values: []string{""}, err: true},
		{name: "fail/trailing-comma", values: []string{"ecdsa,"}, err: true},
		{name: "fail/uppercase", values: []string{"SM2"}, err: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			md := metadata.MD{}
			for _, v := range c.values {
				md.Append(ProfilesMetadataKey, v)
			}
			got, err := requestedProfiles(metadata.NewIncomingContext(t.Context(), md))
			if c.err {
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), ProfilesMetadataKey) {
					t.Fatalf("requestedProfiles(%q) = %v, %v; want InvalidArgument naming %s", c.values, got, err, ProfilesMetadataKey)
				}
				return
			}
			if err != nil || strings.Join(sortedProfiles(got), ",") != c.want {
				t.Fatalf("requestedProfiles(%q) = %v, %v; want %s", c.values, got, err, c.want)
			}
		})
	}
}

// FuzzRequestedProfiles checks that the profiles metadata parser never
// panics, refuses with InvalidArgument only, and accepts only known
// profile names.
func FuzzRequestedProfiles(f *testing.F) {
	for _, s := range []string{"sm2", "ecdsa,sm2", " ecdsa , sm2 ", "", ",", "rsa", "SM2", "sm2,sm2", "ecdsa\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		md := metadata.MD{}
		md.Append(ProfilesMetadataKey, v)
		got, err := requestedProfiles(metadata.NewIncomingContext(t.Context(), md))
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("requestedProfiles(%q) = %v, not InvalidArgument", v, err)
			}
			return
		}
		if len(got) == 0 {
			t.Fatalf("requestedProfiles(%q) accepted no profile", v)
		}
		for p := range got {
			if p != "ecdsa" && p != "sm2" {
				t.Fatalf("requestedProfiles(%q) accepted profile %q", v, p)
			}
		}
	})
}

// entriesUpdate is a Sync update adding entries.
func entriesUpdate(es ...*nodepb.Entry) *nodepb.SyncUpdate {
	u := &nodepb.SyncUpdate{}
	for _, e := range es {
		u.Resources = append(u.Resources, &nodepb.Resource{Kind: "entry", Name: e.Id, Version: strconv.FormatUint(e.Revision, 10),
			Body: &nodepb.Resource_Entry{Entry: e}})
	}
	return u
}
