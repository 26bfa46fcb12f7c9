package alarm

import (
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// An alarm for a moment already passed fires at once; one in the future
// fires when a fake clock is moved to it, not before.
func TestAlarm(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	fc := clockwork.NewFakeClockAt(start)

	past := At(fc, start.Add(-time.Hour))
	select {
	case <-past.C():
	default:
		t.Fatal("an alarm for a past moment did not fire at once")
	}

	a := At(fc, start.Add(time.Hour))
	defer a.Stop()
	fc.Advance(59 * time.Minute)
	select {
	case <-a.C():
		t.Fatal("the alarm fired a minute early")
	default:
	}
	fc.Advance(time.Minute)
	select {
	case <-a.C():
	case <-time.After(10 * time.Second):
		t.Fatal("the alarm did not fire when the clock reached its moment")
	}
}

// A fake clock moved past the moment between the alarm's reading of the
// time and its timer still fires the alarm: the race the package exists for.
func TestAlarmClockJumpsWhileArming(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	fc := &jumpingClock{FakeClock: clockwork.NewFakeClockAt(start), jump: 2 * time.Hour}
	a := At(fc, start.Add(time.Hour))
	defer a.Stop()
	select {
	case <-a.C():
	case <-time.After(10 * time.Second):
		t.Fatal("the clock jumped past the moment while the alarm was armed, and it never fired")
	}
}

// jumpingClock advances by jump just before the first timer is made, as if
// a test moved the clock between the alarm's reading of the time and its
// making of the timer.
type jumpingClock struct {
	*clockwork.FakeClock
	jump   time.Duration
	jumped bool
}

func (j *jumpingClock) NewTimer(d time.Duration) clockwork.Timer {
	if !j.jumped {
		j.jumped = true
		j.FakeClock.Advance(j.jump)
	}
	return j.FakeClock.NewTimer(d)
}
