package audit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// Memory is a Recorder that keeps events in memory, numbered like a Log's,
// for tests that assert on what was audited.
type Memory struct {
	Source string
	// Clock stamps the events; nil: the real clock.
	Clock clockwork.Clock

	mu      sync.Mutex
	events  []Event
	changed chan struct{}
}

// Record appends e with the next sequence number and the current time.
func (m *Memory) Record(e Event) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Clock != nil {
		e.Time = m.Clock.Now().UTC()
	} else {
		e.Time = time.Now().UTC()
	}
	e.Source = m.Source
	e.Seq = uint64(len(m.events) + 1)
	m.events = append(m.events, e)
	if m.changed != nil {
		close(m.changed)
		m.changed = nil
	}
	return e.Seq
}

// Events returns a copy of the events recorded so far.
func (m *Memory) Events() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Event(nil), m.events...)
}

// Wait returns the first event for which match is true, waiting for it to
// be recorded until ctx ends.
func (m *Memory) Wait(ctx context.Context, match func(Event) bool) (Event, error) {
	seen := 0
	for {
		m.mu.Lock()
		for ; seen < len(m.events); seen++ {
			if match(m.events[seen]) {
				e := m.events[seen]
				m.mu.Unlock()
				return e, nil
			}
		}
		if m.changed == nil {
			m.changed = make(chan struct{})
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Event{}, fmt.Errorf("audit: no matching event among %d: %w", seen, ctx.Err())
		}
	}
}

// Tee is a Recorder that records to every recorder of its list.
type Tee []Recorder

// Record records e to each recorder and returns the first's sequence number.
func (t Tee) Record(e Event) uint64 {
	var seq uint64
	for i, r := range t {
		if s := r.Record(e); i == 0 {
			seq = s
		}
	}
	return seq
}
