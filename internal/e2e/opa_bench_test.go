package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// benchPolicy extends entry matching with a rule on the node, as a real
// operator policy would: a decision on every issuance.
const benchPolicy = `package meshca.issuance

default allow := false

allow if {
	input.entries.allow
	startswith(input.node.id, "spiffe://example.org/meshca/agent/")
	not input.request.spiffe_id in data.meshca.blocked
}

reason := "blocked" if not allow
`

// BenchmarkIssuePolicy measures end-to-end issuance through the node API
// with no issuance policy and with one, 64 concurrent callers, batches of 1
// and 64 CSRs, client in the same process. Every request is the same
// workload's renewal: with decisions=cached (the default) the policy
// decides it once and the server remembers the decision; with
// decisions=evaluated (--issuance-decision-cache -1) OPA evaluates every
// request (a batch's equal requests once). Each server runs policyRounds
// rounds of policy=off then on:
//
//	go test ./internal/e2e -run '^$' -bench IssuePolicy -benchtime 20000x
func BenchmarkIssuePolicy(b *testing.B) {
	for _, mode := range []struct {
		name  string
		cache int
	}{{"cached", 0}, {"evaluated", -1}} {
		b.Run("decisions="+mode.name, func(b *testing.B) {
			e := startServerWith(b, func(c *server.Config) {
				c.NodeSignRate, c.NodeSignBurst, c.IssuanceDecisionCache = 1e9, 1<<20, mode.cache
			})
			token := e.token()
			en := e.entry(agentIDFor(token), "spiffe://example.org/bench/w", time.Hour, "unix:uid:1")
			client := attestedClient(b, e, token)
			key, _ := ca.ECDSA.GenerateKey()
			csr, _ := ca.ECDSA.CreateCSR(key)
			// Rounds alternate off and on: the server slows a little as
			// its ledger grows, which would count against whichever ran
			// second.
			for round := 1; round <= policyRounds; round++ {
				for _, pol := range []string{"off", "on"} {
					files := []*operatorpb.PolicyFile(nil)
					if pol == "on" {
						files = []*operatorpb.PolicyFile{{Path: "p.rego", Content: []byte(benchPolicy)},
							{Path: "meshca/data.json", Content: []byte(`{"blocked": ["spiffe://example.org/x"]}`)}}
					}
					if _, err := e.op.SetIssuancePolicy(context.Background(), &operatorpb.SetIssuancePolicyRequest{Files: files}); err != nil {
						b.Fatal(err)
					}
					for _, batch := range []int{1, 64} {
						b.Run(fmt.Sprintf("round=%d/policy=%s/batch=%d", round, pol, batch), func(b *testing.B) { benchIssue(b, client, en.Id, csr, batch) })
					}
				}
			}
		})
	}
}

// policyRounds is how many rounds of off and on BenchmarkIssuePolicy runs.
const policyRounds = 5

func benchIssue(b *testing.B, client nodepb.NodeClient, entryID string, csr []byte, batch int) {
	const callers = 64
	req := &nodepb.SignX509SVIDsRequest{}
	for k := 0; k < batch; k++ {
		req.Requests = append(req.Requests, &nodepb.SVIDRequest{EntryId: entryID, Csr: csr})
	}
	var next atomic.Int64
	lat := make([][]time.Duration, callers)
	var wg sync.WaitGroup
	b.ResetTimer()
	cpu0 := processCPU()
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for next.Add(int64(batch)) <= int64(b.N) {
				t0 := time.Now()
				resp, err := client.SignX509SVIDs(context.Background(), req)
				if err != nil {
					b.Error(err)
					return
				}
				for _, r := range resp.Results {
					if r.Error != "" {
						b.Error(r.Error)
						return
					}
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}(i)
	}
	wg.Wait()
	b.StopTimer()
	cpu := processCPU() - cpu0
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	b.ReportMetric(float64(len(all)*batch)/b.Elapsed().Seconds(), "certs/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms/call")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms/call")
	// CPU of the whole test process (server and client) per certificate:
	// less sensitive than certs/s to other load on the machine.
	b.ReportMetric(float64(cpu.Microseconds())/float64(len(all)*batch), "cpu-µs/cert")
}

// BenchmarkExtAuthz measures ext_authz Check calls on one agent's socket
// (gRPC over the Unix socket, OPA-Envoy input, the bundle's decision,
// audit), 16 concurrent callers:
//
//	go test ./internal/e2e -run '^$' -bench ExtAuthz -benchtime 20000x
func BenchmarkExtAuthz(b *testing.B) {
	e := startServerWith(b, nil)
	ctx := context.Background()
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: envoyFiles("one", "spiffe://example.org/a")}); err != nil {
		b.Fatal(err)
	}
	token := e.token()
	ag := e.startAgentConfig(token, func(c *agent.Config) { c.ExtAuthzBundle = "authz" })
	conn := sdsConnTB(b, ag)
	az := authv3.NewAuthorizationClient(conn)
	req := checkRequest("spiffe://example.org/a", "GET", "/api/items?page=2")
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := az.Check(ctx, req)
		if err == nil && resp.Status.Code == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("ext_authz never allowed: %v %v", resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	const callers = 16
	var next atomic.Int64
	lat := make([][]time.Duration, callers)
	var wg sync.WaitGroup
	b.ResetTimer()
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				resp, err := az.Check(ctx, req)
				if err != nil || resp.Status.Code != 0 {
					b.Errorf("Check: %v %v", resp, err)
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}(i)
	}
	wg.Wait()
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/b.Elapsed().Seconds(), "checks/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}

func sdsConnTB(tb testing.TB, a *agent.Agent) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+a.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}
