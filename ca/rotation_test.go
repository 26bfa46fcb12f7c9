package ca

import (
	"testing"
	"time"
)

func TestPlanRotation(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	active := Validity{NotBefore: t0, NotAfter: t0.Add(30 * day)}
	prepared := Validity{NotBefore: t0.Add(15 * day), NotAfter: t0.Add(45 * day)}
	tests := []struct {
		name     string
		now      time.Time
		active   Validity
		prepared Validity
		step     RotationStep
		next     time.Time
	}{
		{"young: wait for half-life", t0.Add(day), active, Validity{}, StepNone, t0.Add(15 * day)},
		{"half-life: prepare", t0.Add(15 * day), active, Validity{}, StepPrepare, t0.Add(15 * day)},
		{"prepared: wait for two thirds", t0.Add(16 * day), active, prepared, StepNone, t0.Add(20 * day)},
		{"two thirds: activate", t0.Add(20 * day), active, prepared, StepActivate, t0.Add(20 * day)},
		{"expired, prepared: activate", t0.Add(31 * day), active, prepared, StepActivate, t0.Add(31 * day)},
		{"expired, none prepared: prepare", t0.Add(31 * day), active, Validity{}, StepPrepare, t0.Add(31 * day)},
		{"prepared one expired too: prepare", t0.Add(46 * day), active, prepared, StepPrepare, t0.Add(46 * day)},
		{"no active: prepare", t0, Validity{}, Validity{}, StepPrepare, t0},
		{"no active, prepared: activate", t0, Validity{}, prepared, StepActivate, t0},
	}
	for _, tt := range tests {
		step, next := PlanRotation(tt.now, tt.active, tt.prepared)
		if step != tt.step || !next.Equal(tt.next) {
			t.Errorf("%s: PlanRotation = %s, %s; want %s, %s", tt.name, step, next, tt.step, tt.next)
		}
	}
}

// The schedule counts from the time of issue, not the backdated NotBefore:
// a one-minute intermediate is prepared 30 s after it was made.
func TestValidityOfIgnoresBackdate(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	v := ValidityOf(&Certificate{NotBefore: now.Add(-Backdate), NotAfter: now.Add(time.Minute)})
	if s := ScheduleOf(v.NotBefore, v.NotAfter); !s.PrepareAt.Equal(now.Add(30*time.Second)) || !s.ActivateAt.Equal(now.Add(40*time.Second)) {
		t.Errorf("schedule of a one-minute intermediate: %+v", s)
	}
}
