package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
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
	pq            rego.PreparedEvalQuery
	// reads are the input's top-level keys the policy refers to: the
	// others are left out of the input it is given.
	reads inputKeys
}

// inputKeys is a set of Input's top-level keys.
type inputKeys uint8

const (
	readsNode inputKeys = 1 << iota
	readsWorkload
	readsEntry
	readsRequest
	readsEntries
	readsAll inputKeys = 1<<iota - 1
)

var inputKeyBits = map[string]inputKeys{"node": readsNode, "workload": readsWorkload, "entry": readsEntry,
	"request": readsRequest, "entries": readsEntries}

// inputReads is the set of the input's top-level keys the compiled
// modules refer to. A reference to input itself or to input[x] with a
// non-constant x reads every key. Leaving the others out is invisible to
// the policy (nothing can see a key it never names) and spares building
// them for every decision.
func inputReads(c *ast.Compiler) inputKeys {
	var reads inputKeys
	for _, m := range c.Modules {
		ast.WalkRefs(m, func(r ast.Ref) bool {
			if !r[0].Equal(ast.InputRootDocument) {
				return false
			}
			if len(r) < 2 {
				reads = readsAll
				return false
			}
			k, ok := r[1].Value.(ast.String)
			if bit, known := inputKeyBits[string(k)]; ok && known {
				reads |= bit
			} else {
				reads = readsAll
			}
			return false
		})
	}
	return reads
}

// decisionQuery asks for the decision's fields of data.meshca.issuance
// only: each is evaluated by its key, so the package's helper rules are
// evaluated only where the decision uses them (as querying
// data.meshca.issuance.allow would), not all of them for every decision.
const decisionQuery = `{k: v | some k in ["allow", "reason", "spiffe_id", "ttl", "dns_names"]; v := ` + IssuanceQuery + `[k]}`

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
	pq, err := rego.New(
		rego.Query(decisionQuery),
		rego.Compiler(p.compiler),
		rego.Store(inmem.NewFromObject(p.data)),
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, &InvalidError{Problems: astProblems(err)}
	}
	types, err := selectorTypes(ctx, p)
	if err != nil {
		return nil, err
	}
	return &Issuance{Revision: revision, pq: pq, SelectorTypes: types, reads: inputReads(p.compiler)}, nil
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

// Decide evaluates the policy on in. An error is an *EvalError (the
// caller denies) or the context's.
func (p *Issuance) Decide(ctx context.Context, in *Input) (Decision, error) {
	rs, err := p.pq.Eval(ctx, rego.EvalParsedInput(in.value(p.reads)), rego.EvalMetrics(noMetrics))
	if err != nil {
		if ctx.Err() != nil {
			return Decision{}, ctx.Err()
		}
		return Decision{}, &EvalError{Err: err}
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return Decision{}, &EvalError{Err: errors.New("data.meshca.issuance is undefined")}
	}
	return decision(rs[0].Expressions[0].Value)
}

// decision reads data.meshca.issuance's value.
func decision(v any) (Decision, error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return Decision{}, &EvalError{Err: fmt.Errorf("data.meshca.issuance is %T, not an object", v)}
	}
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
// with shared key terms and interned scalars, holding the top-level keys
// of reads.
func (in *Input) value(reads inputKeys) ast.Value {
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
	kv := make([][2]*ast.Term, 0, 5)
	if reads&readsNode != 0 {
		kv = append(kv, [2]*ast.Term{kNode, ast.ObjectTerm(
			[2]*ast.Term{kID, str(in.Node.ID)},
			[2]*ast.Term{kAttestor, str(in.Node.Attestor)},
			[2]*ast.Term{kSelectors, sels(in.Node.Selectors)})})
	}
	if reads&readsWorkload != 0 {
		kv = append(kv, [2]*ast.Term{kWorkload, ast.ObjectTerm([2]*ast.Term{kSelectors, sels(in.Workload.Selectors)})})
	}
	if reads&readsRequest != 0 {
		kv = append(kv, [2]*ast.Term{kRequest, ast.ObjectTerm(
			[2]*ast.Term{kSPIFFEID, str(in.Request.SPIFFEID)},
			[2]*ast.Term{kDNSNames, strs(in.Request.DNSNames)},
			[2]*ast.Term{kTTL, ast.InternedTerm(in.Request.TTL)},
			[2]*ast.Term{kProfile, str(in.Request.Profile)},
			[2]*ast.Term{kKind, str(in.Request.Kind)})})
	}
	if reads&readsEntries != 0 {
		kv = append(kv, [2]*ast.Term{kEntries, ast.ObjectTerm([2]*ast.Term{kAllow, ast.InternedTerm(in.Entries.Allow)},
			[2]*ast.Term{kReason, str(in.Entries.Reason)})})
	}
	if e := in.Entry; e != nil && reads&readsEntry != 0 {
		kv = append(kv, [2]*ast.Term{kEntry, ast.ObjectTerm(
			[2]*ast.Term{kID, str(e.ID)},
			[2]*ast.Term{kSPIFFEID, str(e.SPIFFEID)},
			[2]*ast.Term{kParentID, str(e.ParentID)},
			[2]*ast.Term{kSelectors, sels(e.Selectors)},
			[2]*ast.Term{kDNSNames, strs(e.DNSNames)},
			[2]*ast.Term{kTTL, ast.InternedTerm(e.TTL)},
			[2]*ast.Term{kProfile, str(e.Profile)})})
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
