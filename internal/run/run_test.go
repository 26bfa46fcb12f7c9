package run

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// waitTimeout bounds how long a test waits for the group; a group that
// does not stop fails the test instead of hanging it.
const waitTimeout = 10 * time.Second

// waitGroup returns g.Wait()'s result, failing t if the group does not
// stop within waitTimeout.
func waitGroup(t *testing.T, g *Group) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(waitTimeout):
		t.Fatal("the group did not stop")
		return nil
	}
}

// blockUntilDone is a task that runs until its context ends and counts
// how many such tasks have stopped.
func blockUntilDone(stopped *atomic.Int32) func(context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		stopped.Add(1)
		return ctx.Err() // dropped: the group is stopping
	}
}

func TestFirstErrorCancelsTheOthers(t *testing.T) {
	t.Parallel()
	g := New(t.Context())
	var stopped atomic.Int32
	g.Go("a", blockUntilDone(&stopped))
	g.Go("b", blockUntilDone(&stopped))
	boom := errors.New("boom")
	release := make(chan struct{})
	g.Go("failing", func(context.Context) error {
		<-release
		return boom
	})
	// A later error, returned once the group stops, is not the one reported.
	g.Go("late", func(ctx context.Context) error {
		<-ctx.Done()
		return errors.New("late")
	})
	close(release)
	err := waitGroup(t, g)
	var te *TaskError
	if !errors.As(err, &te) || te.Task != "failing" || !errors.Is(err, boom) || err.Error() != "failing: boom" {
		t.Fatalf("Wait() = %v, want failing's error as a *TaskError", err)
	}
	if n := stopped.Load(); n != 2 {
		t.Errorf("%d of the 2 other tasks stopped", n)
	}
	if cause := context.Cause(g.Context()); !errors.Is(cause, boom) {
		t.Errorf("context cause = %v, want the failure", cause)
	}
}

func TestPanicIsReportedWithNameAndStack(t *testing.T) {
	t.Parallel()
	g := New(t.Context())
	var stopped atomic.Int32
	g.Go("other", blockUntilDone(&stopped))
	g.Go("buggy", func(context.Context) error {
		var m map[string]int
		m["x"] = 1 // a nil map write panics
		return nil
	})
	err := waitGroup(t, g)
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Task != "buggy" {
		t.Fatalf("Wait() = %v, want buggy's panic as a *PanicError", err)
	}
	if !strings.HasPrefix(err.Error(), "buggy: panic: assignment to entry in nil map") || !strings.Contains(err.Error(), "run_test.go") {
		t.Errorf("the error does not give the panic and its stack:\n%s", err)
	}
	var re interface{ RuntimeError() }
	if !errors.As(err, &re) {
		t.Errorf("Unwrap does not give the runtime error the task panicked with")
	}
	if stopped.Load() != 1 {
		t.Error("a panic did not stop the other task")
	}
}

// A panic while the group stops is still reported: it is a bug, unlike an
// error a stopped task returns.
func TestPanicAfterStopIsReported(t *testing.T) {
	t.Parallel()
	g := New(t.Context())
	g.Go("buggy", func(ctx context.Context) error {
		<-ctx.Done()
		panic("on the way out")
	})
	g.Stop()
	var pe *PanicError
	if err := waitGroup(t, g); !errors.As(err, &pe) || pe.Value != "on the way out" {
		t.Fatalf("Wait() = %v, want the panic", err)
	}
}

func TestCleanStop(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		stop func(g *Group, cancel context.CancelFunc)
	}{
		{"ok/stop", func(g *Group, _ context.CancelFunc) { g.Stop() }},
		{"ok/parent-cancelled", func(_ *Group, cancel context.CancelFunc) { cancel() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			g := New(ctx)
			var stopped atomic.Int32
			for _, name := range []string{"a", "b", "c"} {
				g.Go(name, blockUntilDone(&stopped))
			}
			// A task that ends early with nil does not stop the others.
			ended := make(chan struct{})
			g.Go("short", func(context.Context) error { close(ended); return nil })
			<-ended
			if g.Context().Err() != nil {
				t.Fatal("a task that returned nil stopped the group")
			}
			tc.stop(g, cancel)
			if err := waitGroup(t, g); err != nil {
				t.Errorf("Wait() = %v after a clean stop, want nil", err)
			}
			if n := stopped.Load(); n != 3 {
				t.Errorf("Wait returned with %d of 3 tasks stopped", n)
			}
		})
	}
}

func TestAllTasksReturnNil(t *testing.T) {
	t.Parallel()
	g := New(t.Context())
	var ran atomic.Int32
	for range 5 {
		g.Go("quick", func(context.Context) error { ran.Add(1); return nil })
	}
	if err := waitGroup(t, g); err != nil || ran.Load() != 5 {
		t.Errorf("Wait() = %v with %d of 5 tasks run", err, ran.Load())
	}
	if g.Context().Err() == nil {
		t.Error("Wait did not release the group's context")
	}
}
