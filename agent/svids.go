package agent

import (
	"context"
	"crypto"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
)

// maxBatch bounds the CSRs the agent sends in one SignX509SVIDs call.
const maxBatch = 256

// svid is a workload X509-SVID held in memory, with its private key.
type svid struct {
	entry     *nodepb.Entry
	keyDER    []byte   // PKCS#8
	chain     [][]byte // leaf first
	notBefore time.Time
	notAfter  time.Time
	renewAt   time.Time
}

// store holds the node's entries (from Sync) and their SVIDs. Watchers
// learn of changes through changed(), closed and replaced on each change.
type store struct {
	mu      sync.Mutex
	entries map[string]*nodepb.Entry
	svids   map[string]*svid
	bundle  *nodepb.Bundle
	ch      chan struct{}
}

func newStore() *store {
	return &store{entries: map[string]*nodepb.Entry{}, svids: map[string]*svid{}, ch: make(chan struct{})}
}

func (s *store) changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (s *store) notifyLocked() {
	close(s.ch)
	s.ch = make(chan struct{})
}

// setEntries installs the entries of a Sync update, dropping the SVIDs of
// entries that are gone.
func (s *store) setEntries(entries []*nodepb.Entry, bundle *nodepb.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = map[string]*nodepb.Entry{}
	for _, e := range entries {
		s.entries[e.Id] = e
	}
	for id := range s.svids {
		if _, ok := s.entries[id]; !ok {
			delete(s.svids, id)
		}
	}
	s.bundle = bundle
	s.notifyLocked()
}

// due returns the entries that need a (new) SVID at now, and the earliest
// time another one will.
func (s *store) due(now time.Time) (due []*nodepb.Entry, next time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, e := range s.entries {
		v, ok := s.svids[id]
		switch {
		case !ok || v.entry.Revision != e.Revision || !now.Before(v.renewAt):
			due = append(due, e)
		case next.IsZero() || v.renewAt.Before(next):
			next = v.renewAt
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].Id < due[j].Id })
	return due, next
}

func (s *store) put(v *svid) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[v.entry.Id]; !ok || e.Revision != v.entry.Revision {
		return // the entry changed or went away meanwhile
	}
	s.svids[v.entry.Id] = v
	s.notifyLocked()
}

// matching returns the SVIDs, valid at now, of the entries whose selectors
// are all in sel, whether every matching entry has one yet, and the bundle.
func (s *store) matching(sel map[string]bool, now time.Time) (out []*svid, complete, matched bool, bundle *nodepb.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	complete = true
	ids := make([]string, 0, len(s.entries))
	for id := range s.entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		e := s.entries[id]
		if !entryMatches(e, sel) {
			continue
		}
		matched = true
		v, ok := s.svids[id]
		if !ok || !now.Before(v.notAfter) {
			complete = false
			continue
		}
		out = append(out, v)
	}
	return out, complete, matched, s.bundle
}

func entryMatches(e *nodepb.Entry, sel map[string]bool) bool {
	for _, s := range e.Selectors {
		if !sel[s.Type+":"+s.Value] {
			return false
		}
	}
	return len(e.Selectors) > 0
}

// renewTime spreads renewals: after the configured fraction of the
// lifetime left at issuance (NotBefore is backdated, so it is not counted),
// minus up to a tenth of that interval at random, so that a fleet's SVIDs
// do not all come due at once.
func renewTime(issued, notAfter time.Time, fraction float64) time.Time {
	interval := time.Duration(float64(notAfter.Sub(issued)) * fraction)
	return issued.Add(interval - time.Duration(rand.Int64N(int64(interval)/10+1)))
}

// signDue has the server sign every due entry, in batches. Entries refused
// are retried at the next round.
func (a *Agent) signDue(ctx context.Context, client nodepb.NodeClient, due []*nodepb.Entry) error {
	for len(due) > 0 {
		batch := due[:min(len(due), maxBatch)]
		due = due[len(batch):]
		keys := map[string]crypto.Signer{}
		req := &nodepb.SignX509SVIDsRequest{}
		for _, e := range batch {
			p, err := ca.ProfileByName(e.Profile)
			if err != nil {
				a.log.Warn("entry with an unknown profile", "entry", e.Id, "profile", e.Profile)
				continue
			}
			key, err := p.GenerateKey()
			if err != nil {
				return err
			}
			csr, err := p.CreateCSR(key)
			if err != nil {
				return err
			}
			keys[e.Id] = key
			req.Requests = append(req.Requests, &nodepb.SVIDRequest{EntryId: e.Id, Csr: csr})
		}
		var resp *nodepb.SignX509SVIDsResponse
		if err := callServer(ctx, func(ctx context.Context) error {
			var err error
			resp, err = client.SignX509SVIDs(ctx, req)
			return err
		}); err != nil {
			return err
		}
		byID := map[string]*nodepb.Entry{}
		for _, e := range batch {
			byID[e.Id] = e
		}
		for _, r := range resp.Results {
			e := byID[r.EntryId]
			if e == nil {
				continue
			}
			if r.Error != "" || len(r.Chain) == 0 {
				a.log.Warn("server refused an SVID", "entry", r.EntryId, "spiffe_id", e.SpiffeId, "error", r.Error)
				continue
			}
			v, err := a.newSVID(e, keys[e.Id], r.Chain)
			if err != nil {
				a.log.Warn("server returned an unusable SVID", "entry", e.Id, "error", err)
				continue
			}
			a.store.put(v)
		}
	}
	return nil
}

func (a *Agent) newSVID(e *nodepb.Entry, key crypto.Signer, chain [][]byte) (*svid, error) {
	p, err := ca.ProfileByName(e.Profile)
	if err != nil {
		return nil, err
	}
	leaf, err := p.ParseCertificate(chain[0])
	if err != nil {
		return nil, err
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0] != e.SpiffeId {
		return nil, errUnexpectedID
	}
	keyDER, err := p.MarshalPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &svid{entry: e, keyDER: keyDER, chain: chain, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter,
		renewAt: renewTime(a.cfg.Clock.Now(), leaf.NotAfter, a.cfg.RenewFraction)}, nil
}

type agentError string

func (e agentError) Error() string { return string(e) }

const errUnexpectedID = agentError("agent: the SVID does not carry the entry's SPIFFE ID")

// matchingEntries returns the entries whose selectors are all in sel.
func (s *store) matchingEntries(sel map[string]bool) []*nodepb.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*nodepb.Entry
	for _, e := range s.entries {
		if entryMatches(e, sel) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}
