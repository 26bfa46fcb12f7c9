package raftfsm

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/protobuf/proto"
)

// FSM is the replicated state machine. It implements raft.BatchingFSM.
type FSM struct {
	db      atomic.Pointer[memdb.MemDB]
	ledger  *ledgerIndex
	applied atomic.Uint64
	// view is held for writing while a commit and its index are published,
	// and for reading while a Reader takes both: a Reader's state and
	// AppliedIndex are of one moment.
	view sync.RWMutex

	mu      sync.Mutex               // guards changed and watches
	changed chan struct{}            // closed and replaced on every apply
	watches map[string]chan struct{} // by scope; closed and dropped when the scope changes
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an empty state machine.
func New() *FSM {
	db, err := memdb.NewMemDB(schema)
	if err != nil {
		panic("raftfsm: invalid schema: " + err.Error())
	}
	f := &FSM{changed: make(chan struct{}), watches: map[string]chan struct{}{}, ledger: newLedgerIndex()}
	f.db.Store(db)
	return f
}

// Encode marshals a command for raft.Apply.
func Encode(c *raftpb.Command) ([]byte, error) {
	return proto.Marshal(c)
}

// Apply applies one committed log entry and returns its *raftpb.Result.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies committed log entries in one transaction. The result
// for each LogCommand entry is a *raftpb.Result; other entries get nil.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	if len(logs) == 0 {
		return out
	}
	txn := f.db.Load().Txn(true)
	touched := map[string]bool{}
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		var cmd raftpb.Command
		if err := proto.Unmarshal(l.Data, &cmd); err != nil {
			// A replica that cannot read a committed entry must stop rather
			// than diverge.
			panic(fmt.Sprintf("raftfsm: log entry %d is not a command: %v", l.Index, err))
		}
		scopesOf(txn, &cmd, touched)
		out[i] = apply(txn, f.ledger, &cmd, l.Index)
	}
	f.view.Lock()
	txn.Commit()
	f.applied.Store(logs[len(logs)-1].Index)
	f.view.Unlock()
	f.notify(touched, false)
	return out
}

// notify wakes the waiters of every apply, and the watchers of the scopes
// touched (all of them if all is set).
func (f *FSM) notify(touched map[string]bool, all bool) {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	for scope, ch := range f.watches {
		if all || touched[scope] {
			close(ch)
			delete(f.watches, scope)
		}
	}
	f.mu.Unlock()
}

// Watch returns a channel that is closed when the next change in scope is
// applied (see the Scope constants and ScopeNode), or a snapshot restored.
// Push streams wait on the scopes they serve: ledger appends, by far the
// most frequent entries, wake none, and a change wakes only the streams it
// concerns. Channels are shared by the watchers of a scope and made only
// while someone watches.
func (f *FSM) Watch(scope string) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch, ok := f.watches[scope]
	if !ok {
		ch = make(chan struct{})
		f.watches[scope] = ch
	}
	return ch
}

// ConfigChanged returns a channel that is closed when the next change to
// anything but the ledger is applied, or a snapshot restored: Watch of
// ScopeAll.
func (f *FSM) ConfigChanged() <-chan struct{} { return f.Watch(ScopeAll) }

// AppliedIndex is the index of the last log entry applied.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// Changed returns a channel that is closed when the next entry is applied
// (or a snapshot restored).
func (f *FSM) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// WaitApplied blocks until index has been applied or ctx ends.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	for {
		ch := f.Changed()
		if f.applied.Load() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("raftfsm: waiting for index %d (applied %d): %w", index, f.applied.Load(), ctx.Err())
		}
	}
}

// Read returns a consistent read-only view of the current state. It is
// cheap (an MVCC snapshot) and never blocks Apply.
func (f *FSM) Read() *Reader {
	f.view.RLock()
	defer f.view.RUnlock()
	return &Reader{txn: f.db.Load().Txn(false), ledger: f.ledger, index: f.applied.Load()}
}

// Snapshot captures the current state in O(1); Persist streams it.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	r := f.Read()
	return &fsmSnapshot{txn: r.txn, index: r.index}, nil
}

// Restore replaces the state with a snapshot stream. The stream is verified
// whole before anything changes: a corrupt snapshot returns an error
// wrapping ErrCorruptSnapshot and the previous state stays.
func (f *FSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	db, index, _, err := readSnapshot(r)
	if err != nil {
		return err
	}
	f.view.Lock()
	f.db.Store(db)
	f.ledger.rebuild(db)
	// Raft's own snapshots carry the index of their last command, and an
	// operator's are reindexed to the log before they reach Raft (see
	// Reindex), so the index never runs ahead of the log; it never goes
	// back either.
	if index > f.applied.Load() {
		f.applied.Store(index)
	}
	f.view.Unlock()
	f.notify(nil, true)
	return nil
}

// StateHash is the SHA-256 of the state's snapshot encoding: equal hashes,
// equal state. Read().StateHash() gives it with the index it is at.
func (f *FSM) StateHash() ([32]byte, error) { return f.Read().StateHash() }

type fsmSnapshot struct {
	txn   *memdb.Txn
	index uint64
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, _, err := writeSnapshot(sink, s.txn, s.index); err != nil {
		sink.Cancel()
		return fmt.Errorf("raftfsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
