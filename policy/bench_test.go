package policy

import (
	"context"
	"testing"
)

// BenchmarkDecide measures one issuance decision of the identity policy
// of the tests, a workload with no entry (go test ./policy -bench Decide).
func BenchmarkDecide(b *testing.B) {
	ctx := context.Background()
	p, err := CompileIssuance(ctx, 1, []File{
		{Path: "identity.rego", Content: []byte(identityPolicy)},
		{Path: "meshca/data.json", Content: []byte(`{"namespaces": ["payments"]}`)},
	})
	if err != nil {
		b.Fatal(err)
	}
	in := workloadInput("payments")
	b.ReportAllocs()
	for b.Loop() {
		d, err := p.Decide(ctx, in)
		if err != nil || !d.Allow {
			b.Fatal(d, err)
		}
	}
}
