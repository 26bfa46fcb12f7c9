package ca

import "time"

// The rotation schedule of an authority with lifetime L (NotBefore to
// NotAfter): its successor is prepared at L/2 and activated at 2L/3; the
// predecessor then stays valid, without signing, until it expires, so that
// the chains it signed stay good. A leaf of up to L/3 always gets its full
// lifetime from the active authority. With the default 30-day intermediate:
// prepared at day 15, activated at day 20, 24-hour SVIDs always at full TTL.
const (
	prepareNum, prepareDen   = 1, 2
	activateNum, activateDen = 2, 3
)

// RotationStep is what an authority's holder should do now.
type RotationStep int

// The rotation steps.
const (
	// StepNone: nothing to do until the returned time.
	StepNone RotationStep = iota
	// StepPrepare: create the successor and record it as prepared.
	StepPrepare
	// StepActivate: the prepared successor starts signing; the active one
	// becomes old.
	StepActivate
)

// String names the step.
func (s RotationStep) String() string {
	switch s {
	case StepPrepare:
		return "prepare"
	case StepActivate:
		return "activate"
	}
	return "none"
}

// Schedule is when an authority's successor is prepared and activated.
type Schedule struct {
	PrepareAt, ActivateAt time.Time
}

// ScheduleOf returns the rotation schedule of an authority valid from
// notBefore to notAfter.
func ScheduleOf(notBefore, notAfter time.Time) Schedule {
	life := notAfter.Sub(notBefore)
	return Schedule{
		PrepareAt:  notBefore.Add(life / prepareDen * prepareNum),
		ActivateAt: notBefore.Add(life / activateDen * activateNum),
	}
}

// Validity is the period of an authority (or its absence: the zero value),
// from the time it was issued (not its backdated NotBefore) to NotAfter.
type Validity struct {
	NotBefore, NotAfter time.Time
}

// ValidityOf returns the validity of a CA certificate for rotation: from
// its issue time (NotBefore + Backdate, as meshca backdates) to NotAfter.
func ValidityOf(c *Certificate) Validity {
	issued := c.NotBefore
	if c.NotAfter.Sub(c.NotBefore) > Backdate {
		issued = issued.Add(Backdate)
	}
	return Validity{NotBefore: issued, NotAfter: c.NotAfter}
}

// IsZero reports whether there is no authority.
func (v Validity) IsZero() bool { return v.NotAfter.IsZero() }

// PlanRotation decides the next rotation step at now for an active
// authority and its prepared successor (zero if none), and returns when the
// step after it falls due. A prepared successor that has itself expired
// (its holder was down a long time) counts as none. With no active
// authority, a prepared one is activated and otherwise one is prepared.
func PlanRotation(now time.Time, active, prepared Validity) (step RotationStep, next time.Time) {
	if !prepared.IsZero() && !now.Before(prepared.NotAfter) {
		prepared = Validity{}
	}
	if active.IsZero() || !now.Before(active.NotAfter) {
		if prepared.IsZero() {
			return StepPrepare, now
		}
		return StepActivate, now
	}
	s := ScheduleOf(active.NotBefore, active.NotAfter)
	switch {
	case prepared.IsZero() && !now.Before(s.PrepareAt):
		return StepPrepare, now
	case prepared.IsZero():
		return StepNone, s.PrepareAt
	case !now.Before(s.ActivateAt):
		return StepActivate, now
	}
	return StepNone, s.ActivateAt
}
