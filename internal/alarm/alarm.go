// Package alarm waits for a moment of a clockwork.Clock. A timer made with
// clock.NewTimer(t.Sub(clock.Now())) fires late if the clock moves between
// reading Now and making the timer; with a real clock that is nanoseconds,
// but a fake clock that tests move by hours at a time can jump in between,
// and the timer then waits a whole step too long. An alarm fires once the
// clock has reached its moment, whatever the clock did meanwhile.
package alarm

import (
	"time"

	"github.com/jonboulle/clockwork"
)

// slack is how far the clock may move while a timer is made without the
// alarm making it again: far more than a real clock moves in that time,
// far less than any step of a fake clock.
const slack = time.Millisecond

// Alarm fires once its clock reaches a moment.
type Alarm struct {
	c     <-chan time.Time
	timer clockwork.Timer
	real  *time.Timer // Retry's real-time bound
}

// At returns an alarm for the moment t of clock: its channel receives once
// the clock reads t or later (at once if it already does).
func At(clock clockwork.Clock, t time.Time) *Alarm {
	for {
		now := clock.Now()
		if !now.Before(t) {
			ch := make(chan time.Time, 1)
			ch <- now
			return &Alarm{c: ch}
		}
		timer := clock.NewTimer(t.Sub(now))
		if clock.Now().Sub(now) < slack {
			return &Alarm{c: timer.Chan(), timer: timer}
		}
		timer.Stop() // the clock jumped meanwhile: the timer would be late
	}
}

// C is the channel the alarm fires on.
func (a *Alarm) C() <-chan time.Time { return a.c }

// Stop releases the alarm's timer.
func (a *Alarm) Stop() {
	if a.timer != nil {
		a.timer.Stop()
	}
	if a.real != nil {
		a.real.Stop()
	}
}
