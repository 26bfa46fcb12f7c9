package sds

import (
	"slices"
	"sync"
)

// waker is something a topic notification wakes: a stream (queued for a
// push worker) or a fetch waiting for pending names.
type waker interface {
	wake()
}

// hub indexes wakers by topic and runs the push workers.
//
// Workers are started on demand, at most max at a time, and exit when the
// queue is empty, so an idle server has none; close waits for them.
type hub struct {
	mu   sync.Mutex
	subs map[string]map[waker]struct{} // topic → wakers depending on it

	qmu     sync.Mutex // guards the fields below
	queue   []*stream
	running int
	max     int
	closed  bool
	idle    *sync.Cond // on qmu: broadcast when the last worker exits
	wg      sync.WaitGroup
}

func newHub(workers int) *hub {
	h := &hub{subs: map[string]map[waker]struct{}{}, max: workers}
	h.idle = sync.NewCond(&h.qmu)
	return h
}

// setTopics replaces w's topics old by next (both sorted, deduplicated).
func (h *hub) setTopics(w waker, old, next []string) {
	if slices.Equal(old, next) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range old {
		if _, keep := slices.BinarySearch(next, t); keep {
			continue
		}
		if m := h.subs[t]; m != nil {
			delete(m, w)
			if len(m) == 0 {
				delete(h.subs, t)
			}
		}
	}
	for _, t := range next {
		m := h.subs[t]
		if m == nil {
			m = map[waker]struct{}{}
			h.subs[t] = m
		}
		m[w] = struct{}{}
	}
}

// notify wakes every waker that depends on one of topics.
func (h *hub) notify(topics []string) {
	var ws []waker
	h.mu.Lock()
	for _, t := range topics {
		for w := range h.subs[t] {
			ws = append(ws, w)
		}
	}
	h.mu.Unlock()
	for _, w := range ws {
		w.wake()
	}
}

// enqueue queues st for a push and starts a worker if there is room.
func (h *hub) enqueue(st *stream) {
	h.qmu.Lock()
	defer h.qmu.Unlock()
	if h.closed {
		return
	}
	h.queue = append(h.queue, st)
	if h.running < h.max {
		h.running++
		h.wg.Add(1)
		go h.work()
	}
}

func (h *hub) next() *stream {
	h.qmu.Lock()
	defer h.qmu.Unlock()
	if len(h.queue) == 0 || h.closed {
		h.running--
		h.queue = nil
		if h.running == 0 {
			h.idle.Broadcast()
		}
		return nil
	}
	st := h.queue[0]
	h.queue[0] = nil
	h.queue = h.queue[1:]
	return st
}

func (h *hub) work() {
	defer h.wg.Done()
	for st := h.next(); st != nil; st = h.next() {
		st.queued.Store(false)
		st.push()
	}
}

// waitIdle waits until no push is queued or running.
func (h *hub) waitIdle() {
	h.qmu.Lock()
	defer h.qmu.Unlock()
	for h.running > 0 || len(h.queue) > 0 {
		h.idle.Wait()
	}
}

func (h *hub) close() {
	h.qmu.Lock()
	h.closed = true
	h.qmu.Unlock()
	h.wg.Wait()
}

// fetchWaiter wakes a FetchSecrets waiting for pending names.
type fetchWaiter struct{ ch chan struct{} }

func (f *fetchWaiter) wake() {
	select {
	case f.ch <- struct{}{}:
	default:
	}
}
