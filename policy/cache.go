package policy

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/open-policy-agent/opa/v1/ast"
)

// DefaultDecisionCache is how many issuance decisions a compiled policy
// remembers by default: a renewal of an unchanged workload (the same node,
// entry and request: most of a running mesh's issuance) reuses its last
// decision instead of evaluating the policy again.
const DefaultDecisionCache = 16384

// Bounds of a decision cache in bytes, whatever its number of decisions:
// an input whose key (the fields the policy reads) is longer than
// maxCachedKey, say a workload with many long selectors, is evaluated
// every time; the keys held take at most maxCacheBytes.
const (
	maxCachedKey  = 4 << 10
	maxCacheBytes = 16 << 20
)

// decisionCache remembers decisions by the input the policy reads (its
// fields of reads, in key), bounded: two generations of at most max/2
// decisions and maxCacheBytes/2 of keys each; a full current generation
// becomes the old one and the old one is dropped, a hit in the old one
// moves to the current one. A decision is a
// function of the input, the policy and its data only when the policy
// calls no nondeterministic builtin (time.now_ns, http.send, rand.intn...)
// and verifies no certificate against the current time: such a policy has
// no cache. A new revision is a new Issuance, with an empty cache.
type decisionCache struct {
	mu       sync.Mutex
	half     int
	cur, old map[string]Decision
	curBytes int // the keys' bytes in cur
	hits     atomic.Uint64
}

func newDecisionCache(max int) *decisionCache {
	half := max / 2
	if half < 1 {
		half = 1
	}
	return &decisionCache{half: half, cur: make(map[string]Decision)}
}

func (c *decisionCache) get(key []byte) (Decision, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.cur[string(key)]
	if !ok {
		if d, ok = c.old[string(key)]; ok {
			c.putLocked(string(key), d)
		}
	}
	if ok {
		c.hits.Add(1)
	}
	return d, ok
}

func (c *decisionCache) put(key []byte, d Decision) {
	if len(key) > maxCachedKey {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(string(key), d)
}

func (c *decisionCache) putLocked(key string, d Decision) {
	if len(c.cur) >= c.half || c.curBytes+len(key) > maxCacheBytes/2 {
		c.old, c.cur, c.curBytes = c.cur, make(map[string]Decision, min(c.half, 1024)), 0
	}
	if _, ok := c.cur[key]; !ok {
		c.curBytes += len(key)
	}
	c.cur[key] = d
}

// timeDependent are builtins OPA does not mark nondeterministic whose
// result depends on the time all the same: they verify certificates'
// validity against the current time.
var timeDependent = map[string]bool{
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
}

// nondeterministic reports whether the compiled modules call a builtin
// whose result is not a function of its arguments.
func nondeterministic(c *ast.Compiler) bool {
	for _, b := range c.Required.Builtins {
		if b.IsNondeterministic() || timeDependent[b.Name] {
			return true
		}
	}
	return false
}

// key appends to b the fields of in that reads holds, each length-prefixed
// in a fixed order: two inputs have equal keys exactly when the policy
// sees them equal.
func (in *Input) key(reads inputFields, b []byte) []byte {
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	strs := func(ss []string) {
		b = binary.AppendUvarint(b, uint64(len(ss)))
		for _, s := range ss {
			str(s)
		}
	}
	sels := func(ss []Selector) {
		b = binary.AppendUvarint(b, uint64(len(ss)))
		for _, s := range ss {
			str(s.Type)
			str(s.Value)
		}
	}
	boolean := func(v bool) {
		if v {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	has := func(bit inputFields) bool { return reads&bit != 0 }
	if has(fNodeID) {
		str(in.Node.ID)
	}
	if has(fNodeAttestor) {
		str(in.Node.Attestor)
	}
	if has(fNodeSelectors) {
		sels(in.Node.Selectors)
	}
	if has(fWorkloadSelectors) {
		sels(in.Workload.Selectors)
	}
	if has(readsEntry) {
		boolean(in.Entry != nil)
	}
	if e := in.Entry; e != nil {
		if has(fEntryID) {
			str(e.ID)
		}
		if has(fEntrySPIFFEID) {
			str(e.SPIFFEID)
		}
		if has(fEntryParentID) {
			str(e.ParentID)
		}
		if has(fEntrySelectors) {
			sels(e.Selectors)
		}
		if has(fEntryDNSNames) {
			strs(e.DNSNames)
		}
		if has(fEntryTTL) {
			b = binary.AppendVarint(b, e.TTL)
		}
		if has(fEntryProfile) {
			str(e.Profile)
		}
	}
	r := &in.Request
	if has(fRequestSPIFFEID) {
		str(r.SPIFFEID)
	}
	if has(fRequestDNSNames) {
		strs(r.DNSNames)
	}
	if has(fRequestTTL) {
		b = binary.AppendVarint(b, r.TTL)
	}
	if has(fRequestProfile) {
		str(r.Profile)
	}
	if has(fRequestKind) {
		str(r.Kind)
	}
	if has(fEntriesAllow) {
		boolean(in.Entries.Allow)
	}
	if has(fEntriesReason) {
		str(in.Entries.Reason)
	}
	return b
}
