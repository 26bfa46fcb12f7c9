package server

import (
	"context"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/wallclock"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// identityBenchPolicy derives spiffe://example.org/ns/<ns>/sa/<sa> from a
// workload's k8s selectors for the namespaces of data.json, and keeps
// entries: README's example. ns and sa are complete rules, evaluated once
// per decision.
const identityBenchPolicy = `package meshca.issuance

default allow := false

ns := substring(s.value, 3, -1) if {
	some s in input.workload.selectors
	s.type == "k8s"
	startswith(s.value, "ns:")
}

sa := substring(s.value, 3, -1) if {
	some s in input.workload.selectors
	s.type == "k8s"
	startswith(s.value, "sa:")
}

allow if input.entries.allow

allow if {
	not input.entry
	ns in data.meshca.namespaces
}

spiffe_id := concat("", ["spiffe://example.org/ns/", ns, "/sa/", sa]) if {
	not input.entry
	allow
}

reason := "no namespace of the identity policy" if not allow
`

// identityFuncBenchPolicy decides the same with a helper function: OPA
// evaluates a function with arguments again at every call (three here).
const identityFuncBenchPolicy = `package meshca.issuance

default allow := false

k8s(name) := v if {
	some s in input.workload.selectors
	s.type == "k8s"
	startswith(s.value, concat("", [name, ":"]))
	v := substring(s.value, count(name) + 1, -1)
}

allow if input.entries.allow

allow if {
	not input.entry
	k8s("ns") in data.meshca.namespaces
}

spiffe_id := sprintf("spiffe://example.org/ns/%s/sa/%s", [k8s("ns"), k8s("sa")]) if {
	not input.entry
	allow
}

reason := "no namespace of the identity policy" if not allow
`

// BenchmarkIssuanceDecision measures one Authorize call of the issuance
// pipeline: registration entries alone (no policy), and the identity
// policies above deciding a workload SVID with an entry and with none,
// evaluated every time (the decision cache off), and the latter answered
// from the decision cache (policy-derived-cached: a renewal). It reports
// p50 and p99 of single calls:
//
//	go test ./server -run '^$' -bench IssuanceDecision -benchtime 200000x
func BenchmarkIssuanceDecision(b *testing.B) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	caller := &Caller{AgentID: "spiffe://example.org/meshca/agent/k8s_psat/c1/node-1",
		Node: &raftpb.Node{SpiffeId: "spiffe://example.org/meshca/agent/k8s_psat/c1/node-1", Attestor: "k8s_psat",
			Selectors: []*raftpb.Selector{{Type: "k8s_psat", Value: "cluster:c1"}, {Type: "k8s_psat", Value: "agent_ns:meshca"}}}}
	entry := &raftpb.Entry{Id: "e1", ParentId: caller.AgentID, SpiffeId: "spiffe://example.org/web", Profile: "ecdsa",
		Selectors: []*raftpb.Selector{{Type: "k8s", Value: "ns:payments"}, {Type: "k8s", Value: "sa:api"}}}
	entries := &Request{Kind: KindWorkloadSVID, Caller: caller, Entry: entry, EntryID: "e1", Profile: "ecdsa"}
	derived := &Request{Kind: KindWorkloadSVID, Caller: caller, EntryID: "policy:x", Profile: "ecdsa",
		WorkloadSelectors: entry.Selectors}
	ip := &issuancePolicy{}
	a := &policyAuthorizer{base: entryAuthorizer{td: td}, td: td, ip: ip}
	run := func(b *testing.B, r *Request, want string) {
		ctx := context.Background()
		lat := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		// CPU time of this thread: robust to other load on the machine
		// (wall-clock percentiles are not).
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cpu0 := threadCPU(b)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := wallclock.Now()
			d, err := a.Authorize(ctx, r)
			lat = append(lat, wallclock.Since(t0))
			if err != nil || !d.Allow || (want != "" && d.SPIFFEID != want) {
				b.Fatalf("decision %+v %v", d, err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64((threadCPU(b)-cpu0).Nanoseconds())/1000/float64(b.N), "cpu-µs/op")
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1000, "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1000, "p99-µs")
	}
	b.Run("entries", func(b *testing.B) { run(b, entries, "spiffe://example.org/web") })
	compile := func(b *testing.B, src string, cache int) {
		p, err := policy.CompileIssuance(context.Background(), 1, []policy.File{{Path: "p.rego", Content: []byte(src)},
			{Path: "meshca/data.json", Content: []byte(`{"namespaces": ["payments", "shop"]}`)}})
		if err != nil {
			b.Fatal(err)
		}
		p.CacheDecisions(cache)
		ip.cur.Store(&compiledIssuance{rev: 1, p: p})
	}
	b.Run("policy-entry", func(b *testing.B) {
		compile(b, identityBenchPolicy, 0)
		run(b, entries, "spiffe://example.org/web")
	})
	b.Run("policy-derived", func(b *testing.B) {
		compile(b, identityBenchPolicy, 0)
		run(b, derived, "spiffe://example.org/ns/payments/sa/api")
	})
	b.Run("policy-derived-func", func(b *testing.B) {
		compile(b, identityFuncBenchPolicy, 0)
		run(b, derived, "spiffe://example.org/ns/payments/sa/api")
	})
	b.Run("policy-derived-cached", func(b *testing.B) {
		compile(b, identityBenchPolicy, policy.DefaultDecisionCache)
		run(b, derived, "spiffe://example.org/ns/payments/sa/api")
	})
}

// threadCPU is the CPU time (user and system) of the calling OS thread.
func threadCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
