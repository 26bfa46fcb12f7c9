package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func compileTB(tb testing.TB, src string) *Issuance {
	tb.Helper()
	p, err := CompileIssuance(context.Background(), 1, []File{{Path: "p.rego", Content: []byte(src)}})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// A decision is remembered by the fields the policy reads: an input equal
// in them is answered from the cache, with the same decision; one that
// differs in a field read is evaluated.
func TestIssuanceCachesDecisionsByWhatThePolicyReads(t *testing.T) {
	ctx := context.Background()
	p := compileTB(t, `package meshca.issuance
allow if input.request.spiffe_id == "spiffe://example.org/ok"
reason := sprintf("%s may not have %s", [input.node.id, input.request.spiffe_id]) if not allow
`)
	decide := func(node, attestor, id string) Decision {
		t.Helper()
		in := workloadInput("payments")
		in.Node.ID, in.Node.Attestor, in.Request.SPIFFEID = node, attestor, id
		d, err := p.Decide(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	steps := []struct {
		node, attestor, id string
		allow              bool
		reason             string
		hits               uint64
	}{
		{"n1", "join_token", "spiffe://example.org/ok", true, "", 0},
		{"n1", "join_token", "spiffe://example.org/ok", true, "", 1},
		{"n1", "k8s_psat", "spiffe://example.org/ok", true, "", 2}, // attestor is not read
		{"n1", "join_token", "spiffe://example.org/no", false, "n1 may not have spiffe://example.org/no", 2},
		{"n2", "join_token", "spiffe://example.org/no", false, "n2 may not have spiffe://example.org/no", 2},
		{"n1", "join_token", "spiffe://example.org/no", false, "n1 may not have spiffe://example.org/no", 3},
	}
	for i, s := range steps {
		d := decide(s.node, s.attestor, s.id)
		if d.Allow != s.allow || d.Reason != s.reason {
			t.Errorf("step %d: decision %+v, want allow %v reason %q", i, d, s.allow, s.reason)
		}
		if got := p.CachedDecisions(); got != s.hits {
			t.Errorf("step %d: %d cached decisions, want %d", i, got, s.hits)
		}
	}
	p.CacheDecisions(0)
	decide("n1", "join_token", "spiffe://example.org/ok")
	decide("n1", "join_token", "spiffe://example.org/ok")
	if got := p.CachedDecisions(); got != 0 {
		t.Errorf("CacheDecisions(0): %d cached decisions", got)
	}
}

// A policy that calls a nondeterministic builtin, or one that checks
// certificates against the current time, is evaluated every time, and an
// evaluation error is never remembered.
func TestIssuanceDoesNotCacheWhatMayChange(t *testing.T) {
	ctx := context.Background()
	for name, tc := range map[string]struct {
		src     string
		wantErr bool
	}{
		"time":  {"package meshca.issuance\nallow if time.now_ns() > 0\n", false},
		"rand":  {"package meshca.issuance\nallow if rand.intn(\"x\", 10) >= 0\n", false},
		"x509":  {"package meshca.issuance\nallow if { [ok, _] := crypto.x509.parse_and_verify_certificates(input.request.spiffe_id); not ok }\n", false},
		"error": {"package meshca.issuance\nallow if to_number(input.request.spiffe_id) > 1\n", true},
	} {
		t.Run(name, func(t *testing.T) {
			p := compileTB(t, tc.src)
			in := workloadInput("payments")
			in.Request.SPIFFEID = "spiffe://example.org/x"
			for range 3 {
				d, err := p.Decide(ctx, in)
				var ee *EvalError
				if tc.wantErr != errors.As(err, &ee) || d.Allow == tc.wantErr {
					t.Fatalf("decision %+v, %v", d, err)
				}
			}
			if got := p.CachedDecisions(); got != 0 {
				t.Errorf("%d cached decisions, want none", got)
			}
		})
	}
}

// The cache holds at most the decisions it was given room for, and the
// most recent are those it keeps.
func TestIssuanceDecisionCacheIsBounded(t *testing.T) {
	ctx := context.Background()
	p := compileTB(t, "package meshca.issuance\nallow if startswith(input.request.spiffe_id, \"spiffe://example.org/\")\n")
	p.CacheDecisions(8)
	in := workloadInput("payments")
	for i := range 1000 {
		in.Request.SPIFFEID = fmt.Sprintf("spiffe://example.org/w%d", i)
		if d, err := p.Decide(ctx, in); err != nil || !d.Allow {
			t.Fatalf("decision %+v, %v", d, err)
		}
		if n := len(p.cache.cur) + len(p.cache.old); n > 8 {
			t.Fatalf("%d decisions held, room for 8", n)
		}
	}
	if _, err := p.Decide(ctx, in); err != nil || p.CachedDecisions() != 1 {
		t.Fatalf("the last decision is not held: %v, %d cached", err, p.CachedDecisions())
	}
}

// Inputs that differ in what the policy reads have different keys, however
// their strings split.
func TestIssuanceInputKeysDiffer(t *testing.T) {
	a, b := workloadInput("payments"), workloadInput("payments")
	a.Workload.Selectors = []Selector{{"k8s", "ns:a"}}
	b.Workload.Selectors = []Selector{{"k8sn", "s:a"}}
	c := workloadInput("payments")
	c.Entry = &EntryInput{}
	d := workloadInput("payments")
	d.Request.DNSNames = []string{""}
	keys := map[string]string{}
	for name, in := range map[string]*Input{"a": a, "b": b, "c": c, "d": d, "base": workloadInput("payments")} {
		k := string(in.key(readsAll, nil))
		if other, ok := keys[k]; ok {
			t.Errorf("inputs %s and %s have one key", name, other)
		}
		keys[k] = name
	}
}

// Long inputs are evaluated every time, and the keys held stay within
// maxCacheBytes however many decisions there is room for.
func TestIssuanceDecisionCacheBoundsItsBytes(t *testing.T) {
	ctx := context.Background()
	p := compileTB(t, "package meshca.issuance\nallow if startswith(input.request.spiffe_id, \"spiffe://example.org/\")\n")
	in := workloadInput("payments")
	in.Request.SPIFFEID = "spiffe://example.org/" + strings.Repeat("x", maxCachedKey)
	for range 2 {
		if d, err := p.Decide(ctx, in); err != nil || !d.Allow {
			t.Fatalf("decision %+v, %v", d, err)
		}
	}
	if p.CachedDecisions() != 0 || len(p.cache.cur) != 0 {
		t.Fatalf("an input of %d bytes was remembered", len(in.Request.SPIFFEID))
	}
	long := "spiffe://example.org/" + strings.Repeat("y", maxCachedKey-100)
	for i := range 3 * maxCacheBytes / maxCachedKey {
		in.Request.SPIFFEID = fmt.Sprintf("%s%d", long, i)
		if d, err := p.Decide(ctx, in); err != nil || !d.Allow {
			t.Fatalf("decision %+v, %v", d, err)
		}
	}
	held := 0
	for _, m := range []map[string]Decision{p.cache.cur, p.cache.old} {
		for k := range m {
			held += len(k)
		}
	}
	if held > maxCacheBytes || held < maxCacheBytes/4 {
		t.Fatalf("%d bytes of keys held, want at most %d (and the cache in use)", held, maxCacheBytes)
	}
}
