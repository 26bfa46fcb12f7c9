package agent

import (
	"context"
	"crypto"
	"math/big"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
	serial    *big.Int
	// replacing is set once the SVID was found compromised (its renewal
	// moved forward).
	replacing bool
}

// store holds the node's entries (from Sync) and their SVIDs. Watchers
// learn of changes through changed(), closed and replaced on each change.
type store struct {
	mu      sync.Mutex
	entries map[string]*nodepb.Entry
	svids   map[string]*svid
	bundle  *nodepb.Bundle
	jwt     []*nodepb.JWTAuthority
	// crls are the CRLs of the trust domain's CAs, by authority ID, and
	// crlStates what the agent needs of them to find compromised SVIDs.
	crls      map[string]*nodepb.CRL
	crlStates map[string]*crlState
	// now and jitter time the re-issue of compromised SVIDs (see
	// reissue.go); without now, SVIDs renew on schedule only.
	now    func() time.Time
	jitter time.Duration
	// opaBundles are the OPA bundles' latest revisions, by name (issue 12).
	opaBundles map[string]*nodepb.OPABundle
	// opaKey verifies the OPA bundles (issue 12); nil until it arrives.
	opaKey *nodepb.OPAKey
	// identityTypes are the selector types the issuance policy derives
	// identities from; derivedDenied when refused derived entries may be
	// asked again (see identitypolicy.go).
	identityTypes map[string]bool
	derivedDenied map[string]time.Time
	wakeSigner    func()
	// topics, when set, is told the topics a change concerns (see
	// sdsTopic*): SDS pushes only to the streams that depend on them.
	topics func(topics ...string)
	// versions are the versions of the Sync resources held, by
	// "<kind>/<name>": a new stream resumes from them.
	versions map[string]string
	ch       chan struct{}
}

func newStore() *store {
	return &store{entries: map[string]*nodepb.Entry{}, svids: map[string]*svid{}, crls: map[string]*nodepb.CRL{}, crlStates: map[string]*crlState{}, opaBundles: map[string]*nodepb.OPABundle{}, derivedDenied: map[string]time.Time{}, versions: map[string]string{}, ch: make(chan struct{})}
}

// known returns a copy of the versions held, for a new Sync stream.
func (s *store) known() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.versions))
	for k, v := range s.versions {
		out[k] = v
	}
	return out
}

// apply applies a Sync update: resources added or changed, and removed
// (an entry removed takes its SVID with it). It returns the bundle when
// the update changed it, else nil.
func (s *store) apply(u *nodepb.SyncUpdate) *nodepb.Bundle {
	s.mu.Lock()
	var bundle *nodepb.Bundle
	var topics []string
	for _, r := range u.Resources {
		switch body := r.Body.(type) {
		case *nodepb.Resource_Entry:
			s.entries[r.Name] = body.Entry
			topics = append(topics, sdsTopicEntries, sdsTopicSVID(r.Name))
		case *nodepb.Resource_Bundle:
			s.bundle, bundle = body.Bundle, body.Bundle
			topics = append(topics, sdsTopicBundle)
		case *nodepb.Resource_JwtAuthorities:
			s.jwt = body.JwtAuthorities.GetKeys()
		case *nodepb.Resource_Crl:
			s.crls[r.Name] = body.Crl
			s.crlStates[r.Name] = newCRLState(body.Crl)
			topics = append(topics, sdsTopicBundle)
		case *nodepb.Resource_OpaKey: // issue 12
			s.opaKey = body.OpaKey
		case *nodepb.Resource_IdentityPolicy: // issue 12
			s.setIdentityTypesLocked(body.IdentityPolicy.GetSelectorTypes())
			topics = append(topics, sdsTopicEntries)
		case *nodepb.Resource_OpaBundle: // issue 12 (verified by Agent.applySync)
			s.opaBundles[r.Name] = body.OpaBundle
			topics = append(topics, sdsTopicOPABundle(r.Name))
		default:
			continue // a kind this agent does not know: not held, asked again
		}
		s.versions[r.Kind+"/"+r.Name] = r.Version
	}
	for _, k := range u.Removed {
		delete(s.versions, k)
		if id, ok := strings.CutPrefix(k, "entry/"); ok {
			delete(s.entries, id)
			delete(s.svids, id)
			topics = append(topics, sdsTopicEntries, sdsTopicSVID(id))
		}
		if strings.HasPrefix(k, "identity_policy/") {
			s.setIdentityTypesLocked(nil)
			topics = append(topics, sdsTopicEntries)
		}
		if name, ok := strings.CutPrefix(k, "opa_bundle/"); ok {
			delete(s.opaBundles, name)
			topics = append(topics, sdsTopicOPABundle(name))
		}
		if id, ok := strings.CutPrefix(k, "crl/"); ok {
			delete(s.crls, id)
			delete(s.crlStates, id)
			topics = append(topics, sdsTopicBundle)
		}
	}
	if len(u.Resources) > 0 || len(u.Removed) > 0 {
		s.markCompromisedLocked()
		s.notifyLocked()
	}
	notify := s.topics
	s.mu.Unlock()
	if len(topics) > 0 && notify != nil {
		notify(topics...) // outside the lock: SDS resolves against the store
	}
	return bundle
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
	if e, ok := s.entries[v.entry.Id]; !ok || e.Revision != v.entry.Revision {
		s.mu.Unlock()
		return // the entry changed or went away meanwhile
	}
	s.svids[v.entry.Id] = v
	if isDerived(v.entry) {
		s.entries[v.entry.Id] = v.entry // with the SPIFFE ID the policy gave
	}
	s.notifyLocked()
	notify := s.topics
	s.mu.Unlock()
	if notify != nil {
		notify(sdsTopicSVID(v.entry.Id))
	}
}

// matchResult is what the store holds for one caller.
type matchResult struct {
	// svids are the SVIDs, valid at the time asked, of the entries that
	// match the caller and are of a profile it asked for, in the default
	// order (see lessEntry).
	svids []*svid
	// complete: every such entry has a valid SVID.
	complete bool
	// matched: at least one such entry exists.
	matched bool
	// otherProfiles are the profiles, not asked for, of other entries
	// that match the caller, in the order of ca.Profiles.
	otherProfiles []string
}

// matching returns the SVIDs, valid at now, of the entries of the given
// profiles whose selectors are all in sel.
func (s *store) matching(sel map[string]bool, profiles map[string]bool, now time.Time) matchResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := matchResult{complete: true}
	others := map[string]bool{}
	for _, e := range sortedEntries(s.entries) {
		if !entryMatches(e, sel) {
			continue
		}
		if !profiles[e.Profile] {
			others[e.Profile] = true
			continue
		}
		m.matched = true
		v, ok := s.svids[e.Id]
		if !ok || !now.Before(v.notAfter) {
			m.complete = false
			continue
		}
		m.svids = append(m.svids, v)
	}
	if !m.matched && len(others) == 0 && profiles[ca.ProfileECDSA] {
		if e := s.deriveLocked(sel); e != nil { // issue 12: identity as policy
			m.matched = true
			if v, ok := s.svids[e.Id]; ok && now.Before(v.notAfter) {
				m.svids = append(m.svids, v)
			} else {
				m.complete = false
			}
		}
	}
	m.otherProfiles = sortedProfiles(others)
	return m
}

// sortedProfiles returns the names in set in the order of ca.Profiles,
// then unknown names alphabetically.
func sortedProfiles(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for name := range set {
		out = append(out, name)
	}
	sort.Slice(out, func(i, j int) bool {
		ri, rj := profileRank(out[i]), profileRank(out[j])
		if ri != rj {
			return ri < rj
		}
		return out[i] < out[j]
	})
	return out
}

// profileRank orders profiles as ca.Profiles does (ecdsa, then sm2);
// unknown profiles come last.
func profileRank(name string) int {
	for i, p := range ca.Profiles() {
		if p.Name() == name {
			return i
		}
	}
	return len(ca.Profiles())
}

// lessEntry is the default order of a workload's SVIDs, the first being
// its default SVID: ECDSA before SM2 (the order of ca.Profiles), then by
// SPIFFE ID, then oldest entry first, then by entry ID, so that the order
// never depends on map iteration or on the random entry IDs alone.
func lessEntry(a, b *nodepb.Entry) bool {
	if ra, rb := profileRank(a.Profile), profileRank(b.Profile); ra != rb {
		return ra < rb
	}
	if a.SpiffeId != b.SpiffeId {
		return a.SpiffeId < b.SpiffeId
	}
	if a.CreatedUnixNano != b.CreatedUnixNano {
		return a.CreatedUnixNano < b.CreatedUnixNano
	}
	return a.Id < b.Id
}

// sortedEntries returns the entries of m in the default order.
func sortedEntries(m map[string]*nodepb.Entry) []*nodepb.Entry {
	out := make([]*nodepb.Entry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return lessEntry(out[i], out[j]) })
	return out
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
	if issued.After(notAfter) {
		issued = notAfter
	}
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
			sr := &nodepb.SVIDRequest{EntryId: e.Id, Csr: csr}
			if isDerived(e) {
				sr.WorkloadSelectors = e.Selectors
			}
			req.Requests = append(req.Requests, sr)
		}
		var resp *nodepb.SignX509SVIDsResponse
		if err := callServer(ctx, a.cfg.Clock, func(ctx context.Context) error {
			var err error
			resp, err = client.SignX509SVIDs(ctx, req)
			return err
		}); err != nil {
			a.metrics.renewals.WithLabelValues(renewFailed).Add(float64(len(batch)))
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
				a.metrics.renewals.WithLabelValues(renewRefused).Inc()
				a.log.Warn("server refused an SVID", "entry", r.EntryId, "spiffe_id", e.SpiffeId, "error", r.Error)
				if isDerived(e) {
					a.store.denyDerived(e.Id)
				}
				continue
			}
			v, err := a.newSVID(e, keys[e.Id], r.Chain)
			if err != nil {
				a.metrics.renewals.WithLabelValues(renewFailed).Inc()
				a.log.Warn("server returned an unusable SVID", "entry", e.Id, "error", err)
				continue
			}
			a.store.put(v)
			a.metrics.renewals.WithLabelValues(renewOK).Inc()
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
	if isDerived(e) && len(leaf.URIs) == 1 { // the policy named it
		id, err := spiffeid.FromString(leaf.URIs[0])
		if err != nil || id.TrustDomain() != a.td {
			return nil, errUnexpectedID
		}
		e = derivedEntry(e, leaf.URIs[0])
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0] != e.SpiffeId {
		return nil, errUnexpectedID
	}
	keyDER, err := p.MarshalPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &svid{entry: e, keyDER: keyDER, chain: chain, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter, serial: leaf.SerialNumber,
		renewAt: renewTime(issuedAt(a.cfg.Clock.Now(), leaf.NotBefore), leaf.NotAfter, a.cfg.RenewFraction)}, nil
}

// issuedAt is when a certificate that arrived at now was issued: its
// NotBefore undone of the server's backdating, or now if that is later
// (a server whose clock runs ahead). Renewals count from the issue, not
// from the arrival: a response that took long to arrive, or a clock that
// moved while it was in flight, does not put the renewal off.
func issuedAt(now, notBefore time.Time) time.Time {
	if issued := notBefore.Add(ca.Backdate); issued.Before(now) {
		return issued
	}
	return now
}

type agentError string

func (e agentError) Error() string { return string(e) }

const errUnexpectedID = agentError("agent: the SVID does not carry the entry's SPIFFE ID")

// matchingEntries returns the entries whose selectors are all in sel, in
// the default order.
func (s *store) matchingEntries(sel map[string]bool) []*nodepb.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*nodepb.Entry
	for _, e := range sortedEntries(s.entries) {
		if entryMatches(e, sel) {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		if e := s.deriveLocked(sel); e != nil { // issue 12: identity as policy
			out = append(out, e)
		}
	}
	return out
}
