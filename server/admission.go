package server

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/internal/retryinfo"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Admission defaults: a renewal storm queues instead of failing or
// melting the server down.
const (
	DefaultNodeSignRate  = 500  // CSRs per second per node
	DefaultNodeSignBurst = 2000 // CSRs
	DefaultSignQueue     = 8192 // CSRs waiting, all nodes together
)

// admission admits signing work: each node is limited by a token bucket,
// all nodes together by a bounded queue in front of a fixed number of
// signing slots. Work over either limit is refused with a retryable
// ResourceExhausted carrying a retry-after hint (errdetails.RetryInfo).
type admission struct {
	slots    chan struct{}
	maxQueue int64
	queued   atomic.Int64
	rate     rate.Limit
	burst    int

	mu    sync.Mutex // guards nodes
	nodes map[string]*rate.Limiter
}

func newAdmission(concurrency, queue int, perNode rate.Limit, burst int) *admission {
	if concurrency <= 0 {
		concurrency = 2 * runtime.GOMAXPROCS(0)
	}
	return &admission{slots: make(chan struct{}, concurrency), maxQueue: int64(queue), rate: perNode, burst: burst, nodes: map[string]*rate.Limiter{}}
}

// signCost is the server time one admitted CSR takes, for retry-after
// estimates: about 130 µs to check and sign on one core (BenchmarkIssue),
// doubled for the ledger commit and the network.
const signCost = 250 * time.Microsecond

// maxIdleLimiters bounds the per-node limiters kept; past it, those of
// nodes that have used none of their burst lately are dropped.
const maxIdleLimiters = 4096

// admit reserves n CSRs of node's budget and a place in the queue; the
// returned release must be called when the batch is done.
func (a *admission) admit(node string, n int) (release func(), err error) {
	if n > a.burst {
		return nil, status.Errorf(codes.FailedPrecondition, "a batch of %d CSRs exceeds this node's burst of %d: send smaller batches", n, a.burst)
	}
	now := time.Now()
	a.mu.Lock()
	l, ok := a.nodes[node]
	if !ok {
		if len(a.nodes) >= maxIdleLimiters {
			for k, v := range a.nodes {
				if v.TokensAt(now) >= float64(a.burst) { // idle: a new limiter would be the same
					delete(a.nodes, k)
				}
			}
		}
		l = rate.NewLimiter(a.rate, a.burst)
		a.nodes[node] = l
	}
	a.mu.Unlock()
	r := l.ReserveN(now, n)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return nil, retryinfo.Exhausted(d, "node %s is over its signing rate", node)
	}
	if q := a.queued.Add(int64(n)); q > a.maxQueue {
		a.queued.Add(-int64(n))
		r.CancelAt(now)
		// About the time the queue takes to drain.
		drain := time.Duration(q) * signCost / time.Duration(cap(a.slots))
		return nil, retryinfo.Exhausted(max(drain, 100*time.Millisecond), "the server's signing queue is full (%d CSRs waiting)", q-int64(n))
	}
	return func() { a.queued.Add(-int64(n)) }, nil
}

// acquire waits for a signing slot.
func (a *admission) acquire(ctx context.Context) error {
	select {
	case a.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *admission) release() { <-a.slots }

// QueueDepth is the number of CSRs admitted and not yet signed.
func (a *admission) QueueDepth() int64 { return a.queued.Load() }
