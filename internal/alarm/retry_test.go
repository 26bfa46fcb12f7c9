package alarm

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// A retry of an hour fires as soon as a fake clock is moved an hour, long
// before an hour of real time.
func TestRetryFiresWhenTheClockJumps(t *testing.T) {
	fc := clockwork.NewFakeClock()
	a := Retry(fc, time.Hour)
	defer a.Stop()
	select {
	case <-a.C():
		t.Fatal("the retry fired before its time")
	default:
	}
	fc.Advance(time.Hour)
	select {
	case <-a.C():
	case <-time.After(10 * time.Second):
		t.Fatal("the clock moved an hour and an hour's retry did not fire")
	}
}

// A retry fires after its span of real time even when the fake clock
// stands still: a failed step of a test's server is still retried.
func TestRetryFiresInRealTimeWhenTheClockStandsStill(t *testing.T) {
	fc := clockwork.NewFakeClock()
	began := time.Now()
	a := Retry(fc, 20*time.Millisecond)
	defer a.Stop()
	select {
	case <-a.C():
	case <-time.After(10 * time.Second):
		t.Fatal("a 20 ms retry had not fired after 10 s of real time")
	}
	if waited := time.Since(began); waited < 20*time.Millisecond {
		t.Fatalf("the retry fired after %s, before its 20 ms", waited)
	}
}

// Sleep returns the context's error when it ends first, nil otherwise; a
// zero wait returns at once.
func TestSleep(t *testing.T) {
	fc := clockwork.NewFakeClock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, fc, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep with an ended context = %v, want context.Canceled", err)
	}
	if err := Sleep(context.Background(), fc, 0); err != nil {
		t.Fatalf("Sleep(0) = %v", err)
	}
}
