package policy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"
)

// identityPolicy derives spiffe://td/ns/<ns>/sa/<sa> from a workload's
// attested k8s selectors, for namespaces listed in data.json, and keeps
// registration entries working beside it.
const identityPolicy = `package meshca.issuance

default allow := false

k8s(name) := v if {
	some s in input.workload.selectors
	s.type == "k8s"
	startswith(s.value, concat("", [name, ":"]))
	v := substring(s.value, count(name) + 1, -1)
}

derived := sprintf("spiffe://example.org/ns/%s/sa/%s", [k8s("ns"), k8s("sa")])

allow if input.entries.allow

allow if {
	input.request.kind == "workload_svid"
	not input.entry
	k8s("ns") in data.meshca.namespaces
}

spiffe_id := derived if {
	not input.entry
	allow
}

ttl := 3600 if spiffe_id

reason := "workload is in no namespace of the identity policy" if not allow

identity_selector_types := {"k8s"}
`

func workloadInput(ns string) *Input {
	return &Input{
		Node:     NodeInput{ID: "spiffe://example.org/meshca/agent/k8s_psat/c1/n1", Attestor: "k8s_psat"},
		Workload: WorkloadInput{Selectors: []Selector{{"k8s", "ns:" + ns}, {"k8s", "sa:api"}}},
		Request:  RequestInput{Kind: "workload_svid", Profile: "ecdsa"},
		Entries:  EntriesInput{Reason: "no entry"},
	}
}

func TestIssuanceIdentityAsPolicy(t *testing.T) {
	ctx := context.Background()
	p, err := CompileIssuance(ctx, 1, []File{
		{Path: "identity.rego", Content: []byte(identityPolicy)},
		{Path: "meshca/data.json", Content: []byte(`{"namespaces": ["payments"]}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.SelectorTypes) != 1 || p.SelectorTypes[0] != "k8s" {
		t.Fatalf("selector types %v", p.SelectorTypes)
	}
	d, err := p.Decide(ctx, workloadInput("payments"))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Allow || d.SPIFFEID != "spiffe://example.org/ns/payments/sa/api" || d.TTL != time.Hour {
		t.Fatalf("decision %+v", d)
	}
	d, err = p.Decide(ctx, workloadInput("default"))
	if err != nil || d.Allow || d.Reason != "workload is in no namespace of the identity policy" {
		t.Fatalf("decision %+v, %v", d, err)
	}
	in := workloadInput("default")
	in.Entry = &EntryInput{ID: "e1", SPIFFEID: "spiffe://example.org/web"}
	in.Entries = EntriesInput{Allow: true}
	if d, err = p.Decide(ctx, in); err != nil || !d.Allow || d.SPIFFEID != "" {
		t.Fatalf("an entry's request: %+v, %v", d, err)
	}
}

func TestIssuanceRefusesBadPolicies(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		files []File
		want  string
	}{
		{"syntax", []File{{Path: "p.rego", Content: []byte("package meshca.issuance\nallow if {\n")}}, "p.rego:"},
		{"v0 syntax", []File{{Path: "p.rego", Content: []byte("package meshca.issuance\nallow { true }\n")}}, "p.rego:2"},
		{"unknown input field", []File{{Path: "p.rego", Content: []byte("package meshca.issuance\nallow if input.node.idd == \"x\"\n")}}, "p.rego:2"},
		{"unsafe var", []File{{Path: "p.rego", Content: []byte("package meshca.issuance\nallow if x == 1\n")}}, "p.rego:2"},
		{"wrong package", []File{{Path: "p.rego", Content: []byte("package other\nallow := true\n")}}, "package meshca.issuance"},
		{"data not an object", []File{{Path: "p.rego", Content: []byte("package meshca.issuance\nallow := true\n")}, {Path: "data.json", Content: []byte(`[1]`)}}, "data.json: data must be a JSON object, not an array"},
		{"no module", []File{{Path: "data.json", Content: []byte(`{}`)}}, "no Rego module"},
		{"escaping path", []File{{Path: "../p.rego", Content: []byte("package meshca.issuance\n")}}, "not a relative path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CompileIssuance(ctx, 1, tc.files)
			var ie *InvalidError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want an InvalidError with %q", err, tc.want)
			}
		})
	}
}

// A policy that fails at evaluation is an EvalError: the caller denies.
func TestIssuanceEvalErrorFailsClosed(t *testing.T) {
	ctx := context.Background()
	for name, src := range map[string]string{
		"conflict":  "package meshca.issuance\nallow := true\nallow := false if true\n",
		"reason":    "package meshca.issuance\nallow := false\nreason := \"a\"\nreason := \"b\" if true\n",
		"builtin":   "package meshca.issuance\nallow if to_number(input.request.spiffe_id) > 1\n",
		"bad shape": "package meshca.issuance\nallow := \"yes\"\n",
		"bad ttl":   "package meshca.issuance\nallow := true\nttl := -1\n",
	} {
		t.Run(name, func(t *testing.T) {
			p, err := CompileIssuance(ctx, 1, []File{{Path: "p.rego", Content: []byte(src)}})
			if err != nil {
				t.Fatalf("refused at compile time: %v", err)
			}
			in := workloadInput("payments")
			in.Request.SPIFFEID = "spiffe://example.org/x"
			d, err := p.Decide(ctx, in)
			var ee *EvalError
			if !errors.As(err, &ee) || d.Allow {
				t.Fatalf("decision %+v, error %v: want an EvalError", d, err)
			}
		})
	}
}

func testKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// The input holds only the fields a policy names; a policy that looks at
// input or one of its keys as a whole, by a computed key or through a
// function still sees all of it.
func TestIssuanceInputHoldsWhatThePolicyReads(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		rules string
		reads inputFields
		input string // the input the policy is given, when it is not all of it
	}{
		{`allow if count(input) == 5`, readsAll, ""},
		{`allow if { some k, _ in input; k == "entry" }`, readsAll, ""},
		{`allow if { k := "node"; input[k].attestor == "k8s_psat" }`, readsAll, ""},
		{`f(x) := x.node.attestor` + "\n" + `allow if f(input) == "k8s_psat"`, readsAll, ""},
		{`allow if input.node.attestor == "k8s_psat"`, fNodeAttestor, `{"node": {"attestor": "k8s_psat"}}`},
		{`allow if { n := input.node; n.attestor == "k8s_psat" }`, readsNode, ""},
		{`allow if { k := "attestor"; input.node[k] == "k8s_psat" }`, readsNode, ""},
		{`allow if count(input.request) == 5`, readsRequest, ""},
		{`allow if { input.entry.id == "e1"; not input.entries.allow; count(input.workload.selectors) == 2 }`,
			fEntryID | fEntriesAllow | fWorkloadSelectors,
			`{"entries": {"allow": false}, "entry": {"id": "e1"}, "workload": {"selectors": [{"type": "k8s", "value": "ns:payments"}, {"type": "k8s", "value": "sa:api"}]}}`},
		{`allow if { not input.entry; input.request.kind == "workload_svid" }`, readsEntry | fRequestKind, ""},
	} {
		t.Run(tc.rules, func(t *testing.T) {
			p, err := CompileIssuance(ctx, 1, []File{{Path: "p.rego", Content: []byte("package meshca.issuance\n" + tc.rules + "\n")}})
			if err != nil {
				t.Fatal(err)
			}
			if p.reads != tc.reads {
				t.Errorf("reads %018b, want %018b", p.reads, tc.reads)
			}
			in := workloadInput("payments")
			if !strings.Contains(tc.rules, "not input.entry;") {
				in.Entry = &EntryInput{ID: "e1"}
			}
			if tc.input != "" {
				if got := in.value(p.reads).String(); got != tc.input {
					t.Errorf("input %s, want %s", got, tc.input)
				}
			}
			if d, err := p.Decide(ctx, in); err != nil || !d.Allow {
				t.Fatalf("decision %+v, %v: the policy did not see the input it reads", d, err)
			}
		})
	}
}

// Only the decision's rules are evaluated, and what they use, reason only
// when allow is not true: a helper rule that would fail at evaluation
// denies when the decision uses it, and costs nothing when nothing does.
func TestIssuanceEvaluatesTheDecisionFields(t *testing.T) {
	ctx := context.Background()
	for src, allow := range map[string]bool{
		"package meshca.issuance\nallow := true\nunused := to_number(\"x\")\n":                                   true,
		"package meshca.issuance\nallow if used > 0\nused := to_number(\"x\")\n":                                 false,
		"package meshca.issuance\nallow := false\nreason := sprintf(\"%d\", [used])\nused := to_number(\"x\")\n": false,
		"package meshca.issuance\nallow := true\nreason := sprintf(\"%d\", [used])\nused := to_number(\"x\")\n":  true,
		"package meshca.issuance\nallow := true\nttl := used\nused := to_number(\"x\")\n":                        false,
	} {
		p, err := CompileIssuance(ctx, 1, []File{{Path: "p.rego", Content: []byte(src)}})
		if err != nil {
			t.Fatalf("%q: %v", src, err)
		}
		d, err := p.Decide(ctx, workloadInput("payments"))
		var ee *EvalError
		switch {
		case allow && (err != nil || !d.Allow):
			t.Errorf("%q: decision %+v, %v: want allowed (the failing rule is not used)", src, d, err)
		case !allow && (!errors.As(err, &ee) || d.Allow):
			t.Errorf("%q: decision %+v, %v: want an EvalError (the decision uses the failing rule)", src, d, err)
		}
	}
}

// The decision's fields may come from a rule above them (an object rule
// in package meshca) or from data.json, not only from rules of package
// meshca.issuance: all are asked.
func TestIssuanceFieldsFromAnyRuleOrData(t *testing.T) {
	ctx := context.Background()
	for name, tc := range map[string]struct {
		files []File
		want  Decision
	}{
		"rule with a ref head": {[]File{{Path: "p.rego", Content: []byte("package meshca.issuance\nallow := true\n")},
			{Path: "q.rego", Content: []byte("package meshca\nissuance.spiffe_id := \"spiffe://example.org/q\"\n")}},
			Decision{Allow: true, SPIFFEID: "spiffe://example.org/q"}},
		"object rule": {[]File{{Path: "q.rego", Content: []byte("package meshca\nissuance := {\"allow\": true, \"spiffe_id\": \"spiffe://example.org/q\"} if true\n")}},
			Decision{Allow: true, SPIFFEID: "spiffe://example.org/q"}},
		"rule with variable keys": {[]File{{Path: "q.rego", Content: []byte("package meshca\nissuance[k] := v if some k, v in {\"allow\": false, \"reason\": \"computed\"}\n")}},
			Decision{Reason: "computed"}},
		"data": {[]File{{Path: "p.rego", Content: []byte("package meshca.issuance\nallow := false\n")},
			{Path: "meshca/issuance/data.json", Content: []byte(`{"reason": "from data"}`)}}, Decision{Reason: "from data"}},
	} {
		t.Run(name, func(t *testing.T) {
			p, err := CompileIssuance(ctx, 1, tc.files)
			if err != nil {
				t.Fatal(err)
			}
			d, err := p.Decide(ctx, workloadInput("payments"))
			if err != nil || d.Allow != tc.want.Allow || d.Reason != tc.want.Reason || d.SPIFFEID != tc.want.SPIFFEID {
				t.Fatalf("decision %+v, %v: want %+v", d, err, tc.want)
			}
		})
	}
}
