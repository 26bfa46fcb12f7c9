package e2e

import (
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/pgtest"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/server"
	"github.com/meshca/meshca/store/postgres"
)

// BenchmarkIssueWithExporter is BenchmarkNodeAPIIssue (batches of 64, 64
// callers, one server, its own audit log) without and with the history
// export running against a PostgreSQL on the same machine: issuance must
// not wait for it. PostgreSQL, the server and the client share the two
// cores.
//
//	go test ./internal/e2e -run '^$' -bench IssueWithExporter -benchtime 20000x -count 3
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
					c.History, c.ExportInterval = st, 100*time.Millisecond
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
