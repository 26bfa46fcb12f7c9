package alarm

import (
	"context"
	"time"

	"github.com/jonboulle/clockwork"
)

// Retries, backoffs and periodic re-checks are not lifetimes: nothing
// expires when they pass, they only pace work that failed or might have
// been missed. They wait on the injected clock like everything else, so a
// test that jumps the clock by days sees its retries happen at once, but
// never longer than the same span of real time, so a test whose fake clock
// stands still still sees a failed step retried. With a real clock both
// are the same wait. This file is the one place where meshca's servers and
// agents wait on real time for that reason.

// Retry returns an alarm that fires once d has passed on clock or in real
// time, whichever comes first. Stop it when done with it.
func Retry(clock clockwork.Clock, d time.Duration) *Alarm {
	ch := make(chan time.Time, 1)
	fire := func() {
		select {
		case ch <- clock.Now():
		default:
		}
	}
	if d <= 0 {
		fire()
		return &Alarm{c: ch}
	}
	return &Alarm{c: ch, timer: clock.AfterFunc(d, fire), real: time.AfterFunc(d, fire)}
}

// Sleep waits until d has passed on clock or in real time, whichever comes
// first, or until ctx ends; it returns ctx's error if ctx ended first.
func Sleep(ctx context.Context, clock clockwork.Clock, d time.Duration) error {
	a := Retry(clock, d)
	defer a.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-a.C():
		return nil
	}
}
