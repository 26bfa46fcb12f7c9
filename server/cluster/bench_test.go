package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkLedgerCommit measures group-committed ledger records on a
// loopback cluster (real TLS, real raft-wal fsyncs) with 64 concurrent
// issuers spread over the servers. Each record returns only once committed
// on a quorum.
//
//	go test ./server/cluster -run '^$' -bench LedgerCommit -benchtime 100000x
func BenchmarkLedgerCommit(b *testing.B) {
	for _, size := range []int{1, 3} {
		c := newTestCluster(b, size, clusterOpts{})
		var seq atomic.Int64
		b.Run(fmt.Sprintf("nodes=%d/issuers=64", size), func(b *testing.B) {
			const issuers = 64
			lat := make([][]time.Duration, issuers)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := 0; i < issuers; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					n := c.nodes[i%size]
					for next.Add(1) <= int64(b.N) {
						serial := fmt.Sprintf("bench-%012d", seq.Add(1))
						t0 := time.Now()
						if err := n.node.CommitLedger(context.Background(), record(serial)); err != nil {
							b.Error(err)
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
			if len(all) == 0 {
				return
			}
			b.ReportMetric(float64(len(all))/b.Elapsed().Seconds(), "records/s")

			b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkFailover kills the leader of a 3-node cluster and measures the
// time until another server is leader.
//
//	go test ./server/cluster -run '^$' -bench Failover -benchtime 10x
func BenchmarkFailover(b *testing.B) {
	c := newTestCluster(b, 3, clusterOpts{})
	var times []time.Duration
	for i := 0; i < b.N; i++ {
		old := c.leader()
		for old == nil {
			time.Sleep(10 * time.Millisecond)
			old = c.leader()
		}
		killed := time.Now()
		old.stop()
		for {
			if l := c.leader(); l != nil {
				times = append(times, time.Since(killed))
				break
			}
			if time.Since(killed) > 30*time.Second {
				b.Fatal("no leader 30 s after the kill")
			}
			time.Sleep(5 * time.Millisecond)
		}
		old.start()
		c.requireConverged()
	}
	slices.Sort(times)
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "election-p50-ms")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "election-max-ms")
}
