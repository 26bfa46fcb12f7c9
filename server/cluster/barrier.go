package cluster

import (
	"context"
	"sync"
)

// coalescer runs one operation for a group of concurrent callers. Unlike
// singleflight, a caller never shares a run that started before it asked:
// callers that arrive during a run wait for the next one. That is what a
// linearizable read needs from a Raft barrier.
type coalescer struct {
	mu      sync.Mutex
	running bool
	waiting []chan coalesced
	run     func() (uint64, error)
}

type coalesced struct {
	index uint64
	err   error
}

func (c *coalescer) do(ctx context.Context) (uint64, error) {
	ch := make(chan coalesced, 1)
	c.mu.Lock()
	c.waiting = append(c.waiting, ch)
	if !c.running {
		c.running = true
		go c.loop()
	}
	c.mu.Unlock()
	select {
	case r := <-ch:
		return r.index, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// loop runs until no caller waits; it is owned by the callers that started it.
func (c *coalescer) loop() {
	for {
		c.mu.Lock()
		batch := c.waiting
		c.waiting = nil
		if len(batch) == 0 {
			c.running = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		index, err := c.run()
		for _, ch := range batch {
			ch <- coalesced{index, err}
		}
	}
}
