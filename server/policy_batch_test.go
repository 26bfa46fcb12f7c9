package server

import (
	"context"
	"reflect"
	"testing"

	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// AuthorizeBatch decides a batch as Authorize decides each request alone,
// whatever repeats in it: identical requests (evaluated once), requests
// that differ in one input field, a deny with the policy's reason, and a
// derived ID for a workload outside the policy.
func TestPolicyAuthorizeBatchMatchesOneByOne(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	caller := &Caller{AgentID: "spiffe://example.org/meshca/agent/k8s_psat/c1/node-1",
		Node: &raftpb.Node{SpiffeId: "spiffe://example.org/meshca/agent/k8s_psat/c1/node-1", Attestor: "k8s_psat"}}
	other := &Caller{AgentID: "spiffe://example.org/meshca/agent/k8s_psat/c1/node-2",
		Node: &raftpb.Node{SpiffeId: "spiffe://example.org/meshca/agent/k8s_psat/c1/node-2", Attestor: "k8s_psat"}}
	entry := &raftpb.Entry{Id: "e1", ParentId: caller.AgentID, SpiffeId: "spiffe://example.org/web", Profile: "ecdsa"}
	sel := func(ns, sa string) []*raftpb.Selector {
		return []*raftpb.Selector{{Type: "k8s", Value: "ns:" + ns}, {Type: "k8s", Value: "sa:" + sa}}
	}
	derived := func(c *Caller, ns, sa string) *Request {
		return &Request{Kind: KindWorkloadSVID, Caller: c, EntryID: "policy:x", Profile: "ecdsa", WorkloadSelectors: sel(ns, sa)}
	}
	byEntry := func(c *Caller) *Request {
		return &Request{Kind: KindWorkloadSVID, Caller: c, Entry: entry, EntryID: "e1", Profile: "ecdsa"}
	}
	reqs := func() []*Request {
		return []*Request{derived(caller, "payments", "api"), derived(caller, "payments", "api"), derived(caller, "payments", "web"),
			derived(caller, "other", "api"), byEntry(caller), byEntry(caller), byEntry(other), derived(caller, "payments", "api"),
			derived(other, "payments", "api"), derived(caller, "shop", "x")}
	}
	p, err := policy.CompileIssuance(context.Background(), 1, []policy.File{{Path: "p.rego", Content: []byte(identityBenchPolicy)},
		{Path: "meshca/data.json", Content: []byte(`{"namespaces": ["payments", "shop"]}`)}})
	if err != nil {
		t.Fatal(err)
	}
	ip := &issuancePolicy{}
	a := &policyAuthorizer{base: entryAuthorizer{td: td}, td: td, ip: ip}
	ctx := context.Background()
	// The decisions of requests alone, evaluated every time.
	p.CacheDecisions(0)
	ip.cur.Store(&compiledIssuance{rev: 1, p: p})
	var want []Decision
	allowed, denied := 0, 0
	for _, r := range reqs() {
		d, err := a.Authorize(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, d)
		if d.Allow {
			allowed++
		} else {
			denied++
		}
	}
	// A batch decides the same, and so do requests alone answered from
	// the decision cache the batch filled.
	for _, cache := range []int{0, policy.DefaultDecisionCache} {
		p.CacheDecisions(cache)
		batch := reqs()
		got := make([]Decision, len(batch))
		if err := a.AuthorizeBatch(ctx, batch, got); err != nil {
			t.Fatal(err)
		}
		for i, r := range reqs() {
			alone, err := a.Authorize(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got[i], want[i]) || !reflect.DeepEqual(alone, want[i]) {
				t.Errorf("cache %d, request %d: batch decided %+v, alone %+v, want %+v", cache, i, got[i], alone, want[i])
			}
		}
		if cache > 0 && p.CachedDecisions() < uint64(len(batch)) {
			t.Errorf("%d decisions from the cache, want at least the %d requests decided alone", p.CachedDecisions(), len(batch))
		}
	}
	got := want
	if allowed == 0 || denied == 0 || got[0].SPIFFEID != "spiffe://example.org/ns/payments/sa/api" || got[2].SPIFFEID != "spiffe://example.org/ns/payments/sa/web" {
		t.Fatalf("the batch does not exercise allow and deny (%d, %d): %+v", allowed, denied, got)
	}
}

// The server counts its policy decisions, evaluated and remembered, over
// every revision: a new revision's empty cache does not reset the counts.
func TestIssuancePolicyCountsDecisionsAcrossRevisions(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	caller := &Caller{AgentID: "spiffe://example.org/meshca/agent/k8s_psat/c1/node-1",
		Node: &raftpb.Node{SpiffeId: "spiffe://example.org/meshca/agent/k8s_psat/c1/node-1", Attestor: "k8s_psat"}}
	r := &Request{Kind: KindWorkloadSVID, Caller: caller, EntryID: "policy:x", Profile: "ecdsa",
		WorkloadSelectors: []*raftpb.Selector{{Type: "k8s", Value: "ns:payments"}, {Type: "k8s", Value: "sa:api"}}}
	ip := &issuancePolicy{}
	a := &policyAuthorizer{base: entryAuthorizer{td: td}, td: td, ip: ip}
	ctx := context.Background()
	for rev := uint64(1); rev <= 2; rev++ {
		p, err := policy.CompileIssuance(ctx, rev, []policy.File{{Path: "p.rego", Content: []byte(identityBenchPolicy)},
			{Path: "meshca/data.json", Content: []byte(`{"namespaces": ["payments"]}`)}})
		if err != nil {
			t.Fatal(err)
		}
		ip.store(&compiledIssuance{rev: rev, p: p})
		evaluated0, cached0 := ip.decisions()
		for range 3 {
			if d, err := a.Authorize(ctx, r); err != nil || !d.Allow {
				t.Fatalf("revision %d: %+v %v", rev, d, err)
			}
		}
		evaluated, cached := ip.decisions()
		if evaluated-evaluated0 != 1 || cached-cached0 != 2 {
			t.Errorf("revision %d: %d evaluated and %d cached of 3 equal decisions (before: %d, %d), want 1 and 2",
				rev, evaluated-evaluated0, cached-cached0, evaluated0, cached0)
		}
	}
	ip.store(nil)
	if evaluated, cached := ip.decisions(); evaluated < 2 || cached < 4 {
		t.Errorf("after the policy is cleared: %d evaluated, %d cached; the counts went back", evaluated, cached)
	}
}
