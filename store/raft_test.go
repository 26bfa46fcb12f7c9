package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/meshca/meshca/store"
)

// open opens the stores of dir with a silent logger and closes them at the
// end of the test (Close is idempotent, so tests may close earlier).
func open(t *testing.T, dir string) *store.RaftStores {
	t.Helper()
	s, err := store.OpenRaft(dir, store.RaftConfig{Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatalf("OpenRaft(%q) = %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return s
}

// reopen closes s and opens dir again, failing the test if that takes
// longer than a few seconds (a leaked file lock blocks forever).
func reopen(t *testing.T, s *store.RaftStores, dir string) *store.RaftStores {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	done := make(chan *store.RaftStores, 1)
	go func() { done <- open(t, dir) }()
	select {
	case s := <-done:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("reopening the stores after Close blocked for 10s")
		return nil
	}
}

func entry(i uint64) *raft.Log {
	l := &raft.Log{
		Index:      i,
		Term:       1 + i/10,
		Type:       raft.LogCommand,
		Data:       bytes.Repeat([]byte{byte(i)}, int(i%7)*100),
		AppendedAt: time.Unix(1_700_000_000+int64(i), 123).UTC(),
	}
	if i%3 == 0 {
		l.Extensions = []byte(fmt.Sprintf("ext-%d", i))
	}
	if i == 1 {
		l.Type = raft.LogConfiguration
	}
	return l
}

func storeRange(t *testing.T, ls raft.LogStore, first, last uint64) {
	t.Helper()
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		logs = append(logs, entry(i))
	}
	if err := ls.StoreLogs(logs); err != nil {
		t.Fatalf("StoreLogs(%d..%d) = %v", first, last, err)
	}
}

func checkBounds(t *testing.T, ls raft.LogStore, wantFirst, wantLast uint64) {
	t.Helper()
	first, err := ls.FirstIndex()
	if err != nil || first != wantFirst {
		t.Errorf("FirstIndex() = %d, %v, want %d", first, err, wantFirst)
	}
	last, err := ls.LastIndex()
	if err != nil || last != wantLast {
		t.Errorf("LastIndex() = %d, %v, want %d", last, err, wantLast)
	}
}

func checkEntries(t *testing.T, ls raft.LogStore, first, last uint64) {
	t.Helper()
	for i := first; i <= last; i++ {
		var got raft.Log
		if err := ls.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d) = %v", i, err)
		}
		want := entry(i)
		if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type ||
			!bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) ||
			!got.AppendedAt.Equal(want.AppendedAt) {
			t.Fatalf("GetLog(%d) = %+v, want %+v", i, got, *want)
		}
	}
}

func checkMissing(t *testing.T, ls raft.LogStore, indexes ...uint64) {
	t.Helper()
	for _, i := range indexes {
		var got raft.Log
		if err := ls.GetLog(i, &got); !errors.Is(err, raft.ErrLogNotFound) {
			t.Errorf("GetLog(%d) = %v, want raft.ErrLogNotFound", i, err)
		}
	}
}

func TestOpenRaftLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	s := open(t, dir)

	fi, err := os.Stat(filepath.Join(dir, "raft"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("dir/raft mode = %v, want 0700", perm)
	}
	for _, p := range []string{"raft/wal/wal-meta.db", "raft/snapshots", "raft/LOCK"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}
	m, ok := s.Log.(raft.MonotonicLogStore)
	if !ok || !m.IsMonotonic() {
		t.Errorf("Log is not a monotonic raft.MonotonicLogStore; Raft would not reset it after installing a snapshot")
	}
	checkBounds(t, s.Log, 0, 0)
}

func TestOpenRaftRestrictsExistingDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "raft"), 0o755); err != nil {
		t.Fatal(err)
	}
	open(t, dir)
	fi, err := os.Stat(filepath.Join(dir, "raft"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("dir/raft mode = %v, want 0700", perm)
	}
}

func TestLogsPersistAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	storeRange(t, s.Log, 1, 100)
	if err := s.Log.StoreLog(entry(101)); err != nil {
		t.Fatalf("StoreLog(101) = %v", err)
	}
	checkBounds(t, s.Log, 1, 101)

	s = reopen(t, s, dir)
	checkBounds(t, s.Log, 1, 101)
	checkEntries(t, s.Log, 1, 101)
	checkMissing(t, s.Log, 0, 102)

	// Appending continues where the log ended.
	storeRange(t, s.Log, 102, 110)
	checkBounds(t, s.Log, 1, 110)
}

func TestLogRejectsGap(t *testing.T) {
	s := open(t, t.TempDir())
	storeRange(t, s.Log, 1, 5)
	if err := s.Log.StoreLog(entry(7)); err == nil {
		t.Fatal("StoreLog(7) after 5 = nil, want an error (the log is monotonic)")
	}
	checkBounds(t, s.Log, 1, 5)
}

func TestStablePersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)

	// Keys never set: nil and 0 without an error, which Raft accepts.
	if v, err := s.Stable.Get([]byte("absent")); err != nil || v != nil {
		t.Errorf("Get(absent) = %q, %v, want nil, nil", v, err)
	}
	if v, err := s.Stable.GetUint64([]byte("absent")); err != nil || v != 0 {
		t.Errorf("GetUint64(absent) = %d, %v, want 0, nil", v, err)
	}

	if err := s.Stable.Set([]byte("LastVoteCand"), []byte("server-2")); err != nil {
		t.Fatalf("Set = %v", err)
	}
	if err := s.Stable.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatalf("SetUint64 = %v", err)
	}
	if err := s.Stable.SetUint64([]byte("CurrentTerm"), 1<<63+5); err != nil {
		t.Fatalf("SetUint64 = %v", err)
	}

	s = reopen(t, s, dir)
	if v, err := s.Stable.Get([]byte("LastVoteCand")); err != nil || string(v) != "server-2" {
		t.Errorf("Get(LastVoteCand) = %q, %v, want %q", v, err, "server-2")
	}
	if v, err := s.Stable.GetUint64([]byte("CurrentTerm")); err != nil || v != 1<<63+5 {
		t.Errorf("GetUint64(CurrentTerm) = %d, %v, want %d", v, err, uint64(1<<63+5))
	}
}

func TestDeleteRange(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	storeRange(t, s.Log, 1, 100)

	// Head truncation, as Raft does after a snapshot.
	if err := s.Log.DeleteRange(1, 40); err != nil {
		t.Fatalf("DeleteRange(1, 40) = %v", err)
	}
	checkBounds(t, s.Log, 41, 100)
	checkMissing(t, s.Log, 1, 40)

	// Tail truncation, as a follower does on a conflicting entry.
	if err := s.Log.DeleteRange(91, 100); err != nil {
		t.Fatalf("DeleteRange(91, 100) = %v", err)
	}
	checkBounds(t, s.Log, 41, 90)
	checkMissing(t, s.Log, 91)

	// A hole in the middle is not supported (Raft never asks for one).
	if err := s.Log.DeleteRange(50, 60); err == nil {
		t.Error("DeleteRange(50, 60) = nil, want an error")
	}

	s = reopen(t, s, dir)
	checkBounds(t, s.Log, 41, 90)
	checkEntries(t, s.Log, 41, 90)
	checkMissing(t, s.Log, 40, 91)

	// The truncated tail is written again.
	storeRange(t, s.Log, 91, 95)
	checkBounds(t, s.Log, 41, 95)
	checkEntries(t, s.Log, 91, 95)

	// Deleting everything leaves an empty log that starts again at any index
	// (after installing a snapshot, Raft continues at the snapshot's index).
	if err := s.Log.DeleteRange(41, 95); err != nil {
		t.Fatalf("DeleteRange(41, 95) = %v", err)
	}
	checkBounds(t, s.Log, 0, 0)
	storeRange(t, s.Log, 500, 502)
	s = reopen(t, s, dir)
	checkBounds(t, s.Log, 500, 502)
	checkEntries(t, s.Log, 500, 502)
}

func testConfiguration() raft.Configuration {
	return raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: "server-1", Address: "10.0.0.1:8300"},
		{Suffrage: raft.Voter, ID: "server-2", Address: "10.0.0.2:8300"},
	}}
}

func createSnapshot(t *testing.T, snaps raft.SnapshotStore, index, term uint64, data []byte) string {
	t.Helper()
	_, trans := raft.NewInmemTransport("")
	sink, err := snaps.Create(raft.SnapshotVersionMax, index, term, testConfiguration(), 1, trans)
	if err != nil {
		t.Fatalf("Create = %v", err)
	}
	if _, err := sink.Write(data); err != nil {
		t.Fatalf("sink.Write = %v", err)
	}
	if err := sink.Close(); err != nil {
		t.Fatalf("sink.Close = %v", err)
	}
	return sink.ID()
}

func TestSnapshotRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	data := bytes.Repeat([]byte("meshca snapshot "), 4096)
	id := createSnapshot(t, s.Snapshots, 10, 2, data)

	s = reopen(t, s, dir)
	list, err := s.Snapshots.List()
	if err != nil {
		t.Fatalf("List() = %v", err)
	}
	if len(list) != 1 {
		t.Fatalf("List() has %d snapshots, want 1", len(list))
	}
	m := list[0]
	if m.ID != id || m.Index != 10 || m.Term != 2 || m.Size != int64(len(data)) || m.ConfigurationIndex != 1 {
		t.Errorf("List()[0] = %+v, want ID %s, index 10, term 2, size %d, configuration index 1", m, id, len(data))
	}
	if got := len(m.Configuration.Servers); got != 2 {
		t.Errorf("snapshot configuration has %d servers, want 2", got)
	}

	meta, rc, err := s.Snapshots.Open(id)
	if err != nil {
		t.Fatalf("Open(%s) = %v", id, err)
	}
	got, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("reading snapshot: %v", err)
	}
	if !bytes.Equal(got, data) || meta.Index != 10 {
		t.Errorf("Open(%s) = index %d, %d bytes, want index 10 and the %d bytes written", id, meta.Index, len(got), len(data))
	}
}

func TestSnapshotRetention(t *testing.T) {
	s := open(t, t.TempDir())
	for i := uint64(1); i <= 3; i++ {
		createSnapshot(t, s.Snapshots, 10*i, 1, []byte{byte(i)})
	}
	list, err := s.Snapshots.List()
	if err != nil {
		t.Fatalf("List() = %v", err)
	}
	if len(list) != store.DefaultSnapshotsRetained {
		t.Fatalf("List() has %d snapshots, want %d", len(list), store.DefaultSnapshotsRetained)
	}
	if list[0].Index != 30 || list[1].Index != 20 {
		t.Errorf("List() indexes = %d, %d, want 30, 20 (newest first)", list[0].Index, list[1].Index)
	}
}

func TestSnapshotAbandoned(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	_, trans := raft.NewInmemTransport("")
	sink, err := s.Snapshots.Create(raft.SnapshotVersionMax, 10, 1, testConfiguration(), 1, trans)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	if err := sink.Cancel(); err != nil {
		t.Fatalf("Cancel() = %v", err)
	}
	s = reopen(t, s, dir)
	if list, err := s.Snapshots.List(); err != nil || len(list) != 0 {
		t.Errorf("List() after Cancel = %d snapshots, %v, want none", len(list), err)
	}
}

func TestCloseThenReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	storeRange(t, s.Log, 1, 3)
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if err := s.Log.StoreLog(entry(4)); err == nil {
		t.Error("StoreLog after Close = nil, want an error")
	}
	if _, err := s.Stable.Get([]byte("k")); err == nil {
		t.Error("Stable.Get after Close = nil error, want an error")
	}
	for range 3 {
		s = reopen(t, s, dir)
		checkBounds(t, s.Log, 1, 3)
	}
}

func TestOpenRaftLocked(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)

	_, err := store.OpenRaft(dir, store.RaftConfig{Logger: hclog.NewNullLogger()})
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second OpenRaft = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), filepath.Join(dir, "raft", "LOCK")) {
		t.Errorf("error %q does not name the lock file", err)
	}
	if _, err := store.HasState(dir); !errors.Is(err, store.ErrLocked) {
		t.Errorf("HasState while open = %v, want ErrLocked", err)
	}

	reopen(t, s, dir)
}

func TestOpenRaftNotADirectory(t *testing.T) {
	tmp := t.TempDir()
	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The data directory is a file.
	_, err := store.OpenRaft(file, store.RaftConfig{Logger: hclog.NewNullLogger()})
	if err == nil || !strings.Contains(err.Error(), "not a directory") || !strings.Contains(err.Error(), file) {
		t.Errorf("OpenRaft(file) = %v, want an error naming %s as not a directory", err, file)
	}
	if _, err := store.HasState(file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("HasState(file) = %v, want a not-a-directory error", err)
	}

	// dir/raft is a file.
	dir := filepath.Join(tmp, "data")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "raft"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = store.OpenRaft(dir, store.RaftConfig{Logger: hclog.NewNullLogger()})
	if err == nil || !strings.Contains(err.Error(), "not a directory") || !strings.HasPrefix(err.Error(), "store: ") {
		t.Errorf("OpenRaft with dir/raft a file = %v, want a store: ... not a directory error", err)
	}

	if _, err := store.OpenRaft("", store.RaftConfig{}); err == nil {
		t.Error(`OpenRaft("") = nil error, want an error`)
	}
	if _, err := store.OpenRaft(t.TempDir(), store.RaftConfig{SnapshotsRetained: -1}); err == nil {
		t.Error("OpenRaft with SnapshotsRetained -1 = nil error, want an error")
	}
}

func TestHasState(t *testing.T) {
	t.Run("ok/no-directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "absent")
		if ok, err := store.HasState(dir); err != nil || ok {
			t.Errorf("HasState = %v, %v, want false, nil", ok, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("HasState created %s (stat: %v)", dir, err)
		}
	})
	t.Run("ok/empty-stores", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir)
		if ok, err := s.HasState(); err != nil || ok {
			t.Errorf("RaftStores.HasState = %v, %v, want false, nil", ok, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if ok, err := store.HasState(dir); err != nil || ok {
			t.Errorf("HasState = %v, %v, want false, nil", ok, err)
		}
	})
	for name, write := range map[string]func(*testing.T, *store.RaftStores){
		"ok/term": func(t *testing.T, s *store.RaftStores) {
			if err := s.Stable.SetUint64([]byte("CurrentTerm"), 1); err != nil {
				t.Fatal(err)
			}
		},
		"ok/log": func(t *testing.T, s *store.RaftStores) { storeRange(t, s.Log, 1, 1) },
		"ok/snapshot": func(t *testing.T, s *store.RaftStores) {
			createSnapshot(t, s.Snapshots, 5, 1, []byte("state"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir)
			write(t, s)
			if ok, err := s.HasState(); err != nil || !ok {
				t.Errorf("RaftStores.HasState = %v, %v, want true, nil", ok, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if ok, err := store.HasState(dir); err != nil || !ok {
				t.Errorf("HasState = %v, %v, want true, nil", ok, err)
			}
		})
	}
}
