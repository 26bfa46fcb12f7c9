package server

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/internal/retryinfo"
	"github.com/meshca/meshca/internal/wallclock"
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
	// Operator mints (the admin API) have a budget of their own, shared by
	// every operator of the server, not one node's.
	DefaultOperatorMintRate  = 5000 // CSRs per second
	DefaultOperatorMintBurst = 5000 // CSRs
	// DefaultAdmissionWait is how long a caller over its rate waits for
	// its budget before it is refused.
	DefaultAdmissionWait = time.Second
	// MaxAdmissionWait bounds AdmissionWait: a request waits no longer
	// than agents and operators wait for an answer.
	MaxAdmissionWait = time.Minute
)

// admissionLimits are the knobs of admission.
type admissionLimits struct {
	// concurrency is the number of signing slots (0: twice the CPUs).
	concurrency int
	// queue bounds the CSRs admitted and not yet signed, all callers together.
	queue int
	// node and nodeBurst bound each node's CSRs (per second, burst);
	// operator and operatorBurst all operator mints together.
	node          rate.Limit
	nodeBurst     int
	operator      rate.Limit
	operatorBurst int
	// wait is the longest a caller over its rate waits for its budget
	// before it is refused.
	wait time.Duration
}

// admission admits signing work. Each node is limited by a token bucket,
// operator mints together by one of their own; a caller over its rate
// waits for its budget (a reservation in the bucket, so waiting callers
// are served in order and burn no CPU) for up to the wait bound, and is
// refused past it with a retryable ResourceExhausted whose retry-after
// hint (errdetails.RetryInfo) is the time until the bucket holds its
// CSRs, after those already waiting. All callers together are bounded by
// a queue in front of a fixed number of signing slots; a full queue is
// refused with the time it takes to drain at the measured signing rate.
type admission struct {
	clock    clockwork.Clock
	lim      admissionLimits
	slots    chan struct{}
	maxQueue int64
	queued   atomic.Int64
	// costNanos is a moving average of the slot time one CSR takes, for
	// the retry-after of a full queue.
	costNanos atomic.Int64

	operator *rate.Limiter
	mu       sync.Mutex // guards nodes
	nodes    map[string]*rate.Limiter
}

func newAdmission(clock clockwork.Clock, lim admissionLimits) *admission {
	if lim.concurrency <= 0 {
		lim.concurrency = 2 * runtime.GOMAXPROCS(0)
	}
	a := &admission{clock: clock, lim: lim, slots: make(chan struct{}, lim.concurrency), maxQueue: int64(lim.queue),
		operator: rate.NewLimiter(lim.operator, lim.operatorBurst), nodes: map[string]*rate.Limiter{}}
	a.costNanos.Store(int64(signCost))
	return a
}

// signCost is the initial estimate of the slot time one admitted CSR
// takes, before any is measured: about 130 µs to check and sign on one
// core (BenchmarkIssue), doubled for the ledger commit and the network.
const signCost = 250 * time.Microsecond

// minQueueRetry is the shortest retry-after of a full queue: one
// commit's worth of time, so a refused caller does not come back at once.
const minQueueRetry = 10 * time.Millisecond

// maxIdleLimiters bounds the per-node limiters kept; past it, those of
// nodes that have used none of their burst lately are dropped.
const maxIdleLimiters = 4096

// limiter returns the bucket of a budget: operator mints' one, or node's.
func (a *admission) limiter(node string, operator bool, now time.Time) (*rate.Limiter, int) {
	if operator {
		return a.operator, a.lim.operatorBurst
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.nodes[node]
	if !ok {
		if len(a.nodes) >= maxIdleLimiters {
			for k, v := range a.nodes {
				if v.TokensAt(now) >= float64(a.lim.nodeBurst) { // idle: a new limiter would be the same
					delete(a.nodes, k)
				}
			}
		}
		l = rate.NewLimiter(a.lim.node, a.lim.nodeBurst)
		a.nodes[node] = l
	}
	return l, a.lim.nodeBurst
}

// admit reserves n CSRs of a budget (node's, or the operators' when
// operator is set) and a place in the queue, waiting up to the wait bound
// for the budget; the returned release must be called when the batch is
// done. It fails with ResourceExhausted (and a retry-after hint) when the
// budget or the queue is over, FailedPrecondition for a batch that can
// never pass, and ctx's error if ctx ends while it waits.
func (a *admission) admit(ctx context.Context, node string, operator bool, n int) (release func(), err error) {
	now := a.clock.Now()
	l, burst := a.limiter(node, operator, now)
	who := "node " + node
	if operator {
		who = "operator mints"
	}
	if n > burst && l.Limit() != rate.Inf {
		return nil, status.Errorf(codes.FailedPrecondition, "a batch of %d CSRs exceeds the burst of %d of %s: send smaller batches", n, burst, who)
	}
	r := l.ReserveN(now, n)
	if d := r.DelayFrom(now); d > a.lim.wait {
		r.CancelAt(now)
		return nil, retryinfo.Exhausted(d, "%s over its signing rate of %g CSRs/s", who, float64(l.Limit()))
	} else if d > 0 {
		t := a.clock.NewTimer(d)
		select {
		case <-t.Chan():
		case <-ctx.Done():
			t.Stop()
			r.CancelAt(a.clock.Now())
			return nil, ctx.Err()
		}
	}
	if q := a.queued.Add(int64(n)); q > a.maxQueue {
		a.queued.Add(-int64(n))
		r.CancelAt(a.clock.Now())
		// The time the queue takes to drain down to room for n, at the
		// measured signing rate.
		excess := q - a.maxQueue
		drain := time.Duration(excess * a.costNanos.Load() / int64(cap(a.slots)))
		return nil, retryinfo.Exhausted(max(drain, minQueueRetry), "the server's signing queue is full (%d CSRs waiting)", q-int64(n))
	}
	return func() { a.queued.Add(-int64(n)) }, nil
}

// acquire waits for a signing slot; it returns when the slot was taken,
// for release.
func (a *admission) acquire(ctx context.Context) (time.Time, error) {
	select {
	case a.slots <- struct{}{}:
		return wallclock.Now(), nil // a CSR's cost is measured on the monotonic clock, not the injected one
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
}

// tryAcquire takes a signing slot if one is free now.
func (a *admission) tryAcquire() (time.Time, bool) {
	select {
	case a.slots <- struct{}{}:
		return wallclock.Now(), true
	default:
		return time.Time{}, false
	}
}

// release frees a signing slot taken at start and used for n CSRs, and
// adds the time each took to the moving average of the cost of a CSR.
func (a *admission) release(start time.Time, n int) {
	// The cost of a CSR is CPU work: a jump of the injected clock during a
	// signing must not count.
	if d := wallclock.Since(start); d > 0 && n > 0 {
		old := a.costNanos.Load()
		a.costNanos.Store(old + (int64(d)/int64(n)-old)/16) // a lost update only delays the average
	}
	<-a.slots
}

// QueueDepth is the number of CSRs admitted and not yet signed.
func (a *admission) QueueDepth() int64 { return a.queued.Load() }
