package bench

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// startServer runs a real single-node server on loopback and returns it
// with a client of its operator API.
func startServer(t *testing.T, tune func(*server.Config)) (*server.Server, operatorpb.OperatorClient) {
	t.Helper()
	dir, err := os.MkdirTemp("", "bench") // short: the admin socket's path is bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kek, err := ca.CreateKEKFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{DataDir: dir, NodeID: "s1", RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: kek,
		Bootstrap: true, TrustDomain: "example.org", Logger: slog.New(slog.DiscardHandler), RaftLogger: hclog.NewNullLogger(),
		Audit: &audit.Memory{}}
	if tune != nil {
		tune(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	for deadline := time.Now().Add(30 * time.Second); !srv.Ready(); {
		if time.Now().After(deadline) {
			t.Fatal("server not ready after 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+srv.AdminSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return srv, operatorpb.NewOperatorClient(conn)
}

func roots(t *testing.T, srv *server.Server) Config {
	t.Helper()
	r, err := ca.ParseCertificatesPEM(srv.TrustBundle())
	if err != nil {
		t.Fatal(err)
	}
	return Config{Roots: r}
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// The entries a run made are gone after it.
func checkNoBenchEntries(t *testing.T, op operatorpb.OperatorClient) {
	t.Helper()
	resp, err := op.ListEntries(tctx(t), &operatorpb.ListEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range resp.Entries {
		if strings.Contains(e.SpiffeId, "/meshca-bench/") {
			t.Errorf("entry %s (%s) left after the run", e.Id, e.SpiffeId)
		}
	}
}

// A node-mode run against a real server: agents attested with join
// tokens, certificates of both profiles issued in batches with no error,
// latencies and the server's CPU and memory reported, entries deleted.
func TestRunNode(t *testing.T) {
	srv, op := startServer(t, nil)
	for _, profile := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
		t.Run(profile, func(t *testing.T) {
			cfg := roots(t, srv)
			cfg.Operator, cfg.Servers, cfg.Profile = op, []string{srv.APIAddr()}, profile
			cfg.Agents, cfg.Concurrency, cfg.Batch, cfg.Duration, cfg.Warmup = 3, 4, 8, time.Second, 200*time.Millisecond
			cfg.ServerPIDs = []int{os.Getpid()} // the server runs in this process
			var progress []Progress
			cfg.Progress = func(p Progress) { progress = append(progress, p) }
			res, err := Run(tctx(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", res)
			if res.Certificates == 0 || res.Calls == 0 || res.PerSecond <= 0 {
				t.Errorf("certificates %d, calls %d, %.0f/s: want some", res.Certificates, res.Calls, res.PerSecond)
			}
			if res.Errors != 0 || len(res.ErrorSamples) != 0 {
				t.Errorf("%d errors: %v", res.Errors, res.ErrorSamples)
			}
			if !(res.P50 > 0 && res.P50 <= res.P90 && res.P90 <= res.P99 && res.P99 <= res.Max) {
				t.Errorf("latencies p50 %v, p90 %v, p99 %v, max %v: want 0 < p50 ≤ p90 ≤ p99 ≤ max", res.P50, res.P90, res.P99, res.Max)
			}
			if res.Server == nil || res.Server.CPUSeconds <= 0 || res.Server.RSSBytes <= 0 || res.Server.Error != "" {
				t.Errorf("server figures %+v: want CPU and RSS", res.Server)
			}
			if len(progress) == 0 {
				t.Error("no progress reported")
			}
			if len(res.Cleanup) != 1 || !strings.Contains(res.Cleanup[0], "3 attested agents") {
				t.Errorf("cleanup notes %q, want only the attested agents", res.Cleanup)
			}
			checkNoBenchEntries(t, op)
		})
	}
}

// Mints through the operator API are counted like the node API's.
func TestRunMint(t *testing.T) {
	_, op := startServer(t, nil)
	res, err := Run(tctx(t), Config{Operator: op, Mode: ModeMint, Concurrency: 4, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Certificates == 0 || res.Errors != 0 {
		t.Errorf("mint: %d certificates, %d errors (%v): want some and none", res.Certificates, res.Errors, res.ErrorSamples)
	}
}

// Calls over a node's rate are refused with a retry-after hint: the bench
// waits for it and sends again, counting retries, not errors.
func TestRunRetriesRefusals(t *testing.T) {
	srv, op := startServer(t, func(c *server.Config) { c.NodeSignRate, c.NodeSignBurst, c.AdmissionWait = 20, 2, -1 })
	cfg := roots(t, srv)
	cfg.Operator, cfg.Servers = op, []string{srv.APIAddr()}
	cfg.Agents, cfg.Concurrency, cfg.Duration = 1, 8, time.Second
	res, err := Run(tctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Retries == 0 || res.Errors != 0 || res.Certificates == 0 {
		t.Errorf("8 callers on one node at 20 CSRs/s: %d retries, %d errors (%v), %d certificates; want retries, no error, some certificates",
			res.Retries, res.Errors, res.ErrorSamples, res.Certificates)
	}
}

// A server that answers Unavailable while agents are attested (just
// started, its CRL not published yet; here a node API address whose first
// connections are dropped) is waited for, trying the same join token
// again: the run goes on, and no token is left unused.
func TestRunWaitsForAServerNotReady(t *testing.T) {
	srv, op := startServer(t, nil)
	const dropped = 3
	addr, accepted := flakyProxy(t, srv.APIAddr(), dropped)
	cfg := roots(t, srv)
	cfg.Operator, cfg.Servers = op, []string{addr}
	cfg.Agents, cfg.Concurrency, cfg.Duration, cfg.Warmup = 1, 2, time.Second, 100*time.Millisecond
	res, err := Run(tctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n := accepted.Load(); n <= dropped {
		t.Fatalf("%d connections to the node API: want more than the %d dropped", n, dropped)
	}
	if res.Certificates == 0 || res.Errors != 0 {
		t.Errorf("%d certificates, %d errors (%v): want some and none", res.Certificates, res.Errors, res.ErrorSamples)
	}
	if slices.ContainsFunc(res.Cleanup, func(s string) bool { return strings.Contains(s, "join token") }) {
		t.Errorf("cleanup notes %q: the token of the dropped attempts was not used again", res.Cleanup)
	}
}

// An attestation whose answer is lost after the server used the token
// (Unavailable to the caller) is tried again with the same token, which
// the server refuses as used: then a new token attests the agent, and
// neither is reported as left unused.
func TestRunNewTokenWhenTheLostAttemptUsedIt(t *testing.T) {
	srv, op := startServer(t, nil)
	cfg := roots(t, srv)
	cfg.Operator, cfg.Servers = op, []string{srv.APIAddr()}
	cfg.Agents, cfg.Concurrency, cfg.Duration, cfg.Warmup = 1, 2, time.Second, 100*time.Millisecond
	var calls atomic.Int64
	tokens := map[string]bool{}
	var mu sync.Mutex
	cfg.attest = func(ctx context.Context, addr string, td spiffeid.TrustDomain, bundle *x509bundle.Bundle, token string) (*x509svid.SVID, error) {
		mu.Lock()
		tokens[token] = true
		mu.Unlock()
		svid, err := attest(ctx, addr, td, bundle, token)
		if calls.Add(1) == 1 && err == nil {
			return nil, status.Error(codes.Unavailable, "the answer was lost")
		}
		return svid, err
	}
	res, err := Run(tctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 3 || len(tokens) != 2 {
		t.Errorf("%d attestations with %d tokens: want 3 with 2 (the lost one, the refused retry, a new token)", calls.Load(), len(tokens))
	}
	if res.Certificates == 0 || res.Errors != 0 {
		t.Errorf("%d certificates, %d errors (%v): want some and none", res.Certificates, res.Errors, res.ErrorSamples)
	}
	if slices.ContainsFunc(res.Cleanup, func(s string) bool { return strings.Contains(s, "join token") }) {
		t.Errorf("cleanup notes %q: no token is left unused", res.Cleanup)
	}
}

// flakyProxy forwards connections on a new loopback address to target,
// after closing the first drop of them at once, and counts them.
func flakyProxy(t *testing.T, target string, drop int64) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	addr := testtool.ServeTCP(t, func(c net.Conn) {
		if n.Add(1) <= drop {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		done := make(chan struct{})
		go func() { defer close(done); _, _ = io.Copy(up, c); up.Close() }()
		_, _ = io.Copy(c, up)
		c.Close()
		<-done
	})
	return addr, &n
}

func TestConfigCheck(t *testing.T) {
	op := operatorpb.NewOperatorClient(nil)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"fail/no-operator", Config{Mode: ModeMint}, "operator API client"},
		{"fail/node-no-servers", Config{Operator: op}, "node API address"},
		{"fail/node-no-roots", Config{Operator: op, Servers: []string{"127.0.0.1:1"}}, "trust bundle"},
		{"fail/batch", Config{Operator: op, Mode: ModeMint, Batch: 2}, "one CSR per call"},
		{"fail/big-batch", Config{Operator: op, Servers: []string{"h:1"}, Batch: MaxBatch + 1}, "batch"},
		{"fail/profile", Config{Operator: op, Mode: ModeMint, Profile: "rsa"}, "profile"},
		{"fail/mode", Config{Operator: op, Mode: "x"}, "mode"},
		{"fail/short", Config{Operator: op, Mode: ModeMint, Duration: time.Millisecond}, "at least 1s"},
		{"fail/ttl", Config{Operator: op, Mode: ModeMint, TTL: time.Second}, "TTL"},
		{"fail/concurrency", Config{Operator: op, Mode: ModeMint, Concurrency: -1}, "concurrency"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(t.Context(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run(%+v) = %v, want an error about %q", tc.cfg, err, tc.want)
			}
		})
	}
}
