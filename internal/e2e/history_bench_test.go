package e2e

import (
	"context"
	"flag"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/pgtest"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/meshca/meshca/store/postgres"
)

// BenchmarkIssueWithExporter is BenchmarkNodeAPIIssue (batches of 64, 64
// callers, one server, its own audit log) without and with the history
// export running, at its default interval, against a PostgreSQL on the
// same machine: issuance must not wait for it. To keep PostgreSQL off the
// cores of the server, as a database host of its own would, run the
// server on one CPU and PostgreSQL on another (pgtest.CPUsEnv):
//
//	MESHCA_PGTEST_CPUS=1 taskset -c 0 go test ./internal/e2e -run '^$' -bench IssueWithExporter -benchtime 20000x -count 3
//
// Without them PostgreSQL, the server and the client share the cores.
func BenchmarkIssueWithExporter(b *testing.B) {
	for _, exporter := range []bool{false, true} {
		name := "exporter=off"
		if exporter {
			name = "exporter=on"
		}
		b.Run(name, func(b *testing.B) {
			var dsn string
			if exporter {
				dsn = pgtest.Start(b).Database(b)
			}
			e := startServerWith(b, func(c *server.Config) {
				c.NodeSignRate, c.NodeSignBurst = 1e9, 1<<20
				c.Audit = nil // the server's own durable audit log, exported too
				if exporter {
					st, err := postgres.New(postgres.Config{DSN: dsn})
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(st.Close)
					c.History = st // the default export interval (1 s)
				}
			})
			token := e.token()
			en := e.entry(agentIDFor(token), "spiffe://example.org/bench/w", time.Hour, "unix:uid:1")
			client := attestedClient(b, e, token)
			key, _ := ca.ECDSA.GenerateKey()
			csr, _ := ca.ECDSA.CreateCSR(key)
			req := &nodepb.SignX509SVIDsRequest{}
			for k := 0; k < 64; k++ {
				req.Requests = append(req.Requests, &nodepb.SVIDRequest{EntryId: en.Id, Csr: csr})
			}
			issueBench(b, client, req, 64, 64)
		})
	}
}

var (
	catchUpDown = flag.Duration("history.down", 10*time.Minute, "BenchmarkHistoryCatchUp: how long PostgreSQL is down")
	catchUpRate = flag.Int("history.rate", 1000, "BenchmarkHistoryCatchUp: certificates issued per second meanwhile")
)

// BenchmarkHistoryCatchUp stops PostgreSQL for -history.down (default
// 10 minutes) while one server issues -history.rate certificates per
// second (default 1,000, in node API batches of 50) and keeps issuing after
// PostgreSQL is back, and reports how long the export takes to catch up:
// from the restart until the oldest record not exported is at most one
// export interval (and 2 s of not-before granularity) old.
//
//	go test ./internal/e2e -run '^$' -bench HistoryCatchUp -benchtime 1x -timeout 30m
func BenchmarkHistoryCatchUp(b *testing.B) {
	pg := pgtest.Start(b)
	dsn := pg.Database(b)
	e := startServerWith(b, func(c *server.Config) {
		c.NodeSignRate, c.NodeSignBurst = 1e9, 1<<20
		st, err := postgres.New(postgres.Config{DSN: dsn})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(st.Close)
		c.History = st
	})
	token := e.token()
	en := e.entry(agentIDFor(token), "spiffe://example.org/bench/w", time.Hour, "unix:uid:1")
	client := attestedClient(b, e, token)
	key, _ := ca.ECDSA.GenerateKey()
	csr, _ := ca.ECDSA.CreateCSR(key)
	const batch = 50
	req := &nodepb.SignX509SVIDsRequest{}
	for k := 0; k < batch; k++ {
		req.Requests = append(req.Requests, &nodepb.SVIDRequest{EntryId: en.Id, Csr: csr})
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var issued atomic.Int64
	done := make(chan struct{})
	go func() { // issue at the rate, in batches
		defer close(done)
		t := time.NewTicker(time.Second * batch / time.Duration(*catchUpRate))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			go func() {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if _, err := client.SignX509SVIDs(cctx, req); err == nil {
					issued.Add(batch)
				}
			}()
		}
	}()
	lag := func() (records uint64, seconds float64, err error) {
		st, err := e.op.Status(context.Background(), &operatorpb.StatusRequest{})
		if err != nil {
			return 0, 0, err
		}
		return st.History.LedgerLagRecords, st.History.LedgerLagSeconds, nil
	}
	b.ResetTimer()
	pg.Stop()
	time.Sleep(*catchUpDown) // the outage itself: what is measured is the catch-up after it
	backlog, _, err := lag()
	if err != nil {
		b.Fatal(err)
	}
	if err := pg.Restart(); err != nil {
		b.Fatal(err)
	}
	back := time.Now()
	for {
		// Caught up: the oldest record not exported is younger than one
		// export interval and the second granularity of not-before. (The
		// record count is never 0 for long while issuing goes on: each
		// interval gathers the next rows.)
		n, secs, err := lag()
		if err != nil {
			b.Fatal(err)
		}
		if n == 0 || secs <= (server.DefaultExportInterval+2*time.Second).Seconds() {
			break
		}
		if time.Since(back) > 20*time.Minute {
			b.Fatalf("still %d records (%.0f s) behind after 20 minutes", n, secs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	catchUp := time.Since(back)
	stop()
	<-done
	b.ReportMetric(float64(backlog), "backlog-records")
	b.ReportMetric(catchUp.Seconds(), "catchup-s")
	b.ReportMetric(float64(issued.Load())/b.Elapsed().Seconds(), "issued/s")
}
