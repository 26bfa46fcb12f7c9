package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// BenchmarkProcessFaultGap measures failover with real processes, as the
// black-box run of issue 8 did: three `meshca server` processes on
// loopback, operator mints paced through every server's admin socket, and
// the leader stopped with SIGSTOP (resumed with SIGCONT) or killed with
// SIGKILL (restarted from its disk) for 5 s. It reports the longest time
// the two other servers handed out no certificate, p50 and max over the
// repetitions (design.md's target: 3 s). A frozen process cannot answer its
// own socket, so its callers wait; only the majority is measured here (the
// in-process suites check the minority's refusals).
//
//	go test ./cmd/meshca -run '^$' -bench ProcessFaultGap -benchtime 5x
func BenchmarkProcessFaultGap(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "meshca")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	for _, kind := range []string{"sigstop", "sigkill"} {
		b.Run(kind, func(b *testing.B) {
			var gaps []time.Duration
			for i := 0; i < b.N; i++ {
				gaps = append(gaps, processFault(b, bin, kind, 5*time.Second))
			}
			slices.Sort(gaps)
			b.ReportMetric(float64(gaps[len(gaps)/2].Microseconds())/1000, "gap-p50-ms")
			b.ReportMetric(float64(gaps[len(gaps)-1].Microseconds())/1000, "gap-max-ms")
		})
	}
}

// proc is one server process of processFault.
type proc struct {
	name, dir, raft, api string
	cmd                  *exec.Cmd
	done                 chan struct{}
	op                   operatorpb.OperatorClient
}

func (p *proc) start(tb testing.TB, bin, kek string, extra ...string) {
	tb.Helper()
	logf, err := os.OpenFile(filepath.Join(p.dir+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(bin, append([]string{"server", "--data-dir", p.dir, "--node-id", p.name, "--raft-addr", p.raft,
		"--api-addr", p.api, "--kek-file", kek, "--log-level", "warn"}, extra...)...)
	p.cmd.Env = processEnv("HOME=" + p.dir)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	p.done = done
	go func(cmd *exec.Cmd) { cmd.Wait(); close(done) }(p.cmd)
}

func (p *proc) stop() {
	if p.cmd != nil {
		p.cmd.Process.Kill() // a stopped process dies of SIGKILL too
		<-p.done
	}
}

func (p *proc) status(ctx context.Context) (*operatorpb.StatusResponse, error) {
	return p.op.Status(ctx, &operatorpb.StatusRequest{})
}

func waitProc(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting until %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processFault runs one fault and returns the majority's longest gap.
func processFault(b *testing.B, bin, kind string, dur time.Duration) time.Duration {
	base, err := os.MkdirTemp("", "mf") // short: admin sockets live under it
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(base)
	kek := filepath.Join(base, "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		b.Fatal(err)
	}
	ports := freePortsTB(b, 6)
	var procs []*proc
	for i := range 3 {
		p := &proc{name: fmt.Sprintf("s%d", i+1), dir: filepath.Join(base, fmt.Sprintf("s%d", i+1)), raft: ports[2*i], api: ports[2*i+1]}
		procs = append(procs, p)
	}
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	dial := func(p *proc) {
		conn, err := grpc.NewClient("unix://"+filepath.Join(p.dir, server.AdminSocketName), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		p.op = operatorpb.NewOperatorClient(conn)
	}
	ready := func(p *proc) func() bool {
		return func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			st, err := p.status(ctx)
			return err == nil && st.Ready
		}
	}
	s1 := procs[0]
	s1.start(b, bin, kek, "--bootstrap", "--trust-domain", "example.org")
	dial(s1)
	waitProc(b, 20*time.Second, "s1 is ready", ready(s1))
	for _, p := range procs[1:] {
		tok, err := s1.op.CreateJoinToken(context.Background(), &operatorpb.CreateJoinTokenRequest{Kind: "server"})
		if err != nil {
			b.Fatal(err)
		}
		p.start(b, bin, kek, "--join", s1.api, "--join-token", tok.Token, "--trust-bundle", filepath.Join(s1.dir, "server", "bundle.pem"))
		dial(p)
	}
	for _, p := range procs {
		waitProc(b, 30*time.Second, p.name+" is ready", ready(p))
	}

	// Paced mints through every server.
	var mu sync.Mutex
	acks := map[string][]time.Time{}
	ctx, stopLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, p := range procs {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key, _ := ca.ECDSA.GenerateKey()
				csr, _ := ca.ECDSA.CreateCSR(key)
				tick := time.NewTicker(40 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C: // pacing
					}
					cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					resp, err := p.op.MintX509SVID(cctx, &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/load", Csr: csr})
					cancel()
					if err == nil {
						if _, perr := x509.ParseCertificate(resp.Chain[0]); perr == nil {
							mu.Lock()
							acks[p.name] = append(acks[p.name], time.Now())
							mu.Unlock()
						}
					}
				}
			}()
		}
	}
	defer func() { stopLoad(); wg.Wait() }()
	waitProc(b, 20*time.Second, "every server issues", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range procs {
			if len(acks[p.name]) < 10 {
				return false
			}
		}
		return true
	})

	var leader *proc
	for _, p := range procs {
		if st, err := p.status(context.Background()); err == nil && st.RaftState == "Leader" {
			leader = p
		}
	}
	if leader == nil {
		b.Fatal("no leader")
	}
	faultStart := time.Now()
	switch kind {
	case "sigstop":
		leader.cmd.Process.Signal(syscall.SIGSTOP)
	case "sigkill":
		leader.cmd.Process.Kill()
		<-leader.done
	}
	<-time.After(dur) // the fault lasts this long
	faultEnd := time.Now()
	switch kind {
	case "sigstop":
		leader.cmd.Process.Signal(syscall.SIGCONT)
	case "sigkill":
		leader.start(b, bin, kek)
	}
	waitProc(b, 30*time.Second, leader.name+" is ready again", ready(leader))

	var worst time.Duration
	mu.Lock()
	defer mu.Unlock()
	for _, p := range procs {
		if p == leader {
			continue
		}
		times := slices.Clone(acks[p.name])
		slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
		longest, last := time.Duration(0), faultStart
		for _, a := range times {
			if a.Before(faultStart) || a.After(faultEnd) {
				continue
			}
			longest, last = max(longest, a.Sub(last)), a
		}
		worst = max(worst, longest, faultEnd.Sub(last))
	}
	b.Logf("%s of the leader %s for %s: the majority's longest issuance gap %s", kind, leader.name, dur, worst.Round(time.Millisecond))
	return worst
}

// freePortsTB is freePorts for benchmarks.
func freePortsTB(tb testing.TB, n int) []string {
	tb.Helper()
	return testtool.FreePorts(tb, n)
}
