package audit

import "sync"

// Recent appends to out the durable events numbered from from on, up to
// max of them, from memory, and reports whether memory held them: ok false
// means from is older than the oldest event kept (or nothing was written
// since Open, or Config.Recent is 0) and the caller reads the log with
// Tail. The events are the
// ones Tail would decode from the segments.
func (l *Log) Recent(from uint64, max int, out []Event) (_ []Event, ok bool) {
	return l.recent.get(from, max, out)
}

// recentEvents is a ring of consecutive durable events.
type recentEvents struct {
	mu    sync.Mutex
	ring  []Event
	start int    // index of the oldest event
	n     int    // events held
	first uint64 // the oldest one's sequence number
}

// add appends a durable batch (consecutive sequence numbers), dropping the
// oldest beyond size.
func (r *recentEvents) add(batch []Event, size int) {
	if size <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ring == nil {
		r.ring = make([]Event, size)
	}
	for _, e := range batch {
		if r.n > 0 && e.Seq != r.first+uint64(r.n) {
			r.n = 0 // not the next one (cannot happen): start again
		}
		if r.n == 0 {
			r.start, r.first = 0, e.Seq
		}
		if r.n == len(r.ring) {
			r.ring[r.start] = Event{}
			r.start = (r.start + 1) % len(r.ring)
			r.first++
			r.n--
		}
		r.ring[(r.start+r.n)%len(r.ring)] = e
		r.n++
	}
}

func (r *recentEvents) get(from uint64, max int, out []Event) ([]Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == 0 || from < r.first || from > r.first+uint64(r.n) {
		return out, false
	}
	for i := int(from - r.first); i < r.n && max > 0; i++ {
		out = append(out, r.ring[(r.start+i)%len(r.ring)])
		max--
	}
	return out, true
}
