package policy

import (
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// flatVirtualCache is the topdown.VirtualCache of one issuance decision:
// what OPA's own does (a stack of frames, each remembering the value, or
// undefined, of the virtual documents evaluated in it), in flat slices
// reused from evaluation to evaluation. A decision evaluates a handful of
// rules: OPA's trie of hash maps costs it a map and an entry per level of
// every reference (data, meshca, issuance, allow), a fifth of the
// allocations of a small policy's decision. A frame is searched linearly
// up to indexAfter entries, through a hash index past that (a policy that
// looks up many keys of a partial rule).
type flatVirtualCache struct {
	frames []flatFrame
	// terms holds the entries' references, copied: a reference the
	// evaluator passes may share its backing array with one it changes
	// later.
	terms []*ast.Term
}

type flatFrame struct {
	entries []flatEntry
	index   map[int][]int // ref hash → entries, past indexAfter
}

type flatEntry struct {
	ref       ast.Ref
	value     *ast.Term
	undefined bool
}

// indexAfter is the size past which a frame is indexed by hash.
const indexAfter = 16

var _ topdown.VirtualCache = (*flatVirtualCache)(nil)

var flatCaches = sync.Pool{New: func() any { return &flatVirtualCache{} }}

// getFlatCache returns an empty cache with one frame.
func getFlatCache() *flatVirtualCache {
	c := flatCaches.Get().(*flatVirtualCache)
	c.Push()
	return c
}

// release empties c, dropping what it refers to, and pools it.
func (c *flatVirtualCache) release() {
	for len(c.frames) > 0 {
		c.Pop()
	}
	clear(c.terms)
	c.terms = c.terms[:0]
	flatCaches.Put(c)
}

// Push implements topdown.VirtualCache.
func (c *flatVirtualCache) Push() {
	if len(c.frames) < cap(c.frames) {
		c.frames = c.frames[:len(c.frames)+1]
		return
	}
	c.frames = append(c.frames, flatFrame{})
}

// Pop implements topdown.VirtualCache.
func (c *flatVirtualCache) Pop() {
	f := &c.frames[len(c.frames)-1]
	clear(f.entries)
	f.entries, f.index = f.entries[:0], nil
	c.frames = c.frames[:len(c.frames)-1]
}

func (c *flatVirtualCache) find(ref ast.Ref) *flatEntry {
	f := &c.frames[len(c.frames)-1]
	if f.index != nil {
		for _, i := range f.index[ref.Hash()] {
			if f.entries[i].ref.Equal(ref) {
				return &f.entries[i]
			}
		}
		return nil
	}
	for i := range f.entries {
		if f.entries[i].ref.Equal(ref) {
			return &f.entries[i]
		}
	}
	return nil
}

// Get implements topdown.VirtualCache: (nil, true) is undefined, (nil,
// false) not cached.
func (c *flatVirtualCache) Get(ref ast.Ref) (*ast.Term, bool) {
	e := c.find(ref)
	switch {
	case e == nil:
		return nil, false
	case e.undefined:
		return nil, true
	}
	return e.value, false
}

// Put implements topdown.VirtualCache: a nil value marks ref undefined,
// and once undefined it stays so in this frame, as in OPA's cache.
func (c *flatVirtualCache) Put(ref ast.Ref, value *ast.Term) {
	e := c.find(ref)
	if e == nil {
		start := len(c.terms)
		c.terms = append(c.terms, ref...)
		f := &c.frames[len(c.frames)-1]
		f.entries = append(f.entries, flatEntry{ref: c.terms[start:len(c.terms):len(c.terms)]})
		switch n := len(f.entries); {
		case n == indexAfter+1:
			f.index = make(map[int][]int, 2*n)
			for i := range f.entries {
				h := f.entries[i].ref.Hash()
				f.index[h] = append(f.index[h], i)
			}
		case n > indexAfter+1:
			h := ref.Hash()
			f.index[h] = append(f.index[h], n-1)
		}
		e = &f.entries[len(f.entries)-1]
	}
	if value != nil {
		e.value = value
	} else {
		e.undefined = true
	}
}

// Keys implements topdown.VirtualCache: the references of the active
// frame with a value.
func (c *flatVirtualCache) Keys() []ast.Ref {
	var keys []ast.Ref
	for _, e := range c.frames[len(c.frames)-1].entries {
		if e.value != nil {
			keys = append(keys, e.ref)
		}
	}
	return keys
}
