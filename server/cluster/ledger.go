package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/wallclock"
	"github.com/meshca/meshca/proto/raftpb"
)

// ErrSerialCollision means a ledger record's serial is already recorded for
// another request. The certificate must not be handed out.
var ErrSerialCollision = errors.New("cluster: serial number already in the ledger")

// ErrNodeBanned means a ledger record was refused because the node it was
// issued through is banned (the ban reached the leader first).
var ErrNodeBanned = errors.New("cluster: the node is banned")

// Group commits in flight at once. The leader keeps few, so that records
// queue into large Raft entries while one commits. A follower forwards its
// batches at once (the leader merges them into its own entries), so its
// records do not wait for a forward round trip before they are sent.
const (
	maxLeaderInflight   = 1
	maxFollowerInflight = 2
)

// DefaultLedgerGap is Config.LedgerGap's default: under load a record waits
// at most this long for the next group commit to start.
const DefaultLedgerGap = 2 * time.Millisecond

// CommitLedger records an issued certificate in the replicated ledger and
// returns once the record is committed on a quorum; see CommitLedgerBatch.
func (n *Node) CommitLedger(ctx context.Context, rec *raftpb.LedgerRecord) error {
	errs, err := n.CommitLedgerBatch(ctx, []*raftpb.LedgerRecord{rec})
	if err != nil {
		return err
	}
	return errs[0]
}

// CommitLedgerBatch records issued certificates in the replicated ledger
// and returns once they are committed on a quorum. Concurrent batches on
// this server (and, through the leader, on every server) are
// group-committed: many records per Raft entry, one wait per batch. err
// means none of the records is known to be committed (the certificates must
// not be handed out); otherwise errs[i] is ErrSerialCollision for a record
// refused as a collision, nil for one committed. A record without a request
// ID gets one, so retries after an unknown outcome are idempotent.
func (n *Node) CommitLedgerBatch(ctx context.Context, recs []*raftpb.LedgerRecord) (errs []error, err error) {
	for _, r := range recs {
		if r.RequestId == "" {
			r.RequestId = NewRequestID()
		}
	}
	g, err := n.enqueueGroup(ctx, recs)
	if err != nil {
		return nil, err
	}
	select {
	case <-g.done:
		return g.errs, g.err
	case <-ctx.Done():
		// The records may still be committed; the certificates are not returned.
		return nil, ctx.Err()
	}
}

func (n *Node) enqueueGroup(ctx context.Context, recs []*raftpb.LedgerRecord) (*pendingGroup, error) {
	deadline, ok := ctx.Deadline()
	if !ok { // real time, like the context's own deadline
		deadline = wallclock.Deadline(defaultApplyTimeout)
	}
	g := &pendingGroup{recs: recs, errs: make([]error, len(recs)), deadline: deadline, done: make(chan struct{})}
	select {
	case n.ledger.in <- g:
		return g, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// commitRecords group-commits records a follower forwarded, on the leader,
// and reports which were refused as collisions, as AppendLedger would.
func (n *Node) commitRecords(ctx context.Context, recs []*raftpb.LedgerRecord) (*raftpb.Result, error) {
	errs, err := n.CommitLedgerBatch(ctx, recs)
	if err != nil {
		return nil, err
	}
	res := &raftpb.Result{}
	for i, e := range errs {
		if e != nil {
			res.Rejected = append(res.Rejected, uint32(i))
		}
		if errors.Is(e, ErrNodeBanned) {
			res.Banned = append(res.Banned, uint32(i))
		}
	}
	res.Value = uint64(len(recs) - len(res.Rejected))
	return res, nil
}

// pendingGroup is one caller's records, committed together and answered
// with one wake-up.
type pendingGroup struct {
	recs []*raftpb.LedgerRecord
	// deadline is the caller's: a group commit is not retried past the
	// latest deadline of its records, so a record whose caller gave up is
	// not committed later behind its back.
	deadline time.Time
	// err and errs are set before done is closed.
	err  error
	errs []error
	done chan struct{}
}

func (g *pendingGroup) finish(err error) {
	g.err = err
	close(g.done)
}

// ledgerBatcher collects concurrent groups of records into group commits.
// A batch is sent as soon as one of the commit slots is free, with
// everything queued by then (up to max records): under light load a record
// waits for no one; under heavy load records wait at most for one commit in
// flight.
type ledgerBatcher struct {
	node *Node
	in   chan *pendingGroup
	max  int
	// gap is the least time between the starts of two commits; lastStart
	// is when the last one started (run's goroutine only).
	gap       time.Duration
	lastStart time.Time
}

func newLedgerBatcher(n *Node, max int, gap time.Duration) *ledgerBatcher {
	return &ledgerBatcher{node: n, in: make(chan *pendingGroup, 4*max), max: max, gap: gap}
}

// linger holds a batch of concurrent callers' records that is not full
// until gap has passed since the last commit started, adding what arrives
// meanwhile: under load the commits start at most once per gap, each with
// everything that arrived since, which is what makes one Raft entry and
// its fsync serve many certificates. A lone caller (a batch of one group:
// no one else was waiting) is sent at once, and so is any batch when the
// last commit started at least gap ago. It returns false if ctx ended.
func (b *ledgerBatcher) linger(ctx context.Context, batch *[]*pendingGroup) bool {
	wait := b.gap - wallclock.Since(b.lastStart)
	n := size(*batch)
	if wait <= 0 || n >= b.max || len(*batch) < 2 {
		return true
	}
	t := wallclock.NewTimer(wait)
	defer t.Stop()
	for n < b.max {
		select {
		case g := <-b.in:
			*batch = append(*batch, g)
			n += len(g.recs)
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	return true
}

func size(batch []*pendingGroup) int {
	n := 0
	for _, g := range batch {
		n += len(g.recs)
	}
	return n
}

// run is owned by the Node: it stops when ctx ends, after the commits in
// flight, and fails the records still queued.
func (b *ledgerBatcher) run(ctx context.Context) {
	leaderSlots := make(chan struct{}, maxLeaderInflight)
	followerSlots := make(chan struct{}, maxFollowerInflight)
	defer func() {
		for i := 0; i < maxLeaderInflight; i++ {
			leaderSlots <- struct{}{} // every commit in flight has finished
		}
		for i := 0; i < maxFollowerInflight; i++ {
			followerSlots <- struct{}{}
		}
		for {
			select {
			case g := <-b.in:
				g.finish(fmt.Errorf("cluster: ledger: %w", context.Canceled))
			default:
				return
			}
		}
	}()
	for {
		var batch []*pendingGroup
		select {
		case g := <-b.in:
			batch = append(batch, g)
		case <-ctx.Done():
			return
		}
		// The slots depend on this node's role, which may change while the
		// batch waits for one: a node that became leader must not keep
		// waiting for a follower slot held by forwards to the old leader.
		for {
			changed := b.node.lead.changes()
			slots := followerSlots
			if b.node.IsLeader() {
				slots = leaderSlots
			}
			got, ok := b.fill(ctx, &batch, slots, changed)
			if !ok {
				fail(batch, ctx.Err())
				return
			}
			if got {
				if !b.linger(ctx, &batch) {
					<-slots
					fail(batch, ctx.Err())
					return
				}
				b.lastStart = wallclock.Now()
				go b.commit(ctx, batch, slots)
				break
			}
		}
	}
}

// fill adds queued groups to batch until it is full or a commit slot is
// free, and takes the slot (got). It returns without a slot when changed is
// closed (leadership changed), and ok false if ctx ended first.
func (b *ledgerBatcher) fill(ctx context.Context, batch *[]*pendingGroup, slots chan struct{}, changed <-chan struct{}) (got, ok bool) {
	n := size(*batch)
	for {
	drain:
		for n < b.max {
			select {
			case g := <-b.in:
				*batch = append(*batch, g)
				n += len(g.recs)
			default:
				break drain
			}
		}
		in := b.in
		if n >= b.max {
			in = nil // full: wait for a slot only
		}
		select {
		case slots <- struct{}{}:
			return true, true
		case g := <-in:
			*batch = append(*batch, g)
			n += len(g.recs)
		case <-changed:
			return false, true
		case <-ctx.Done():
			return false, false
		}
	}
}

func fail(batch []*pendingGroup, err error) {
	for _, g := range batch {
		g.finish(fmt.Errorf("cluster: ledger: %w", err))
	}
}

func (b *ledgerBatcher) commit(ctx context.Context, batch []*pendingGroup, slots chan struct{}) {
	defer func() { <-slots }()
	recs := make([]*raftpb.LedgerRecord, 0, size(batch))
	deadline := batch[0].deadline
	for _, g := range batch {
		recs = append(recs, g.recs...)
		if g.deadline.After(deadline) {
			deadline = g.deadline
		}
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	cmd := &raftpb.Command{Op: &raftpb.Command_AppendLedger{AppendLedger: &raftpb.AppendLedger{Records: recs}}}
	res, err := b.node.Apply(ctx, cmd)
	if err != nil {
		fail(batch, err)
		return
	}
	rejected, banned := map[uint32]bool{}, map[uint32]bool{}
	for _, i := range res.Rejected {
		rejected[i] = true
	}
	for _, i := range res.Banned {
		banned[i] = true
	}
	i := uint32(0)
	for _, g := range batch {
		for k, r := range g.recs {
			switch {
			case banned[i]:
				g.errs[k] = fmt.Errorf("%w: %s", ErrNodeBanned, r.NodeId)
			case rejected[i]:
				g.errs[k] = fmt.Errorf("%w: %x", ErrSerialCollision, r.Serial)
			}
			i++
		}
		g.finish(nil)
	}
}
