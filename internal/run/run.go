// Package run composes the long-lived goroutines of a process (a server's
// listeners and loops, an agent's Workload API and server session, meshca
// dev's server and agent) into a Group that starts them, stops them
// together and reports why they stopped.
//
// A Group is errgroup with three differences that long-running services
// need: every task has a name, which its error carries; a panic in a task
// is recovered and reported as a *PanicError with the stack, instead of
// killing the process without the other tasks' cleanup; and an error that
// a task returns after the group was told to stop is not reported, since a
// task interrupted by a stop (a listener closed under Serve) often fails
// in ways that say nothing. Panics are reported even then: they are bugs.
//
// Usage:
//
//	g := run.New(ctx)
//	g.Go("API", func(ctx context.Context) error { return serve(ctx) })
//	g.Go("rotation", s.rotateLoop)
//	<-g.Context().Done() // ctx ended, Stop was called, or a task failed
//	closeListeners()
//	return g.Wait()
package run

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
)

// Group runs named tasks, each in a goroutine of its own, under one
// context. The first task to fail (return an error or panic) cancels the
// context, which the others must watch to return. Make one with New; its
// methods are safe for concurrent use.
type Group struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	mu  sync.Mutex
	err error // the first failure; guarded by mu
}

// New returns a Group whose context is derived from ctx: it is cancelled
// when ctx is, when Stop is called, or when a task fails.
func New(ctx context.Context) *Group {
	ctx, cancel := context.WithCancelCause(ctx)
	return &Group{ctx: ctx, cancel: cancel}
}

// Context returns the context the tasks run under. It is done once the
// group is stopping; context.Cause then says why (the *TaskError or
// *PanicError of a failed task, or the parent's cause).
func (g *Group) Context() context.Context { return g.ctx }

// Go starts task name in a new goroutine, with the group's context. The
// task must return once that context is done; it should return nil when it
// stops because of that. A task that returns nil while the group runs
// simply ends; one that returns an error or panics stops the group.
// Go may be called while other tasks run, but not after Wait has returned.
func (g *Group) Go(name string, task func(ctx context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer func() {
			if v := recover(); v != nil {
				g.fail(&PanicError{Task: name, Value: v, Stack: debug.Stack()}, true)
			}
		}()
		if err := task(g.ctx); err != nil {
			g.fail(&TaskError{Task: name, Err: err}, false)
		}
	}()
}

// fail records err as the group's failure if it is the first, and stops
// the group. An error (not a panic) after the group stopped is dropped.
func (g *Group) fail(err error, panicked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil || (!panicked && g.ctx.Err() != nil) {
		return
	}
	g.err = err
	g.cancel(err)
}

// Stop cancels the group's context, asking every task to return. It does
// not wait: Wait does.
func (g *Group) Stop() { g.cancel(nil) }

// Wait waits for every task to return, then cancels the group's context
// (releasing it) and returns the first failure: a *TaskError, a
// *PanicError, or nil when the tasks stopped because the group was told to
// (its parent context ended or Stop was called) or all returned nil.
func (g *Group) Wait() error {
	g.wg.Wait()
	g.cancel(nil)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// TaskError is the error a task returned, with the task's name.
type TaskError struct {
	Task string
	Err  error
}

func (e *TaskError) Error() string { return e.Task + ": " + e.Err.Error() }

// Unwrap returns the task's error.
func (e *TaskError) Unwrap() error { return e.Err }

// PanicError is a panic recovered in a task.
type PanicError struct {
	Task string
	// Value is what the task panicked with.
	Value any
	// Stack is the goroutine's stack at the panic (runtime/debug.Stack).
	Stack []byte
}

// Error names the task and the panic value, then gives the stack, so that
// the log line of a stopped process says where the bug is.
func (e *PanicError) Error() string {
	return fmt.Sprintf("%s: panic: %v\n\n%s", e.Task, e.Value, e.Stack)
}

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
