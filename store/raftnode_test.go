package store_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/meshca/meshca/store"
)

// listFSM records the data of every applied command.
type listFSM struct {
	mu      sync.Mutex
	applied []string
}

func (f *listFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(l.Data))
	return len(f.applied)
}

func (f *listFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return listSnapshot(slices.Clone(f.applied)), nil
}

func (f *listFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var applied []string
	if err := json.NewDecoder(rc).Decode(&applied); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = applied
	return nil
}

func (f *listFSM) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.applied)
}

type listSnapshot []string

func (s listSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	return sink.Close()
}

func (listSnapshot) Release() {}

func nodeConfig() *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = "server-1"
	c.HeartbeatTimeout = 50 * time.Millisecond
	c.ElectionTimeout = 50 * time.Millisecond
	c.LeaderLeaseTimeout = 50 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotThreshold = 1 << 40 // only the explicit Snapshot below
	c.TrailingLogs = 1            // so the snapshot truncates the log head
	c.Logger = hclog.NewNullLogger()
	return c
}

func startNode(t *testing.T, s *store.RaftStores, fsm raft.FSM) *raft.Raft {
	t.Helper()
	addr, trans := raft.NewInmemTransport("server-1")
	cfg := nodeConfig()
	has, err := s.HasState()
	if err != nil {
		t.Fatal(err)
	}
	if !has {
		err := raft.BootstrapCluster(cfg, s.Log, s.Stable, s.Snapshots, trans, raft.Configuration{
			Servers: []raft.Server{{Suffrage: raft.Voter, ID: cfg.LocalID, Address: addr}},
		})
		if err != nil {
			t.Fatalf("BootstrapCluster = %v", err)
		}
	}
	r, err := raft.NewRaft(cfg, fsm, s.Log, s.Stable, s.Snapshots, trans)
	if err != nil {
		t.Fatalf("NewRaft = %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("single node did not become leader in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

func apply(t *testing.T, r *raft.Raft, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if err := r.Apply([]byte(c), time.Second).Error(); err != nil {
			t.Fatalf("Apply(%s) = %v", c, err)
		}
	}
}

// TestRaftNodeRestart runs a single-node hashicorp/raft cluster on the stores,
// snapshots and truncates, restarts it on reopened stores and checks that
// the state comes back from the snapshot plus the log after it.
func TestRaftNodeRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	fsm := &listFSM{}
	r := startNode(t, s, fsm)
	apply(t, r, "a", "b", "c")
	if err := r.Snapshot().Error(); err != nil {
		t.Fatalf("Snapshot = %v", err)
	}
	apply(t, r, "d", "e")
	if err := r.Shutdown().Error(); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}

	first, _ := s.Log.FirstIndex()
	last, _ := s.Log.LastIndex()
	if first <= 1 {
		t.Errorf("FirstIndex after snapshot = %d, want the head truncated", first)
	}

	s = reopen(t, s, dir)
	if has, err := s.HasState(); err != nil || !has {
		t.Fatalf("HasState after restart = %v, %v, want true", has, err)
	}
	_, trans := raft.NewInmemTransport("server-1")
	err := raft.BootstrapCluster(nodeConfig(), s.Log, s.Stable, s.Snapshots, trans, raft.Configuration{
		Servers: []raft.Server{{Suffrage: raft.Voter, ID: "server-1", Address: "server-1"}},
	})
	if !errors.Is(err, raft.ErrCantBootstrap) {
		t.Errorf("second BootstrapCluster = %v, want raft.ErrCantBootstrap", err)
	}
	if f, l, _ := bounds(s.Log); f != first || l != last {
		t.Errorf("log after reopen = %d..%d, want %d..%d", f, l, first, last)
	}

	fsm = &listFSM{}
	r = startNode(t, s, fsm)
	defer r.Shutdown()
	apply(t, r, "f")
	want := []string{"a", "b", "c", "d", "e", "f"}
	if got := fsm.list(); !slices.Equal(got, want) {
		t.Errorf("FSM after restart = %v, want %v", got, want)
	}
}

func bounds(ls raft.LogStore) (first, last uint64, err error) {
	if first, err = ls.FirstIndex(); err != nil {
		return 0, 0, fmt.Errorf("first index: %w", err)
	}
	if last, err = ls.LastIndex(); err != nil {
		return 0, 0, fmt.Errorf("last index: %w", err)
	}
	return first, last, nil
}
