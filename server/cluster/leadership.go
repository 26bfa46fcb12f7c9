package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/internal/wallclock"
)

// leadership follows this node's view of the leader through Raft's
// observations, for everything that forwards or batches: each change wakes
// the waiters (a forward to the old leader is cut short, the ledger batcher
// picks its slots again), and the connection to the new leader is retried
// at once, whatever backoff earlier failures built up.
type leadership struct {
	raft     *raft.Raft
	timing   Timing
	started  time.Time
	onLeader func(raft.ServerID) // called with each new leader, outside mu

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when leader or state change
	leader  raft.ServerID
	state   raft.RaftState
}

// leaderView is the leader as of one moment, and the channel closed when
// it (or this node's Raft state) changes after that moment.
type leaderView struct {
	leader  raft.ServerID
	changed <-chan struct{}
}

// newLeadership watches r's leadership. Its times are Raft's own (last
// contact, heartbeat), which hashicorp/raft keeps on the real clock.
func newLeadership(r *raft.Raft, timing Timing, onLeader func(raft.ServerID)) *leadership {
	return &leadership{raft: r, timing: timing, started: wallclock.Now(), onLeader: onLeader, changed: make(chan struct{})}
}

// view returns the current leader and the channel of its next change. It
// catches up with Raft itself when the watcher has not yet (an observation
// still queued, or dropped), so the leader it returns is Raft's.
func (l *leadership) view() leaderView {
	l.update()
	l.mu.Lock()
	defer l.mu.Unlock()
	return leaderView{leader: l.leader, changed: l.changed}
}

// changes returns a channel that is closed at the next change of leader
// or of this node's Raft state.
func (l *leadership) changes() <-chan struct{} { return l.view().changed }

// update re-reads the leader and state from Raft and, if either changed,
// wakes the waiters (and reports a new leader to onLeader).
func (l *leadership) update() {
	_, id := l.raft.LeaderWithID()
	state := l.raft.State()
	l.mu.Lock()
	if id == l.leader && state == l.state {
		l.mu.Unlock()
		return
	}
	newLeader := id != l.leader && id != ""
	l.leader, l.state = id, state
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	if newLeader && l.onLeader != nil {
		l.onLeader(id)
	}
}

// watch updates l at every leader observation and state change until ctx
// ends. It is owned by the Node.
func (l *leadership) watch(ctx context.Context) {
	ch := make(chan raft.Observation, 64)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RaftState:
			return true
		}
		return false
	})
	l.raft.RegisterObserver(obs)
	defer l.raft.DeregisterObserver(obs)
	l.update()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			l.update()
		}
	}
}

// lostSince returns since when this node has had no reachable leader, or
// the zero time while it has one (itself, or one it heard from within a
// heartbeat timeout). A node that never heard from a leader and does not
// campaign (a new server waiting to be added) has not lost one.
func (l *leadership) lostSince() time.Time {
	if l.raft.State() == raft.Leader {
		return time.Time{}
	}
	_, id := l.raft.LeaderWithID()
	last := l.raft.LastContact()
	if id != "" && wallclock.Since(last) < l.timing.Heartbeat {
		return time.Time{}
	}
	if !last.IsZero() {
		return last
	}
	if l.raft.State() == raft.Candidate {
		return l.started
	}
	return time.Time{}
}

// refusal returns the error a request that needs the leader gets now, or
// nil if it may still wait for one: a leader lost for longer than
// Timing.NoLeader is not waited for. last is the request's last failure.
func (n *Node) refusal(last error) error {
	since := n.lead.lostSince()
	if since.IsZero() {
		return nil
	}
	lost := wallclock.Since(since)
	if lost < n.timing.NoLeader {
		return nil
	}
	if n.removed() {
		return &UnavailableError{Cause: CauseRemoved, Detail: "this server is not in the Raft configuration; `meshca operator raft add-voter` on a member puts it back", Err: last}
	}
	voters := n.voters()
	switch _, id := n.raft.LeaderWithID(); {
	case n.raft.State() == raft.Candidate:
		return &UnavailableError{Cause: CauseNoQuorum, For: lost, Err: last,
			Detail: fmt.Sprintf("this server has been campaigning without winning a majority of the %d voters: it is cut off from a quorum", voters)}
	case id != "":
		return &UnavailableError{Cause: CauseNoLeader, For: lost, Err: last,
			Detail: fmt.Sprintf("no contact with the last leader, %s; an election is under way, or this server is cut off from a quorum of the %d voters", id, voters)}
	default:
		return &UnavailableError{Cause: CauseNoLeader, For: lost, Err: last,
			Detail: fmt.Sprintf("an election is under way, or this server is cut off from a quorum of the %d voters", voters)}
	}
}

// configuration returns the latest Raft configuration this node knows.
func (n *Node) configuration() (raft.Configuration, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Configuration{}, err
	}
	return f.Configuration(), nil
}

// removed reports whether this node is missing from the latest Raft
// configuration it knows, while it knows one.
func (n *Node) removed() bool {
	c, err := n.configuration()
	if err != nil || len(c.Servers) == 0 {
		return false
	}
	for _, s := range c.Servers {
		if string(s.ID) == n.cfg.NodeID {
			return false
		}
	}
	return true
}

func (n *Node) voters() int {
	c, err := n.configuration()
	if err != nil {
		return 0
	}
	v := 0
	for _, s := range c.Servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return v
}

// attempt returns the context of one attempt that involves the leader of
// a leaderView: it ends after d, or as soon as that leader changes (changed
// is the view's). context.Cause tells which (errAttemptTimeout,
// errLeaderChanged).
func attempt(ctx context.Context, changed <-chan struct{}, d time.Duration) (context.Context, context.CancelFunc) {
	cctx, cancelCause := context.WithCancelCause(ctx)
	tctx, cancelTimeout := context.WithTimeoutCause(cctx, d, errAttemptTimeout)
	done := make(chan struct{})
	go func() { // owned by the attempt: it ends with it
		select {
		case <-changed:
			cancelCause(errLeaderChanged)
		case <-done:
		}
	}()
	return tctx, func() {
		close(done)
		cancelTimeout()
		cancelCause(context.Canceled)
	}
}
