package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/retryinfo"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestAdmission(t *testing.T) {
	a := newAdmission(2, 10, rate.Limit(1), 8)
	// Over the node's rate: retryable, with a hint.
	done, err := a.admit("n1", 8)
	if err != nil {
		t.Fatal(err)
	}
	done()
	if _, err := a.admit("n1", 4); err == nil {
		t.Fatal("a node over its rate was admitted")
	} else if d, ok := retryinfo.After(err); !ok || d <= 0 {
		t.Errorf("rate refusal %v: want ResourceExhausted with a retry-after hint", err)
	}
	// The queue: bounded for all nodes together.
	release, err := a.admit("n2", 8)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.admit("n3", 4); err == nil {
		t.Error("admitted past the queue bound")
	} else if _, ok := retryinfo.After(err); !ok {
		t.Errorf("full queue: %v, want a retryable refusal", err)
	}
	if a.QueueDepth() != 8 {
		t.Errorf("queue depth %d, want 8", a.QueueDepth())
	}
	release()
	if a.QueueDepth() != 0 {
		t.Errorf("queue depth %d after release, want 0", a.QueueDepth())
	}
	// A batch larger than the burst can never pass: not retryable.
	if _, err := a.admit("n4", 9); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("batch over the burst: %v, want FailedPrecondition", err)
	}
}

// Limiters of idle nodes do not accumulate without bound.
func TestAdmissionForgetsIdleNodes(t *testing.T) {
	a := newAdmission(2, 1<<20, rate.Inf, 8)
	for i := 0; i < maxIdleLimiters+100; i++ {
		done, err := a.admit(fmt.Sprint("node-", i), 0)
		if err != nil {
			t.Fatal(err)
		}
		done()
	}
	time.Sleep(time.Millisecond)
	if n := len(a.nodes); n > maxIdleLimiters {
		t.Errorf("%d limiters kept, want at most %d", n, maxIdleLimiters)
	}
}
