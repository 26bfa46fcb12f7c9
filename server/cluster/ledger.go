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

// maxLedgerInflight bounds the group commits in flight at once.
const maxLedgerInflight = 4

// CommitLedger records an issued certificate in the replicated ledger and
// returns once the record is committed on a quorum. Concurrent calls on
// this server are group-committed: many records per Raft entry. A record
// without a request ID gets one, so retries after an unknown outcome are
// idempotent.
func (n *Node) CommitLedger(ctx context.Context, rec *raftpb.LedgerRecord) error {
	if rec.RequestId == "" {
		rec.RequestId = NewRequestID()
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultApplyTimeout)
	}
	p := &pendingRecord{rec: rec, deadline: deadline, done: make(chan error, 1)}
	select {
	case n.ledger.in <- p:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		// The record may still be committed; the certificate is not returned.
		return ctx.Err()
	}
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
	slots := make(chan struct{}, maxLedgerInflight)
	defer func() {
		for i := 0; i < maxLedgerInflight; i++ {
			slots <- struct{}{} // every commit in flight has finished
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
		if !b.fill(ctx, &batch, slots) {
			fail(batch, ctx.Err())
			return
		}
		go b.commit(ctx, batch, slots)
	}
}

// fill adds queued records to batch until it is full or a commit slot is
// free, and takes the slot. It returns false if ctx ended first.
func (b *ledgerBatcher) fill(ctx context.Context, batch *[]*pendingRecord, slots chan struct{}) bool {
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
		if len(*batch) >= b.max {
			select {
			case slots <- struct{}{}:
				return true
			case <-ctx.Done():
				return false
			}
		}
		select {
		case slots <- struct{}{}:
			return true
		case p := <-b.in:
			*batch = append(*batch, p)
		case <-ctx.Done():
			return false
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
