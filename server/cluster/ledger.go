package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/proto/raftpb"
)

// ErrSerialCollision means a ledger record's serial is already recorded for
// another request. The certificate must not be handed out.
var ErrSerialCollision = errors.New("cluster: serial number already in the ledger")

// Group commits in flight at once. The leader keeps few, so that records
// queue into large Raft entries while one commits. A follower forwards its
// batches at once (the leader merges them into its own entries), so its
// records do not wait for a forward round trip before they are sent.
const (
	maxLeaderInflight   = 1
	maxFollowerInflight = 2
)

// CommitLedger records an issued certificate in the replicated ledger and
// returns once the record is committed on a quorum. Concurrent calls on
// this server are group-committed: many records per Raft entry. A record
// without a request ID gets one, so retries after an unknown outcome are
// idempotent.
func (n *Node) CommitLedger(ctx context.Context, rec *raftpb.LedgerRecord) error {
	if rec.RequestId == "" {
		rec.RequestId = NewRequestID()
	}
	p, err := n.enqueueRecord(ctx, rec)
	if err != nil {
		return err
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		// The record may still be committed; the certificate is not returned.
		return ctx.Err()
	}
}

func (n *Node) enqueueRecord(ctx context.Context, rec *raftpb.LedgerRecord) (*pendingRecord, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultApplyTimeout)
	}
	p := &pendingRecord{rec: rec, deadline: deadline, done: make(chan error, 1)}
	select {
	case n.ledger.in <- p:
		return p, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// commitRecords group-commits records a follower forwarded, on the leader,
// and reports which were refused as collisions, as AppendLedger would.
func (n *Node) commitRecords(ctx context.Context, recs []*raftpb.LedgerRecord) (*raftpb.Result, error) {
	pending := make([]*pendingRecord, 0, len(recs))
	for _, r := range recs {
		p, err := n.enqueueRecord(ctx, r)
		if err != nil {
			return nil, err
		}
		pending = append(pending, p)
	}
	res := &raftpb.Result{}
	var firstErr error
	for i, p := range pending {
		select {
		case err := <-p.done:
			switch {
			case errors.Is(err, ErrSerialCollision):
				res.Rejected = append(res.Rejected, uint32(i))
			case err != nil && firstErr == nil:
				firstErr = err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	res.Value = uint64(len(recs) - len(res.Rejected))
	return res, nil
}

type pendingRecord struct {
	rec *raftpb.LedgerRecord
	// deadline is the caller's: a group commit is not retried past the
	// latest deadline of its records, so a record whose caller gave up is
	// not committed later behind its back.
	deadline time.Time
	done     chan error
}

// ledgerBatcher collects concurrent records into group commits. A batch is
// sent as soon as one of maxLedgerInflight slots is free, with everything
// queued by then (up to max records): under light load a record waits for
// no one; under heavy load records wait at most for one commit in flight.
type ledgerBatcher struct {
	node *Node
	in   chan *pendingRecord
	max  int
}

func newLedgerBatcher(n *Node, max int) *ledgerBatcher {
	return &ledgerBatcher{node: n, in: make(chan *pendingRecord, 4*max), max: max}
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
			case p := <-b.in:
				p.done <- fmt.Errorf("cluster: ledger: %w", context.Canceled)
			default:
				return
			}
		}
	}()
	for {
		var batch []*pendingRecord
		select {
		case p := <-b.in:
			batch = append(batch, p)
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
				go b.commit(ctx, batch, slots)
				break
			}
		}
	}
}

// fill adds queued records to batch until it is full or a commit slot is
// free, and takes the slot (got). It returns without a slot when changed is
// closed (leadership changed), and ok false if ctx ended first.
func (b *ledgerBatcher) fill(ctx context.Context, batch *[]*pendingRecord, slots chan struct{}, changed <-chan struct{}) (got, ok bool) {
	for {
	drain:
		for len(*batch) < b.max {
			select {
			case p := <-b.in:
				*batch = append(*batch, p)
			default:
				break drain
			}
		}
		in := b.in
		if len(*batch) >= b.max {
			in = nil // full: wait for a slot only
		}
		select {
		case slots <- struct{}{}:
			return true, true
		case p := <-in:
			*batch = append(*batch, p)
		case <-changed:
			return false, true
		case <-ctx.Done():
			return false, false
		}
	}
}

func fail(batch []*pendingRecord, err error) {
	for _, p := range batch {
		p.done <- fmt.Errorf("cluster: ledger: %w", err)
	}
}

func (b *ledgerBatcher) commit(ctx context.Context, batch []*pendingRecord, slots chan struct{}) {
	defer func() { <-slots }()
	recs := make([]*raftpb.LedgerRecord, len(batch))
	for i, p := range batch {
		recs[i] = p.rec
	}
	deadline := batch[0].deadline
	for _, p := range batch[1:] {
		if p.deadline.After(deadline) {
			deadline = p.deadline
		}
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	cmd := &raftpb.Command{Op: &raftpb.Command_AppendLedger{AppendLedger: &raftpb.AppendLedger{Records: recs}}}
	res, err := b.node.ApplyIdempotent(ctx, cmd)
	if err != nil {
		fail(batch, err)
		return
	}
	rejected := map[uint32]bool{}
	for _, i := range res.Rejected {
		rejected[i] = true
	}
	for i, p := range batch {
		if rejected[uint32(i)] {
			p.done <- fmt.Errorf("%w: %x", ErrSerialCollision, p.rec.Serial)
		} else {
			p.done <- nil
		}
	}
}
