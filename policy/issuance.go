package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// IssuanceQuery is the decision every issuance asks an operator policy.
const IssuanceQuery = "data.meshca.issuance"

// Selector is an attested property: k8s:ns:payments, unix:uid:1000.
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// Input is what an issuance policy decides on, data.meshca.issuance's
// input:
//
//	{"node": {"id", "attestor", "selectors": [{"type", "value"}]},
//	 "workload": {"selectors": [...]},
//	 "entry": {"id", "spiffe_id", "parent_id", "selectors", "dns_names", "ttl", "profile"} | absent,
//	 "request": {"spiffe_id", "dns_names", "ttl", "profile", "kind"},
//	 "entries": {"allow", "reason"}}
//
// ttl is in seconds. kind is agent_svid, workload_svid, jwt_svid or mint.
// entries is the decision of registration-entry matching, so that a policy
// can extend it rather than replace it.
type Input struct {
	Node     NodeInput     `json:"node"`
	Workload WorkloadInput `json:"workload"`
	Entry    *EntryInput   `json:"entry,omitempty"`
	Request  RequestInput  `json:"request"`
	Entries  EntriesInput  `json:"entries"`
}

// NodeInput is the node agent that asks (empty for an operator's mint).
type NodeInput struct {
	ID        string     `json:"id"`
	Attestor  string     `json:"attestor"`
	Selectors []Selector `json:"selectors"`
}

// WorkloadInput is the workload asked for, as its agent attested it.
type WorkloadInput struct {
	Selectors []Selector `json:"selectors"`
}

// EntryInput is the registration entry asked for.
type EntryInput struct {
	ID        string     `json:"id"`
	SPIFFEID  string     `json:"spiffe_id"`
	ParentID  string     `json:"parent_id"`
	Selectors []Selector `json:"selectors"`
	DNSNames  []string   `json:"dns_names"`
	TTL       int64      `json:"ttl"`
	Profile   string     `json:"profile"`
}

// RequestInput is what is asked for.
type RequestInput struct {
	SPIFFEID string   `json:"spiffe_id"`
	DNSNames []string `json:"dns_names"`
	TTL      int64    `json:"ttl"`
	Profile  string   `json:"profile"`
	Kind     string   `json:"kind"`
}

// EntriesInput is registration-entry matching's decision.
type EntriesInput struct {
	Allow  bool   `json:"allow"`
	Reason string `json:"reason"`
}

// Decision is an issuance policy's answer: data.meshca.issuance's
// {allow, reason, spiffe_id?, ttl?, dns_names?}. A non-zero SPIFFEID, TTL
// or DNSNames replaces the request's.
type Decision struct {
	Allow    bool          `json:"allow"`
	Reason   string        `json:"reason,omitempty"`
	SPIFFEID string        `json:"spiffe_id,omitempty"`
	TTL      time.Duration `json:"-"`
	DNSNames []string      `json:"dns_names,omitempty"`
}

// EvalError is an issuance policy that failed at evaluation (a conflict, a
// builtin's error, a result of the wrong shape). The issuance it decided
// is refused: policies fail closed.
type EvalError struct{ Err error }

func (e *EvalError) Error() string { return "issuance policy: " + e.Err.Error() }
func (e *EvalError) Unwrap() error { return e.Err }

// inputSchema types input for the compiler, so that a policy that refers
// to a field the input does not have is refused when it is set.
var inputSchema = func() any {
	sel := map[string]any{"type": "array", "items": map[string]any{"type": "object", "additionalProperties": false,
		"properties": map[string]any{"type": map[string]any{"type": "string"}, "value": map[string]any{"type": "string"}}}}
	strs := map[string]any{"type": "array", "items": map[string]any{"type": "string"}}
	str := map[string]any{"type": "string"}
	num := map[string]any{"type": "integer"}
	obj := func(props map[string]any) map[string]any {
		return map[string]any{"type": "object", "additionalProperties": false, "properties": props}
	}
	return obj(map[string]any{
		"node":     obj(map[string]any{"id": str, "attestor": str, "selectors": sel}),
		"workload": obj(map[string]any{"selectors": sel}),
		"entry": obj(map[string]any{"id": str, "spiffe_id": str, "parent_id": str, "selectors": sel, "dns_names": strs,
			"ttl": num, "profile": str}),
		"request": obj(map[string]any{"spiffe_id": str, "dns_names": strs, "ttl": num, "profile": str, "kind": str}),
		"entries": obj(map[string]any{"allow": map[string]any{"type": "boolean"}, "reason": str}),
	})
}()

// Issuance is a compiled issuance policy, safe for concurrent use.
type Issuance struct {
	// Revision is the policy revision it was compiled from.
	Revision uint64
	// SelectorTypes are the workload selector types the policy derives
	// identities from (its identity_selector_types rule): agents ask for
	// an identity for a workload with no entry that has selectors of these
	// types. Empty: the policy derives none.
	SelectorTypes []string
	// allowed asks allow and the fields that matter when it is true
	// (spiffe_id, ttl, dns_names), those the policy can define; reason
	// asks reason, only when allow is not true. nil: the policy cannot
	// define them.
	allowed, reason *fieldQuery
	// reads are the input's fields the policy refers to: the others are
	// left out of the input it is given.
	reads inputFields
	// deterministic: the policy calls no nondeterministic builtin, so its
	// decisions may be cached. cache is nil when they are not.
	deterministic bool
	cache         *decisionCache
	// evaluations counts the decisions evaluated (not from the cache).
	evaluations atomic.Uint64
}

// CacheDecisions makes p remember up to n decisions, by the input fields
// the policy reads, so that an input seen again (a renewal) is not
// evaluated again; n <= 0 remembers none. A policy that calls a
// nondeterministic builtin (time.now_ns, http.send, rand.intn, ...) or
// verifies certificates against the current time is always evaluated.
// CompileIssuance sets DefaultDecisionCache. Call it before p is used.
func (p *Issuance) CacheDecisions(n int) {
	p.cache = nil
	if n > 0 && p.deterministic {
		p.cache = newDecisionCache(n)
	}
}

// Evaluations is how many decisions were evaluated, not answered from
// the cache.
func (p *Issuance) Evaluations() uint64 { return p.evaluations.Load() }

// CachedDecisions is how many decisions were answered from the cache.
func (p *Issuance) CachedDecisions() uint64 {
	if p.cache == nil {
		return 0
	}
	return p.cache.hits.Load()
}

// inputFields is a set of the input's fields: node.id, entry.selectors.
type inputFields uint32

const (
	fNodeID inputFields = 1 << iota
	fNodeAttestor
	fNodeSelectors
	fWorkloadSelectors
	fEntryID
	fEntrySPIFFEID
	fEntryParentID
	fEntrySelectors
	fEntryDNSNames
	fEntryTTL
	fEntryProfile
	fRequestSPIFFEID
	fRequestDNSNames
	fRequestTTL
	fRequestProfile
	fRequestKind
	fEntriesAllow
	fEntriesReason
	readsAll inputFields = 1<<iota - 1

	readsNode     = fNodeID | fNodeAttestor | fNodeSelectors
	readsWorkload = fWorkloadSelectors
	readsEntry    = fEntryID | fEntrySPIFFEID | fEntryParentID | fEntrySelectors | fEntryDNSNames | fEntryTTL | fEntryProfile
	readsRequest  = fRequestSPIFFEID | fRequestDNSNames | fRequestTTL | fRequestProfile | fRequestKind
	readsEntries  = fEntriesAllow | fEntriesReason
)

// inputFieldBits names the fields of each of the input's top-level keys,
// as Input's JSON does.
var inputFieldBits = map[string]map[string]inputFields{
	"node":     {"id": fNodeID, "attestor": fNodeAttestor, "selectors": fNodeSelectors},
	"workload": {"selectors": fWorkloadSelectors},
	"entry": {"id": fEntryID, "spiffe_id": fEntrySPIFFEID, "parent_id": fEntryParentID, "selectors": fEntrySelectors,
		"dns_names": fEntryDNSNames, "ttl": fEntryTTL, "profile": fEntryProfile},
	"request": {"spiffe_id": fRequestSPIFFEID, "dns_names": fRequestDNSNames, "ttl": fRequestTTL, "profile": fRequestProfile,
		"kind": fRequestKind},
	"entries": {"allow": fEntriesAllow, "reason": fEntriesReason},
}

// inputReads is the set of the input's fields the compiled modules refer
// to. A reference to input itself, to one of its keys as a whole (count,
// iteration, comparison, a variable bound to it) or by a non-constant key
// reads all it holds. Leaving the other fields out is invisible to the
// policy (nothing can see a field it never names) and spares building
// them, selectors above all, for every decision.
func inputReads(c *ast.Compiler) inputFields {
	var reads inputFields
	for _, m := range c.Modules {
		ast.WalkRefs(m, func(r ast.Ref) bool {
			if r[0].Equal(ast.InputRootDocument) {
				reads |= refReads(r)
			}
			return false
		})
	}
	return reads
}

// refReads is the set of fields an input reference r reads.
func refReads(r ast.Ref) inputFields {
	if len(r) < 2 {
		return readsAll
	}
	k, ok := r[1].Value.(ast.String)
	fields, known := inputFieldBits[string(k)]
	if !ok || !known {
		return readsAll
	}
	var all inputFields
	for _, bit := range fields {
		all |= bit
	}
	if len(r) < 3 {
		return all
	}
	f, ok := r[2].Value.(ast.String)
	if bit, known := fields[string(f)]; ok && known {
		return bit
	}
	return all
}

// fieldQuery asks data.meshca.issuance for some of the decision's fields,
// each by its key: the package's helper rules are evaluated only where
// those fields use them, not all of them for every decision.
type fieldQuery struct {
	pq rego.PreparedEvalQuery
	// one is the field asked when it is the only one: the query is the
	// field's reference (cheaper than an object of one field), undefined
	// when the field is.
	one string
}

// allowedFields are the decision's fields that matter when allow is true.
var allowedFields = []string{"allow", "spiffe_id", "ttl", "dns_names"}

// prepareFields prepares the query of those of fields the policy can
// define (nil if none).
func prepareFields(ctx context.Context, p *parsed, store storage.Store, fields []string) (*fieldQuery, error) {
	var defined []string
	for _, f := range fields {
		if definesField(p, f) {
			defined = append(defined, f)
		}
	}
	q := &fieldQuery{}
	var query string
	switch len(defined) {
	case 0:
		return nil, nil
	case 1:
		q.one, query = defined[0], IssuanceQuery+"."+defined[0]
	default:
		query = `{k: v | some k in ["` + strings.Join(defined, `", "`) + `"]; v := ` + IssuanceQuery + `[k]}`
	}
	pq, err := rego.New(rego.Query(query), rego.Compiler(p.compiler), rego.Store(store), rego.StrictBuiltinErrors(true)).PrepareForEval(ctx)
	if err != nil {
		return nil, &InvalidError{Problems: astProblems(err)}
	}
	q.pq = pq
	return q, nil
}

// definesField reports whether data.meshca.issuance.<field> can be
// defined: a rule there, above it (unless its type says it has no such
// key) or below it, or base data (data.json) there.
func definesField(p *parsed, field string) bool {
	ref := ast.MustParseRef(IssuanceQuery + "." + field)
	if len(p.compiler.GetRules(ref)) > 0 {
		return p.compiler.TypeEnv.Get(ref) != nil
	}
	var v any = p.data
	for _, k := range []string{"meshca", "issuance", field} {
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		if v, ok = m[k]; !ok {
			return false
		}
	}
	return true
}

// eval evaluates q on input and adds the fields it defines to into.
func (q *fieldQuery) eval(ctx context.Context, input ast.Value, into map[string]any) error {
	if q == nil {
		return nil
	}
	vc := getFlatCache()
	defer vc.release()
	rs, err := q.pq.Eval(ctx, rego.EvalParsedInput(input), rego.EvalMetrics(noMetrics), rego.EvalVirtualCache(vc))
	switch {
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return &EvalError{Err: err}
	case len(rs) == 0 && q.one != "":
		return nil // undefined
	case len(rs) != 1 || len(rs[0].Expressions) != 1:
		return &EvalError{Err: errors.New("data.meshca.issuance is undefined")}
	case q.one != "":
		into[q.one] = rs[0].Expressions[0].Value
		return nil
	}
	obj, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return &EvalError{Err: fmt.Errorf("data.meshca.issuance is %T, not an object", rs[0].Expressions[0].Value)}
	}
	maps.Copy(into, obj)
	return nil
}

// SelectorTypesQuery is the rule by which a policy declares the selector
// types it derives identities from, e.g. identity_selector_types := {"k8s"}.
const SelectorTypesQuery = IssuanceQuery + ".identity_selector_types"

// CompileIssuance parses, type-checks against Input and compiles an
// issuance policy, and prepares its query. The policy must define
// data.meshca.issuance (package meshca.issuance).
func CompileIssuance(ctx context.Context, revision uint64, files []File) (*Issuance, error) {
	ss := ast.NewSchemaSet()
	ss.Put(ast.SchemaRootRef, inputSchema)
	p, err := parse(files, DefaultMaxSize, ss)
	if err != nil {
		return nil, err
	}
	if len(p.compiler.GetRulesWithPrefix(ast.MustParseRef(IssuanceQuery))) == 0 {
		return nil, invalid("no rule in package meshca.issuance: the policy must define %s (package meshca.issuance, with allow and reason)", IssuanceQuery)
	}
	store := inmem.NewFromObject(p.data)
	allowed, err := prepareFields(ctx, p, store, allowedFields)
	if err != nil {
		return nil, err
	}
	reason, err := prepareFields(ctx, p, store, []string{"reason"})
	if err != nil {
		return nil, err
	}
	types, err := selectorTypes(ctx, p)
	if err != nil {
		return nil, err
	}
	is := &Issuance{Revision: revision, allowed: allowed, reason: reason, SelectorTypes: types, reads: inputReads(p.compiler),
		deterministic: !nondeterministic(p.compiler)}
	is.CacheDecisions(DefaultDecisionCache)
	return is, nil
}

// selectorTypes evaluates identity_selector_types, which must not depend
// on input: a set or array of selector type names.
func selectorTypes(ctx context.Context, p *parsed) ([]string, error) {
	if len(p.compiler.GetRulesExact(ast.MustParseRef(SelectorTypesQuery))) == 0 {
		return nil, nil
	}
	rs, err := rego.New(rego.Query(SelectorTypesQuery), rego.Compiler(p.compiler), rego.Store(inmem.NewFromObject(p.data)),
		rego.StrictBuiltinErrors(true)).Eval(ctx)
	if err != nil {
		return nil, invalid("%s: %v", SelectorTypesQuery, err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return nil, invalid("%s is undefined without input: it must be a constant set of selector types", SelectorTypesQuery)
	}
	arr, ok := rs[0].Expressions[0].Value.([]any)
	if !ok {
		return nil, invalid("%s is %T, not a set of strings", SelectorTypesQuery, rs[0].Expressions[0].Value)
	}
	var out []string
	for _, v := range arr {
		s, ok := v.(string)
		if !ok || s == "" || len(s) > 64 {
			return nil, invalid("%s holds %v, not a selector type", SelectorTypesQuery, v)
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out, nil
}

// noMetrics spares every evaluation the metrics registry (a map and timers)
// OPA otherwise makes for it: nobody reads them.
var noMetrics = metrics.NoOp()

// Decide evaluates the policy on in: allow and the fields that matter when
// it is true, then reason only when allow is not true; or answers with
// the decision it made on an input equal in what the policy reads (see
// CacheDecisions). An error is an *EvalError (the caller denies) or the
// context's, and is not remembered. The decision's DNSNames may be shared:
// callers do not modify them.
func (p *Issuance) Decide(ctx context.Context, in *Input) (Decision, error) {
	var key []byte
	if p.cache != nil {
		key = in.key(p.reads, make([]byte, 0, 256))
		if d, ok := p.cache.get(key); ok {
			return d, nil
		}
	}
	p.evaluations.Add(1)
	d, err := p.evaluate(ctx, in)
	if err == nil && p.cache != nil {
		p.cache.put(key, d)
	}
	return d, err
}

// evaluate evaluates the policy on in.
func (p *Issuance) evaluate(ctx context.Context, in *Input) (Decision, error) {
	input := in.value(p.reads)
	fields := make(map[string]any, 2)
	if err := p.allowed.eval(ctx, input, fields); err != nil {
		return Decision{}, err
	}
	if allow, _ := fields["allow"].(bool); !allow {
		if err := p.reason.eval(ctx, input, fields); err != nil {
			return Decision{}, err
		}
	}
	return decision(fields)
}

// decision reads the fields of data.meshca.issuance that were evaluated.
func decision(obj map[string]any) (Decision, error) {
	var d Decision
	bad := func(field, want string) (Decision, error) {
		return Decision{}, &EvalError{Err: fmt.Errorf("data.meshca.issuance.%s is %v, not %s", field, obj[field], want)}
	}
	if a, ok := obj["allow"]; ok {
		if d.Allow, ok = a.(bool); !ok {
			return bad("allow", "a boolean")
		}
	}
	if r, ok := obj["reason"]; ok {
		if d.Reason, ok = r.(string); !ok {
			return bad("reason", "a string")
		}
	}
	if s, ok := obj["spiffe_id"]; ok {
		if d.SPIFFEID, ok = s.(string); !ok {
			return bad("spiffe_id", "a string")
		}
	}
	if t, ok := obj["ttl"]; ok {
		n, ok := t.(json.Number)
		secs, err := n.Int64()
		if !ok || err != nil || secs <= 0 || secs > math.MaxInt64/int64(time.Second) {
			return bad("ttl", "a positive number of seconds")
		}
		d.TTL = time.Duration(secs) * time.Second
	}
	if ns, ok := obj["dns_names"]; ok {
		arr, ok := ns.([]any)
		if !ok {
			return bad("dns_names", "an array of strings")
		}
		d.DNSNames = make([]string, 0, len(arr))
		for _, n := range arr {
			s, ok := n.(string)
			if !ok {
				return bad("dns_names", "an array of strings")
			}
			d.DNSNames = append(d.DNSNames, s)
		}
	}
	if !d.Allow && d.Reason == "" {
		d.Reason = "denied by the issuance policy"
	}
	return d, nil
}

// Keys of the input's objects, shared by every input built (terms are
// not changed by evaluation).
var (
	kType, kValue, kID, kAttestor, kSelectors = ast.StringTerm("type"), ast.StringTerm("value"), ast.StringTerm("id"), ast.StringTerm("attestor"), ast.StringTerm("selectors")
	kSPIFFEID, kParentID, kDNSNames, kTTL     = ast.StringTerm("spiffe_id"), ast.StringTerm("parent_id"), ast.StringTerm("dns_names"), ast.StringTerm("ttl")
	kProfile, kKind, kAllow, kReason          = ast.StringTerm("profile"), ast.StringTerm("kind"), ast.StringTerm("allow"), ast.StringTerm("reason")
	kNode, kWorkload, kRequest, kEntries      = ast.StringTerm("node"), ast.StringTerm("workload"), ast.StringTerm("request"), ast.StringTerm("entries")
	kEntry                                    = ast.StringTerm("entry")
)

// value builds the input as an AST value directly (no JSON round trip),
// with shared key terms and interned scalars, holding the fields of reads
// (a top-level key is there when one of its fields is).
func (in *Input) value(reads inputFields) ast.Value {
	str := func(s string) *ast.Term { return ast.InternedTerm(s) }
	strs := func(ss []string) *ast.Term {
		ts := make([]*ast.Term, len(ss))
		for i, s := range ss {
			ts[i] = str(s)
		}
		return ast.ArrayTerm(ts...)
	}
	sels := func(ss []Selector) *ast.Term {
		ts := make([]*ast.Term, len(ss))
		for i, s := range ss {
			ts[i] = ast.ObjectTerm([2]*ast.Term{kType, str(s.Type)}, [2]*ast.Term{kValue, str(s.Value)})
		}
		return ast.ArrayTerm(ts...)
	}
	// fields holds the key-value pairs of every object but the
	// selectors' (at most 7 for one), one allocation for them all.
	fields := make([][2]*ast.Term, 0, 18)
	obj := func(from int) *ast.Term { return ast.ObjectTerm(fields[from:]...) } // NewObject copies them
	add := func(bit inputFields, k *ast.Term, v func() *ast.Term) {
		if reads&bit != 0 {
			fields = append(fields, [2]*ast.Term{k, v()})
		}
	}
	kv := make([][2]*ast.Term, 0, 5)
	if reads&readsNode != 0 {
		n := len(fields)
		add(fNodeID, kID, func() *ast.Term { return str(in.Node.ID) })
		add(fNodeAttestor, kAttestor, func() *ast.Term { return str(in.Node.Attestor) })
		add(fNodeSelectors, kSelectors, func() *ast.Term { return sels(in.Node.Selectors) })
		kv = append(kv, [2]*ast.Term{kNode, obj(n)})
	}
	if reads&readsWorkload != 0 {
		n := len(fields)
		add(fWorkloadSelectors, kSelectors, func() *ast.Term { return sels(in.Workload.Selectors) })
		kv = append(kv, [2]*ast.Term{kWorkload, obj(n)})
	}
	if reads&readsRequest != 0 {
		n := len(fields)
		r := &in.Request
		add(fRequestSPIFFEID, kSPIFFEID, func() *ast.Term { return str(r.SPIFFEID) })
		add(fRequestDNSNames, kDNSNames, func() *ast.Term { return strs(r.DNSNames) })
		add(fRequestTTL, kTTL, func() *ast.Term { return ast.InternedTerm(r.TTL) })
		add(fRequestProfile, kProfile, func() *ast.Term { return str(r.Profile) })
		add(fRequestKind, kKind, func() *ast.Term { return str(r.Kind) })
		kv = append(kv, [2]*ast.Term{kRequest, obj(n)})
	}
	if reads&readsEntries != 0 {
		n := len(fields)
		add(fEntriesAllow, kAllow, func() *ast.Term { return ast.InternedTerm(in.Entries.Allow) })
		add(fEntriesReason, kReason, func() *ast.Term { return str(in.Entries.Reason) })
		kv = append(kv, [2]*ast.Term{kEntries, obj(n)})
	}
	if e := in.Entry; e != nil && reads&readsEntry != 0 {
		n := len(fields)
		add(fEntryID, kID, func() *ast.Term { return str(e.ID) })
		add(fEntrySPIFFEID, kSPIFFEID, func() *ast.Term { return str(e.SPIFFEID) })
		add(fEntryParentID, kParentID, func() *ast.Term { return str(e.ParentID) })
		add(fEntrySelectors, kSelectors, func() *ast.Term { return sels(e.Selectors) })
		add(fEntryDNSNames, kDNSNames, func() *ast.Term { return strs(e.DNSNames) })
		add(fEntryTTL, kTTL, func() *ast.Term { return ast.InternedTerm(e.TTL) })
		add(fEntryProfile, kProfile, func() *ast.Term { return str(e.Profile) })
		kv = append(kv, [2]*ast.Term{kEntry, obj(n)})
	}
	return ast.NewObject(kv...)
}

// SelfTest evaluates the policy on a sample input of every kind (empty
// fields, no entry, and an entry): a policy that fails at evaluation on
// them would deny everything, and is refused when it is set. A policy that
// fails only on some inputs passes; those issuances are denied.
func (p *Issuance) SelfTest(ctx context.Context) error {
	for _, kind := range []string{"agent_svid", "workload_svid", "jwt_svid", "mint"} {
		for _, entry := range []*EntryInput{nil, {}} {
			in := &Input{Request: RequestInput{Kind: kind}, Entry: entry}
			if _, err := p.Decide(ctx, in); err != nil {
				var ee *EvalError
				if errors.As(err, &ee) {
					return invalid("the policy fails at evaluation on a sample %s input: %v", kind, ee.Err)
				}
				return err
			}
		}
	}
	return nil
}
