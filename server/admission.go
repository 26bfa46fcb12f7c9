package server

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/internal/retryinfo"
	"golang.org/x/time/rate"
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

// admit reserves n CSRs of node's budget and a place in the queue; the
// returned release must be called when the batch is done.
func (a *admission) admit(node string, n int) (release func(), err error) {
	a.mu.Lock()
	l, ok := a.nodes[node]
	if !ok {
		l = rate.NewLimiter(a.rate, a.burst)
		a.nodes[node] = l
	}
	a.mu.Unlock()
	now := time.Now()
	r := l.ReserveN(now, n)
	if !r.OK() {
		return nil, retryinfo.Exhausted(time.Second, "batch of %d CSRs exceeds this node's burst of %d", n, a.burst)
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return nil, retryinfo.Exhausted(d, "node %s is over its signing rate", node)
	}
	if q := a.queued.Add(int64(n)); q > a.maxQueue {
		a.queued.Add(-int64(n))
		r.CancelAt(now)
		// Roughly the time the queue takes to drain at ~5k CSRs/s a slot pair.
		return nil, retryinfo.Exhausted(time.Duration(q)*200*time.Microsecond/time.Duration(cap(a.slots)/2+1)+100*time.Millisecond,
			"the server's signing queue is full (%d CSRs waiting)", q-int64(n))
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
