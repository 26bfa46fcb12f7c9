package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// BenchmarkNodeAPIIssue measures end-to-end issuance through the node API
// of one server: TLS 1.3 with the agent's SVID, CSR checks, signing, and
// every certificate's ledger record committed (Raft, fsync) before the
// batch returns. 64 concurrent callers (agents) send batches of 1 or 64 CSRs; the
// client runs in the same process, on the same two cores.
//
//	go test ./internal/e2e -run '^$' -bench NodeAPIIssue -benchtime 20000x
func BenchmarkNodeAPIIssue(b *testing.B) {
	e := startServerWith(b, func(c *server.Config) { c.NodeSignRate, c.NodeSignBurst = 1e9, 1<<20 })
	token := e.token()
	en := e.entry(agentIDFor(token), "spiffe://example.org/bench/w", time.Hour, "unix:uid:1")
	client := attestedClient(b, e, token)
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			const callers = 64
			req := &nodepb.SignX509SVIDsRequest{}
			for k := 0; k < batch; k++ {
				req.Requests = append(req.Requests, &nodepb.SVIDRequest{EntryId: en.Id, Csr: csr})
			}
			issueBench(b, client, req, batch, callers)
		})
	}
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// issueBench sends b.N CSRs in batches of req from callers goroutines and
// reports certificates/s and call latencies.
func issueBench(b *testing.B, client nodepb.NodeClient, req *nodepb.SignX509SVIDsRequest, batch, callers int) {
	var next atomic.Int64
	lat := make([][]time.Duration, callers)
	var wg sync.WaitGroup
	cpu0 := processCPU()
	b.ResetTimer()
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
	// CPU time of client and server together: less noisy than the rate on
	// a shared machine.
	b.ReportMetric(float64(cpu.Microseconds())/float64(len(all)*batch), "cpu-µs/cert")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms/call")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms/call")
}

// attestedClient attests with a join token over the node API and returns a
// client authenticated with the agent SVID it got.
func attestedClient(b *testing.B, e *env, token string) nodepb.NodeClient {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	conn, err := grpc.NewClient("passthrough:///"+e.srv.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.TLSClientConfig(bundleSource(e), tlsconfig.AuthorizeMemberOf(td)))))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	ev := jointoken.NewEvidence(token)
	payload, err := ev.Payload()
	if err != nil {
		b.Fatal(err)
	}
	stream, err := nodepb.NewNodeClient(conn).Attest(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	if err := stream.Send(&nodepb.AttestRequest{Step: &nodepb.AttestRequest_Start{Start: &nodepb.AttestStart{Attestor: ev.Name(), Payload: payload, Csr: csr}}}); err != nil {
		b.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		b.Fatal(err)
	}
	var raw []byte
	for _, c := range resp.GetResult().GetSvidChain() {
		raw = append(raw, c...)
	}
	keyDER, _ := ca.ECDSA.MarshalPrivateKey(key)
	svid, err := x509svid.ParseRaw(raw, keyDER)
	if err != nil {
		b.Fatal(err)
	}
	mconn, err := grpc.NewClient("passthrough:///"+e.srv.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(svid, bundleSource(e), tlsconfig.AuthorizeMemberOf(td)))))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mconn.Close() })
	return nodepb.NewNodeClient(mconn)
}
