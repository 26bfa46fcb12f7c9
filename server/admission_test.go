package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/internal/retryinfo"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func testLimits(perNode rate.Limit, burst int, wait time.Duration) admissionLimits {
	return admissionLimits{concurrency: 2, queue: 10, node: perNode, nodeBurst: burst, operator: 1, operatorBurst: 1, wait: wait}
}

func TestAdmission(t *testing.T) {
	clock := clockwork.NewFakeClock()
	a := newAdmission(clock, testLimits(1, 8, 0))
	// Over the node's rate: retryable, with a hint.
	done, err := a.admit(t.Context(), "n1", false, 8)
	if err != nil {
		t.Fatal(err)
	}
	done()
	if _, err := a.admit(t.Context(), "n1", false, 4); err == nil {
		t.Fatal("a node over its rate was admitted")
	} else if d, ok := retryinfo.After(err); !ok || d <= 0 {
		t.Errorf("rate refusal %v: want ResourceExhausted with a retry-after hint", err)
	}
	// The queue: bounded for all nodes together.
	release, err := a.admit(t.Context(), "n2", false, 8)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.admit(t.Context(), "n3", false, 4); err == nil {
		t.Error("admitted past the queue bound")
	} else if d, ok := retryinfo.After(err); !ok || d < minQueueRetry {
		t.Errorf("full queue: %v (hint %v), want a retryable refusal of at least %v", err, d, minQueueRetry)
	}
	if a.QueueDepth() != 8 {
		t.Errorf("queue depth %d, want 8", a.QueueDepth())
	}
	release()
	if a.QueueDepth() != 0 {
		t.Errorf("queue depth %d after release, want 0", a.QueueDepth())
	}
	// A batch larger than the burst can never pass: not retryable.
	if _, err := a.admit(t.Context(), "n4", false, 9); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("batch over the burst: %v, want FailedPrecondition", err)
	}
}

// A refusal's retry-after is the time until the bucket holds the CSRs
// asked for: a retry then is admitted, one just before is not.
func TestAdmissionRetryAfterIsTimeUntilCapacity(t *testing.T) {
	clock := clockwork.NewFakeClock()
	a := newAdmission(clock, testLimits(10, 10, 0))
	done, err := a.admit(t.Context(), "n", false, 10)
	if err != nil {
		t.Fatal(err)
	}
	done()
	_, err = a.admit(t.Context(), "n", false, 5)
	hint, ok := retryinfo.After(err)
	if !ok || hint != 500*time.Millisecond {
		t.Fatalf("admit 5 CSRs at 10/s with an empty bucket: %v (hint %v); want a hint of 500ms", err, hint)
	}
	clock.Advance(hint - time.Millisecond)
	if _, err := a.admit(t.Context(), "n", false, 5); err == nil {
		t.Fatal("admitted before the hint")
	}
	clock.Advance(time.Millisecond)
	if done, err := a.admit(t.Context(), "n", false, 5); err != nil {
		t.Fatalf("retry after the hint: %v", err)
	} else {
		done()
	}
}

// A caller over its rate waits for its budget (on the clock, not
// spinning) instead of being refused; one whose context ends gives its
// reservation back.
func TestAdmissionWaitsForBudget(t *testing.T) {
	clock := clockwork.NewFakeClock()
	a := newAdmission(clock, testLimits(10, 1, time.Second))
	done, err := a.admit(t.Context(), "n", false, 1)
	if err != nil {
		t.Fatal(err)
	}
	done()
	admitted := make(chan error, 1)
	go func() {
		done, err := a.admit(t.Context(), "n", false, 1)
		if err == nil {
			done()
		}
		admitted <- err
	}()
	if err := clock.BlockUntilContext(tctx(t), 1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-admitted:
		t.Fatalf("admitted before its budget refilled: %v", err)
	default:
	}
	clock.Advance(100 * time.Millisecond)
	if err := <-admitted; err != nil {
		t.Fatalf("a waiting caller: %v, want admitted once its budget refilled", err)
	}

	// A waiter that gives up frees its place for the next.
	ctx, cancel := context.WithCancel(t.Context())
	gaveUp := make(chan error, 1)
	go func() { _, err := a.admit(ctx, "n", false, 1); gaveUp <- err }()
	if err := clock.BlockUntilContext(tctx(t), 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v, want context.Canceled", err)
	}
	clock.Advance(100 * time.Millisecond)
	if done, err := a.admit(t.Context(), "n", false, 1); err != nil {
		t.Fatalf("after a waiter gave up: %v, want its budget available", err)
	} else {
		done()
	}
}

// Operator mints have a budget of their own: operators over theirs do
// not take the nodes', and the other way round.
func TestAdmissionOperatorBudget(t *testing.T) {
	clock := clockwork.NewFakeClock()
	lim := testLimits(1, 1, 0)
	lim.operator, lim.operatorBurst = 100, 100
	a := newAdmission(clock, lim)
	for i := 0; i < 100; i++ {
		done, err := a.admit(t.Context(), operatorNodeID, true, 1)
		if err != nil {
			t.Fatalf("mint %d of a burst of 100: %v", i, err)
		}
		done()
	}
	if _, err := a.admit(t.Context(), operatorNodeID, true, 1); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("mint past the operators' burst: %v, want ResourceExhausted", err)
	}
	// A node named like the operators' budget has its own.
	if done, err := a.admit(t.Context(), operatorNodeID, false, 1); err != nil {
		t.Errorf("a node while operators are over their rate: %v", err)
	} else {
		done()
	}
}

// throttleRun drives callers that each ask for one CSR every period (twice
// the node's rate in total), on the fake clock, for the simulated duration
// d after a warm-up. A refused caller waits for the hint and asks again.
// It returns the CSRs admitted per second after the warm-up, and the
// requests and refusals made after it.
func throttleRun(t *testing.T, lim admissionLimits, callers int, period, warmup, d time.Duration) (perSecond float64, requests, refusals int) {
	t.Helper()
	clock := clockwork.NewFakeClock()
	a := newAdmission(clock, lim)
	start := clock.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+d)
	var (
		mu                       sync.Mutex
		admitted, asked, refused int
	)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the callers' first requests over one period.
			next := start.Add(period * time.Duration(i) / time.Duration(callers))
			for {
				if w := next.Sub(clock.Now()); w > 0 {
					select {
					case <-clock.After(w):
					case <-ctx.Done():
						return
					}
				}
				now := clock.Now()
				next = next.Add(period)
				if next.Before(now) {
					next = now
				}
				done, err := a.admit(ctx, "node", false, 1)
				at := clock.Now()
				mu.Lock()
				counted := !now.Before(measureFrom)
				if counted {
					asked++
				}
				if err == nil && !at.Before(measureFrom) && at.Before(end) {
					admitted++
				}
				if status.Code(err) == codes.ResourceExhausted && counted {
					refused++
				}
				mu.Unlock()
				if err == nil {
					done()
					continue
				}
				hint, ok := retryinfo.After(err)
				if !ok {
					if ctx.Err() == nil {
						t.Errorf("admit: %v, want admitted or ResourceExhausted", err)
					}
					return
				}
				if hint <= 0 {
					t.Errorf("refusal %v with no retry-after", err)
					return
				}
				next = clock.Now().Add(hint)
			}
		}()
	}
	// Every caller sleeps on the clock between requests: when all of them
	// wait, time moves on by one step.
	bound := tctx(t)
	for step := 0; clock.Now().Before(end); step++ {
		if err := clock.BlockUntilContext(bound, callers); err != nil {
			t.Fatalf("step %d: the callers did not all wait on the clock: %v", step, err)
		}
		clock.Advance(time.Millisecond)
	}
	cancel()
	wg.Wait()
	return float64(admitted) / d.Seconds(), asked, refused
}

// 32 callers on one node ask for twice the node's rate. They wait for
// their budget instead of being refused, come back when a refusal says
// and not before, so that refusals stay rare (≤ 5% of requests) while
// the node gets exactly its rate. On the fake clock: the figures are
// those of the algorithm, not of the machine.
func TestThrottle32CallersAtTwiceTheNodeRate(t *testing.T) {
	const callers = 32
	for _, tc := range []struct {
		name  string
		rate  rate.Limit
		burst int
	}{
		{"rate 100/s", 100, 10},
		{"default limits", DefaultNodeSignRate, DefaultNodeSignBurst},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each caller asks for 2×rate/callers CSRs per second.
			period := time.Duration(float64(time.Second) * callers / (2 * float64(tc.rate)))
			lim := admissionLimits{concurrency: 2, queue: DefaultSignQueue, node: tc.rate, nodeBurst: tc.burst,
				operator: 1, operatorBurst: 1, wait: DefaultAdmissionWait}
			warmup := 2*time.Second + time.Duration(float64(tc.burst)/float64(tc.rate)*float64(time.Second)) // the burst is spent
			got, requests, refusals := throttleRun(t, lim, callers, period, warmup, 20*time.Second)
			t.Logf("%s: %.1f CSRs/s admitted, %d requests, %d refused", tc.name, got, requests, refusals)
			if want := float64(tc.rate); got < 0.98*want || got > 1.02*want {
				t.Errorf("admitted %.1f CSRs/s, want the node's rate %.0f (±2%%)", got, want)
			}
			if float64(refusals) > 0.05*float64(requests) {
				t.Errorf("%d refusals in %d requests, want at most 5%%", refusals, requests)
			}
		})
	}
}

// Limiters of idle nodes do not accumulate without bound.
func TestAdmissionForgetsIdleNodes(t *testing.T) {
	clock := clockwork.NewFakeClock()
	a := newAdmission(clock, admissionLimits{concurrency: 2, queue: 1 << 20, node: rate.Inf, nodeBurst: 8})
	for i := 0; i < maxIdleLimiters+100; i++ {
		done, err := a.admit(t.Context(), fmt.Sprint("node-", i), false, 0)
		if err != nil {
			t.Fatal(err)
		}
		done()
	}
	if n := len(a.nodes); n > maxIdleLimiters {
		t.Errorf("%d limiters kept, want at most %d", n, maxIdleLimiters)
	}
}
