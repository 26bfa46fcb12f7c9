package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/meshca/meshca/bench"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
	"github.com/spf13/cobra"
)

func (a *app) newBenchCommand() *cobra.Command {
	return groupCommand("bench", "Measure running servers", a.newBenchIssueCommand())
}

const benchIssueLong = `issue is a load generator for running servers: it measures certificate
issuance out of process, the way agents and operators use it, on your own
servers. Every certificate counted was returned, so its ledger record was
committed on a quorum first.

--mode node (the default) calls the node API as agents do. It makes --agents
join tokens through the operator API (--addr), attests one agent with each to
a server of --server (agent k to the k-th address, round robin: give every
server of a cluster to spread the calls over all of them), creates one
registration entry per agent, pre-generates CSRs, and then runs
--concurrency callers, each with one SignX509SVIDs call of --batch CSRs in
flight at a time, caller i as agent i mod --agents, for --warmup and then
--duration.
--mode mint calls the operator API's MintX509SVID instead (--batch 1).

Each agent is a node with its own signing budget on the servers
(--node-sign-rate, default 500 CSRs/s): to measure beyond
agents × node rate, raise it on the servers or attest more agents. A call
refused with ResourceExhausted is retried after the server's retry-after
hint and counted in retries; any other failure is an error.

It prints a progress line a second on standard error and then certificates
per second, call latency percentiles (p50, p90, p99, max), errors and
retries, and, for servers on this host, their CPU time per certificate and
resident memory, read from /proc: the processes listening on the --server
ports or the admin socket are found there (--server-pid names them instead).
It deletes the entries it made at the end; the agents it attested stay in the
node list, with no entry. The certificates live --ttl (default 1h), then
their ledger records are pruned. --timeout bounds the set-up (tokens,
attestations, entries) before the load starts.

The trust bundle that authenticates the servers is --trust-bundle, else
$MESHCA_TRUST_BUNDLE, else <data-dir>/server/bundle.pem beside the admin
socket of --addr.

Examples:
  meshca dev &                      # prints its API address
  meshca bench issue --server 127.0.0.1:8443 --concurrency 32
  meshca bench issue --server 127.0.0.1:8443 --concurrency 8 --batch 64 --agents 8
  meshca bench issue --mode mint --concurrency 32 --output json
  meshca bench issue --addr unix:///var/lib/meshca/admin.sock \
    --server 10.0.0.1:8443 --server 10.0.0.2:8443 --server 10.0.0.3:8443` + opLong

func (a *app) newBenchIssueCommand() *cobra.Command {
	var (
		o       opOptions
		cfg     bench.Config
		mode    string
		pids    []int
		servers []string
	)
	cmd := &cobra.Command{
		Use:   "issue [--server H:P ...] [--mode node|mint] [--concurrency 32] [--batch 1] [--agents K] [--duration 10s]",
		Short: "Measure certificate issuance of running servers",
		Long:  benchIssueLong,
		Args:  cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringArrayVar(&servers, "server", nil, "node API address (host:port) of a server the agents call; repeat for each server (node mode)")
	f.StringVar(&mode, "mode", string(bench.ModeNode), "node: call the node API as attested agents; mint: call the operator API's MintX509SVID")
	f.IntVar(&cfg.Concurrency, "concurrency", bench.DefaultConcurrency, "callers, each with one call in flight")
	f.IntVar(&cfg.Batch, "batch", bench.DefaultBatch, fmt.Sprintf("CSRs per call, 1 to %d (mint: 1)", bench.MaxBatch))
	f.IntVar(&cfg.Agents, "agents", 0, "agents attested, each a node with its own signing budget (default --concurrency)")
	f.StringVar(&cfg.Profile, "profile", ca.ProfileECDSA, "certificate profile: ecdsa or sm2")
	f.DurationVar(&cfg.Duration, "duration", bench.DefaultDuration, "how long to measure, after the warm-up")
	f.DurationVar(&cfg.Warmup, "warmup", bench.DefaultWarmup, "how long to load the servers before measuring")
	f.DurationVar(&cfg.TTL, "ttl", bench.DefaultTTL, "lifetime of the certificates issued (their ledger records stay until then)")
	f.IntSliceVar(&pids, "server-pid", nil, "process ID of a local server to read CPU and memory from (default: found from the --server ports and the admin socket)")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		cfg.Mode, cfg.Servers, cfg.ServerPIDs, cfg.SetupTimeout = bench.Mode(mode), servers, pids, o.timeout
		if cfg.Mode != bench.ModeNode && cfg.Mode != bench.ModeMint {
			return usageErrorf("--mode %q: want node or mint", mode)
		}
		if cfg.Mode == bench.ModeNode && len(servers) == 0 {
			return usageErrorf("--mode node needs --server H:P, the node API address of a server (meshca dev and meshca server print it as api_addr)")
		}
		if cfg.Mode == bench.ModeMint && cmd.Flags().Changed("batch") && cfg.Batch != 1 {
			return usageErrorf("--batch %d: a mint is one CSR per call", cfg.Batch)
		}
		c, err := a.dialOperator(o)
		if err != nil {
			return err
		}
		defer c.Close()
		cfg.Operator = c
		if cfg.Mode == bench.ModeNode {
			if cfg.Roots, err = a.benchRoots(o, c); err != nil {
				return err
			}
		}
		if len(pids) == 0 {
			var sockets []string
			if !c.tcp {
				sockets = []string{c.socket}
			}
			if cfg.ServerPIDs, err = bench.LocalPIDs("", servers, sockets); err != nil {
				return err
			}
		}
		cfg.Progress = func(p bench.Progress) {
			phase := "measuring"
			if p.Warmup {
				phase = "warm-up"
			}
			fmt.Fprintf(a.stderr, "bench: %4s %-9s %8.0f certs/s  %d certificates, %d errors, %d retries\n",
				p.Elapsed, phase, p.PerSecond, p.Certificates, p.Errors, p.Retries)
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
		defer stop()
		res, err := bench.Run(ctx, cfg)
		if err != nil {
			if res != nil {
				for _, l := range res.Cleanup {
					fmt.Fprintf(a.stderr, "bench: left behind: %s\n", l)
				}
			}
			return c.callError("bench issue", o, err)
		}
		return a.printBench(res)
	})
	return cmd
}

// benchRoots reads the trust bundle that authenticates the servers.
func (a *app) benchRoots(o opOptions, c *opClient) ([]*x509.Certificate, error) {
	file := o.trustBundle
	if file == "" {
		file = a.getenv(envTrustBundle)
	}
	if file == "" && !c.tcp {
		guess := server.TrustBundlePath(filepath.Dir(c.socket))
		if _, err := os.Stat(guess); err == nil {
			file = guess
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("trust bundle %s: %w", guess, err)
		}
	}
	if file == "" {
		return nil, usageErrorf("--mode node needs the trust bundle to authenticate the servers: --trust-bundle F (a server's <data-dir>/server/bundle.pem) or $%s", envTrustBundle)
	}
	return server.LoadTrustBundle(file)
}

func (a *app) printBench(r *bench.Result) error {
	if a.output == outputJSON {
		return writeJSON(a.stdout, r)
	}
	t := newTable(a.stdout, "")
	what := fmt.Sprintf("%s, %s, %d callers × %d CSRs per call", r.Mode, r.Profile, r.Concurrency, r.Batch)
	if r.Mode == bench.ModeNode {
		what += fmt.Sprintf(", %d agents on %s", r.Agents, strings.Join(r.Servers, " "))
	}
	t.row("load", what)
	t.row("measured", fmt.Sprintf("%.1fs", r.Seconds))
	t.row("certificates", fmt.Sprintf("%d (%.0f/s)", r.Certificates, r.PerSecond))
	t.row("calls", fmt.Sprintf("%d: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms", r.Calls, r.P50, r.P90, r.P99, r.Max))
	t.row("errors", fmt.Sprint(r.Errors))
	t.row("retries", fmt.Sprintf("%d (refused with a retry-after hint, sent again)", r.Retries))
	for _, s := range r.ErrorSamples {
		t.row("error", s)
	}
	proc := func(name string, p *bench.ProcessFigures) {
		if p == nil {
			return
		}
		v := fmt.Sprintf("%.0f µs CPU per certificate (%.2f cores), RSS %.1f MiB, pid %v", p.CPUPerCertificate, p.Cores, float64(p.RSSBytes)/(1<<20), p.PIDs)
		if p.Error != "" {
			v += " (incomplete: " + p.Error + ")"
		}
		t.row(name, v)
	}
	if r.Server == nil {
		t.row("server", "not on this host (or not found: --server-pid)")
	}
	proc("server", r.Server)
	proc("client", r.Client)
	for _, l := range r.Cleanup {
		t.row("left behind", l)
	}
	return t.flush()
}
