package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/sds"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// mintCert has the operator API mint a certificate and returns it.
func mintCert(tb testing.TB, op operatorpb.OperatorClient, id string) *x509.Certificate {
	tb.Helper()
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	resp, err := op.MintX509SVID(tctx(tb, 20*time.Second), &operatorpb.MintX509SVIDRequest{SpiffeId: id, Csr: csr})
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(resp.Chain[0])
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// BenchmarkRevokeToSDSValidationContexts measures the time from a
// revocation (the operator API call) until 1,000 Envoy-like SDS streams on
// an agent (10 connections of 100 streams, each ACKing every response)
// have received a ROOTCA validation context whose CRL lists the serial.
// One server, one agent, the client streams in the same process.
//
//	go test ./internal/e2e -run '^$' -bench RevokeToSDS -benchtime 20x
func BenchmarkRevokeToSDSValidationContexts(b *testing.B) {
	const conns, perConn = 10, 100
	e := startServer(b)
	token := e.token()
	// SDS serves an attested caller that some entry matches: this process.
	e.entry(agentIDFor(token), "spiffe://example.org/bench/sds", time.Hour, "unix:uid:"+uid)
	a := e.startAgent(token, 0.5)
	var target atomic.Pointer[big.Int]
	seen := make(chan struct{}, conns*perConn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	ready := make(chan struct{}, conns*perConn)
	for c := 0; c < conns; c++ {
		conn, err := grpc.NewClient("unix://"+a.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		for s := 0; s < perConn; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sdsWatch(ctx, conn, fmt.Sprintf("bench-%d-%d", c, s), &target, seen, ready)
			}()
		}
	}
	for i := 0; i < conns*perConn; i++ {
		select {
		case <-ready:
		case <-time.After(time.Minute):
			b.Fatal("SDS streams not served")
		}
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := mintCert(b, e.op, fmt.Sprintf("spiffe://example.org/bench/revoke-%d", i))
		target.Store(c.SerialNumber)
		b.StartTimer()
		t0 := time.Now()
		if _, err := e.op.RevokeCertificates(context.Background(), &operatorpb.RevokeCertificatesRequest{Serial: c.SerialNumber.Text(16)}); err != nil {
			b.Fatal(err)
		}
		for n := 0; n < conns*perConn; n++ {
			select {
			case <-seen:
			case <-time.After(time.Minute):
				b.Fatalf("%d of %d streams got the revocation", n, conns*perConn)
			}
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
}

// sdsWatch runs one SDS stream asking for ROOTCA, ACKs every response, and
// sends on seen once per target serial when a response's CRLs list it.
func sdsWatch(ctx context.Context, conn *grpc.ClientConn, node string, target *atomic.Pointer[big.Int], seen, ready chan<- struct{}) {
	s, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node, Cluster: "bench"}, ResourceNames: []string{"ROOTCA"}, TypeUrl: sds.SecretTypeURL}
	if s.Send(req) != nil {
		return
	}
	var reported *big.Int
	first := true
	for {
		r, err := s.Recv()
		if err != nil {
			return
		}
		if s.Send(&discoveryv3.DiscoveryRequest{VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: req.ResourceNames, TypeUrl: sds.SecretTypeURL}) != nil {
			return
		}
		var resp []*x509.RevocationList
		for _, any := range r.Resources {
			sec := &tlsv3.Secret{}
			if any.UnmarshalTo(sec) != nil {
				continue
			}
			rest := sec.GetValidationContext().GetCrl().GetInlineBytes()
			for {
				var block *pem.Block
				if block, rest = pem.Decode(rest); block == nil {
					break
				}
				if rl, err := x509.ParseRevocationList(block.Bytes); err == nil {
					resp = append(resp, rl)
				}
			}
		}
		if first && len(resp) > 0 {
			ready <- struct{}{}
			first = false
		}
		want := target.Load()
		if want == nil || want == reported {
			continue
		}
		for _, rl := range resp {
			if slices.ContainsFunc(rl.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(want) == 0 }) {
				reported = want
				seen <- struct{}{}
				break
			}
		}
	}
}

// BenchmarkRevokeWith100kRevoked measures, with 100,000 unexpired
// certificates of one intermediate already revoked (ledger records
// committed directly, revoked with one cert revoke --node), the latency of
// one more revocation until the operator API serves a CRL that lists it,
// and the size of that CRL. One server.
//
//	go test ./internal/e2e -run '^$' -bench 100kRevoked -benchtime 5x
func BenchmarkRevokeWith100kRevoked(b *testing.B) {
	const bulk = 100_000
	e := startServer(b)
	probe := mintCert(b, e.op, "spiffe://example.org/bench/probe")
	var issuer string
	if rec, err := e.op.GetCertificate(tctx(b, 10*time.Second), &operatorpb.GetCertificateRequest{Serial: probe.SerialNumber.Text(16)}); err != nil {
		b.Fatal(err)
	} else {
		issuer = rec.IssuerId
	}
	const node = "spiffe://example.org/meshca/agent/bench/bulk"
	now := time.Now()
	for done := 0; done < bulk; {
		var recs []*raftpb.LedgerRecord
		for ; len(recs) < 5000 && done < bulk; done++ {
			serial := make([]byte, 16)
			rand.Read(serial)
			serial[0] |= 0x40
			recs = append(recs, &raftpb.LedgerRecord{Serial: serial, SpiffeId: fmt.Sprintf("spiffe://example.org/bench/w%d", done), NodeId: node,
				Profile: "ecdsa", IssuerId: issuer, NotBeforeUnix: now.Unix(), NotAfterUnix: now.Add(24 * time.Hour).Unix()})
		}
		if _, err := e.srv.Node().CommitLedgerBatch(tctx(b, time.Minute), recs); err != nil {
			b.Fatal(err)
		}
	}
	t0 := time.Now()
	if _, err := e.op.RevokeCertificates(tctx(b, 5*time.Minute), &operatorpb.RevokeCertificatesRequest{NodeId: node}); err != nil {
		b.Fatal(err)
	}
	bulkRevoke := time.Since(t0)
	waitCRLEntries(b, e.op, issuer, bulk)
	b.Logf("revoke --node of %d certificates: %s; CRL with them after %s", bulk, bulkRevoke, time.Since(t0))
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := mintCert(b, e.op, fmt.Sprintf("spiffe://example.org/bench/more-%d", i))
		b.StartTimer()
		t0 := time.Now()
		if _, err := e.op.RevokeCertificates(context.Background(), &operatorpb.RevokeCertificatesRequest{Serial: c.SerialNumber.Text(16)}); err != nil {
			b.Fatal(err)
		}
		waitCRLEntries(b, e.op, issuer, bulk+i+1)
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	crl, err := e.op.GetCRL(tctx(b, time.Minute), &operatorpb.GetCRLRequest{IssuerId: issuer})
	if err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
	b.ReportMetric(float64(len(crl.Der)), "crl-bytes")
}

// waitCRLEntries polls an issuer's CRL (without its DER) until it has at
// least n entries.
func waitCRLEntries(tb testing.TB, op operatorpb.OperatorClient, issuer string, n int) *operatorpb.CRL {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	var last uint64
	for time.Now().Before(deadline) {
		c, err := op.GetCRL(tctx(tb, time.Minute), &operatorpb.GetCRLRequest{IssuerId: issuer, WithoutDer: true})
		if err != nil {
			tb.Fatal(err)
		}
		if c.Number != last {
			last = c.Number
			if int(c.Revoked) >= n {
				return c
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	tb.Fatalf("the CRL of %s never listed %d certificates", issuer, n)
	return nil
}

// BenchmarkTaintReissue10k measures the time from tainting one server's
// active intermediate until every one of 10,000 workload SVIDs chained to
// it (20 agents of 500 entries, all on that server first) is re-issued
// under another authority, as authority show counts it. Agents spread
// their re-issue over the default jitter (5 s); the servers' default
// admission limits apply. 3 servers, everything in one process.
//
//	go test ./internal/e2e -run '^$' -bench TaintReissue10k -benchtime 1x
func BenchmarkTaintReissue10k(b *testing.B) {
	const agents, perAgent = 20, 500
	f := newFleet(b, fleetOpts{servers: 3, clock: clockwork.NewRealClock()})
	target := f.follower()
	op := operatorClient(b, target.srv.AdminSocket())
	addrs := []string{target.srv.APIAddr()}
	for _, m := range f.running() {
		if m != target {
			addrs = append(addrs, m.srv.APIAddr())
		}
	}
	for i := 0; i < agents; i++ {
		token := f.e.token()
		for k := 0; k < perAgent; k++ {
			f.e.entry(agentIDFor(token), fmt.Sprintf("spiffe://example.org/bench/a%d/w%d", i, k), 0, "unix:uid:"+uid)
		}
		dir := tempDir(b)
		a, err := agent.New(agent.Config{Servers: addrs, TrustBundle: f.e.bundle, DataDir: dir, SocketPath: filepath.Join(dir, "agent.sock"),
			Evidence: jointoken.NewEvidence(token), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { a.Run(ctx); close(done) }()
		b.Cleanup(func() { cancel(); <-done })
	}
	inter := activeIntermediate(b, op, target.cfg.NodeID)
	waitFor(b, 10*time.Minute, "10,000 SVIDs signed by "+inter.Id, func() error {
		if a := authorityByID(b, op, inter.Id); a.LiveCertificates < agents*perAgent {
			return fmt.Errorf("%d", a.LiveCertificates)
		}
		return nil
	})
	b.ResetTimer()
	t0 := time.Now()
	if _, err := op.TaintAuthority(tctx(b, time.Minute), &operatorpb.AuthorityStepRequest{Id: inter.Id}); err != nil {
		b.Fatal(err)
	}
	waitFor(b, 10*time.Minute, "every SVID re-issued", func() error {
		if a := authorityByID(b, op, inter.Id); a.PendingCertificates > 0 {
			return fmt.Errorf("%s", a.NextStep)
		}
		return nil
	})
	b.StopTimer()
	b.ReportMetric(time.Since(t0).Seconds(), "s-to-reissue-10k")
}
