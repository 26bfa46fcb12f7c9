package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"google.golang.org/protobuf/proto"
)

// issue 12: identity as policy. When the issuance policy derives
// identities from workload selectors, the Sync stream says from which
// selector types (an identity_policy resource). A workload that matches no
// entry but has selectors of those types gets a derived entry on this
// agent, "policy:<digest of those selectors>", with no SPIFFE ID yet: the
// agent asks the servers for its SVID with the selectors, the policy
// decides and names the identity, and the agent learns it from the
// certificate. A refusal drops the derived entry (the workload gets
// nothing) and is not asked again for derivedRetry.

// policyEntryPrefix marks a derived entry's ID (server.PolicyEntryPrefix).
const policyEntryPrefix = "policy:"

// derivedRetry is how long a refused derived identity is not asked again.
const derivedRetry = time.Minute

func isDerived(e *nodepb.Entry) bool { return strings.HasPrefix(e.Id, policyEntryPrefix) }

// deriveLocked returns the derived entry of a workload with selectors sel
// that matches no entry, creating it, or nil when the policy derives no
// identity for it. s.mu is held.
func (s *store) deriveLocked(sel map[string]bool) *nodepb.Entry {
	if len(s.identityTypes) == 0 {
		return nil
	}
	var sels []*nodepb.Selector
	for k := range sel {
		typ, val, ok := strings.Cut(k, ":")
		if ok && s.identityTypes[typ] {
			sels = append(sels, &nodepb.Selector{Type: typ, Value: val})
		}
	}
	if len(sels) == 0 {
		return nil
	}
	sort.Slice(sels, func(i, j int) bool {
		return sels[i].Type+":"+sels[i].Value < sels[j].Type+":"+sels[j].Value
	})
	h := sha256.New()
	for _, x := range sels {
		h.Write([]byte(x.Type + ":" + x.Value + "\n"))
	}
	id := policyEntryPrefix + hex.EncodeToString(h.Sum(nil)[:12])
	if e, ok := s.entries[id]; ok {
		return e
	}
	if until, ok := s.derivedDenied[id]; ok && s.now().Before(until) {
		return nil
	}
	e := &nodepb.Entry{Id: id, Selectors: sels, Profile: ca.ProfileECDSA, Revision: 1}
	s.entries[id] = e
	if s.wakeSigner != nil {
		s.wakeSigner()
	}
	return e
}

// denyDerived drops a derived entry the servers refused, for derivedRetry.
func (s *store) denyDerived(id string) {
	s.mu.Lock()
	if _, ok := s.entries[id]; !ok {
		s.mu.Unlock()
		return
	}
	delete(s.entries, id)
	delete(s.svids, id)
	s.derivedDenied[id] = s.now().Add(derivedRetry)
	s.notifyLocked()
	notify := s.topics
	s.mu.Unlock()
	if notify != nil {
		notify(sdsTopicEntries, sdsTopicSVID(id))
	}
}

// setIdentityTypes records the selector types the policy derives from;
// none drops every derived entry. s.mu is held.
func (s *store) setIdentityTypesLocked(types []string) {
	s.identityTypes = map[string]bool{}
	for _, t := range types {
		s.identityTypes[t] = true
	}
	for id, e := range s.entries {
		if !isDerived(e) {
			continue
		}
		keep := len(types) > 0
		for _, sel := range e.Selectors {
			keep = keep && s.identityTypes[sel.Type]
		}
		if !keep {
			delete(s.entries, id)
			delete(s.svids, id)
		}
	}
	clear(s.derivedDenied)
}

// derivedEntry returns e with the SPIFFE ID its first SVID named.
func derivedEntry(e *nodepb.Entry, id string) *nodepb.Entry {
	c := proto.Clone(e).(*nodepb.Entry)
	c.SpiffeId = id
	return c
}
