package policy

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"testing"

	"github.com/open-policy-agent/opa/v1/rego"
)

// The decision's virtual-document cache decides as OPA's own: through
// with (frames pushed and popped), undefined documents, a partial rule
// looked up by many keys (past the linear search) and rules that see
// other rules' values.
func TestFlatVirtualCacheDecidesAsOPAs(t *testing.T) {
	ctx := context.Background()
	for name, src := range map[string]string{
		"with": `package meshca.issuance
mint if input.request.kind == "mint"
allow if { mint with input.request.kind as "mint"; not mint }
spiffe_id := "spiffe://example.org/with" if { mint with input.request.kind as "mint" }`,
		"undefined": `package meshca.issuance
q if input.request.kind == "nothing"
allow if { not q; not q }
reason := "r" if q`,
		"many keys": `package meshca.issuance
allowed contains x if some x in numbers.range(1, 200)
allow if { every i in numbers.range(1, 200) { allowed[i] }; not allowed[201]; count(allowed) == 200 }
ttl := count([i | some i in numbers.range(1, 50); allowed[i]]) * 60`,
		"denied": `package meshca.issuance
allow if input.request.kind == "mint"
reason := sprintf("%s is not a mint", [input.request.kind]) if not allow`,
		"with data": `package meshca.issuance
v := 1
double := v * 2
allow if { double == 4 with data.meshca.issuance.v as 2; double == 2 }`,
	} {
		t.Run(name, func(t *testing.T) {
			p := compileTB(t, src)
			p.CacheDecisions(0)
			in := workloadInput("payments")
			got, err := p.Decide(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			want, err := decideWithOPAsCache(ctx, p, in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("decided %+v, OPA's cache %+v", got, want)
			}
			if name != "denied" && !got.Allow {
				t.Errorf("decided %+v: the policy should allow", got)
			}
		})
	}
}

// decideWithOPAsCache decides as Decide does, with OPA's own cache of
// virtual documents.
func decideWithOPAsCache(ctx context.Context, p *Issuance, in *Input) (Decision, error) {
	fields := map[string]any{}
	input := in.value(p.reads)
	for _, q := range []*fieldQuery{p.allowed, p.reason} {
		if q == nil {
			continue
		}
		if q == p.reason {
			if allow, _ := fields["allow"].(bool); allow {
				break
			}
		}
		rs, err := q.pq.Eval(ctx, rego.EvalParsedInput(input))
		if err != nil {
			return Decision{}, &EvalError{Err: err}
		}
		switch {
		case len(rs) != 1:
		case q.one != "":
			fields[q.one] = rs[0].Expressions[0].Value
		default:
			obj, ok := rs[0].Expressions[0].Value.(map[string]any)
			if !ok {
				return Decision{}, &EvalError{Err: errors.New("not an object")}
			}
			maps.Copy(fields, obj)
		}
	}
	return decision(fields)
}
