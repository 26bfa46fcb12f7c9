package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
)

// Names inside the data directory; see the package documentation.
const (
	raftDirName = "raft"
	walDirName  = "wal"
	lockName    = "LOCK"
)

// DefaultSnapshotsRetained is how many snapshots OpenRaft keeps when
// RaftConfig.SnapshotsRetained is zero.
const DefaultSnapshotsRetained = 2

// ErrLocked is returned by OpenRaft and HasState when the Raft stores of the
// data directory are already open, in this process or another one. Only one
// opener at a time is allowed: a second one would corrupt the log.
var ErrLocked = errors.New("store: raft stores already in use")

// RaftConfig tunes OpenRaft. The zero value is the production default.
type RaftConfig struct {
	// Logger receives the stores' log lines (snapshot creation and reaping,
	// log recovery problems). Nil: hclog.Default(), which writes to stderr.
	Logger hclog.Logger

	// SnapshotsRetained is how many snapshots are kept on disk; older ones
	// are deleted when a new one is persisted. Zero: DefaultSnapshotsRetained.
	SnapshotsRetained int
}

// RaftStores are the three stores raft.NewRaft and raft.BootstrapCluster
// need, opened on one data directory:
//
//	r, err := raft.NewRaft(cfg, fsm, s.Log, s.Stable, s.Snapshots, trans)
//
// Log and Stable are one raft-wal WAL. Log also implements
// raft.MonotonicLogStore (indexes have no gaps), which tells Raft to reset
// the log after installing a snapshot. The stores are safe for concurrent
// use, as Raft requires.
type RaftStores struct {
	// Log is the Raft log. An append (StoreLogs) is durable when it returns:
	// one fsync of the tail segment, whatever the number of entries.
	// DeleteRange supports only a prefix or a suffix of the log, which is all
	// Raft asks for; GetLog outside FirstIndex..LastIndex returns
	// raft.ErrLogNotFound.
	Log raft.LogStore

	// Stable holds Raft's current term and vote. Writes are bbolt commits.
	// A key never set reads as nil (Get) or 0 (GetUint64), with no error.
	Stable raft.StableStore

	// Snapshots is a raft.FileSnapshotStore; a snapshot is durable (fsynced
	// and renamed into place) when its sink's Close returns.
	Snapshots raft.SnapshotStore

	dir    string
	wal    *wal.WAL
	unlock func() error

	closeOnce sync.Once
	closeErr  error
}

// OpenRaft opens, creating them if needed, the Raft log, stable and snapshot
// stores under dir/raft, and locks them against a second opener (ErrLocked).
// dir is created if missing; dir/raft is created, or restricted, to mode
// 0700. Opening recovers the log after a crash: a batch whose fsync did not
// complete is discarded, as Raft expects of an unacknowledged append.
//
// The caller must Close the stores, after raft.Raft.Shutdown has returned.
func OpenRaft(dir string, cfg RaftConfig) (*RaftStores, error) {
	if dir == "" {
		return nil, errors.New("store: open raft stores: empty data directory")
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("store: open raft stores: data directory %s is not a directory", dir)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.Default()
	}
	retain := cfg.SnapshotsRetained
	if retain == 0 {
		retain = DefaultSnapshotsRetained
	}
	if retain < 0 {
		return nil, fmt.Errorf("store: open raft stores: SnapshotsRetained is %d, want at least 1", retain)
	}

	raftDir := filepath.Join(dir, raftDirName)
	if err := os.MkdirAll(raftDir, 0o700); err != nil {
		return nil, fmt.Errorf("store: open raft stores: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone; the log holds the
	// whole replicated state, so nobody but the owner may read it.
	if err := os.Chmod(raftDir, 0o700); err != nil {
		return nil, fmt.Errorf("store: open raft stores: %w", err)
	}

	unlock, err := lockFile(filepath.Join(raftDir, lockName))
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("%w: %s is held by another process, or by an earlier OpenRaft in this one that was not closed", ErrLocked, filepath.Join(raftDir, lockName))
		}
		return nil, fmt.Errorf("store: open raft stores: lock: %w", err)
	}
	s := &RaftStores{dir: dir, unlock: unlock}
	fail := func(err error) (*RaftStores, error) {
		return nil, errors.Join(err, s.closeParts())
	}

	walDir := filepath.Join(raftDir, walDirName)
	if err := os.MkdirAll(walDir, 0o700); err != nil {
		return fail(fmt.Errorf("store: open raft log: %w", err))
	}
	w, err := wal.Open(walDir, wal.WithLogger(logger.Named("wal")))
	if err != nil {
		return fail(fmt.Errorf("store: open raft log in %s: %w", walDir, err))
	}
	s.wal = w

	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, retain, logger.Named("snapshots"))
	if err != nil {
		return fail(fmt.Errorf("store: open raft snapshot store in %s: %w", raftDir, err))
	}

	s.Log, s.Stable, s.Snapshots = walLog{w}, w, snaps
	return s, nil
}

// HasState reports whether the stores hold any Raft state: a current term,
// a log entry or a snapshot. A server bootstraps a cluster only when it has
// none (raft.BootstrapCluster refuses otherwise).
func (s *RaftStores) HasState() (bool, error) {
	ok, err := raft.HasExistingState(s.Log, s.Stable, s.Snapshots)
	if err != nil {
		return false, fmt.Errorf("store: read raft state in %s: %w", s.dir, err)
	}
	return ok, nil
}

// HasEntries reports whether the stores hold a log entry or a snapshot:
// something a cluster may have committed. A current term alone (left by a
// bootstrap interrupted before its first entry was written) is not one.
func (s *RaftStores) HasEntries() (bool, error) {
	last, err := s.Log.LastIndex()
	if err != nil {
		return false, fmt.Errorf("store: read raft log in %s: %w", s.dir, err)
	}
	if last > 0 {
		return true, nil
	}
	snaps, err := s.Snapshots.List()
	if err != nil {
		return false, fmt.Errorf("store: list raft snapshots in %s: %w", s.dir, err)
	}
	return len(snaps) > 0, nil
}

// RemoveRaft deletes the Raft state of data directory dir, which must hold
// no log entry and no snapshot (see HasEntries): it clears what a bootstrap
// interrupted before its first entry left, so that it can start again. It
// refuses, changing nothing, if there are entries or the stores are open.
func RemoveRaft(dir string) error {
	s, err := OpenRaft(dir, RaftConfig{Logger: hclog.NewNullLogger()})
	if err != nil {
		return err
	}
	has, err := s.HasEntries()
	if err := errors.Join(err, s.Close()); err != nil {
		return err
	}
	if has {
		return fmt.Errorf("store: %s holds Raft log entries or snapshots; not removing it", filepath.Join(dir, raftDirName))
	}
	if err := os.RemoveAll(filepath.Join(dir, raftDirName)); err != nil {
		return fmt.Errorf("store: remove raft state: %w", err)
	}
	return nil
}

// Close closes the stores and releases the lock. Raft must be shut down
// first. Later calls return the first call's result; other methods return
// errors after Close.
func (s *RaftStores) Close() error {
	s.closeOnce.Do(func() {
		if err := s.closeParts(); err != nil {
			s.closeErr = fmt.Errorf("store: close raft stores in %s: %w", s.dir, err)
		}
	})
	return s.closeErr
}

// closeParts closes whatever OpenRaft managed to open, in reverse order.
func (s *RaftStores) closeParts() error {
	var errs []error
	if s.wal != nil {
		// Waits for an append in progress, closes the segments and the meta
		// database; later calls get wal.ErrClosed.
		if err := s.wal.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close log: %w", err))
		}
	}
	if s.unlock != nil {
		if err := s.unlock(); err != nil {
			errs = append(errs, fmt.Errorf("unlock: %w", err))
		}
	}
	return errors.Join(errs...)
}

// RaftDir is the directory of the Raft stores OpenRaft opens in the data
// directory dir.
func RaftDir(dir string) string { return filepath.Join(dir, raftDirName) }

// HasState reports whether the data directory dir holds Raft state (see
// RaftStores.HasState). It creates nothing when dir/raft does not exist;
// otherwise it opens the stores briefly, so it fails with ErrLocked while a
// server has them open. A process about to open the stores anyway should
// call RaftStores.HasState on them instead.
func HasState(dir string) (bool, error) {
	if _, err := os.Stat(filepath.Join(dir, raftDirName)); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	s, err := OpenRaft(dir, RaftConfig{Logger: hclog.NewNullLogger()})
	if err != nil {
		return false, err
	}
	ok, err := s.HasState()
	return ok, errors.Join(err, s.Close())
}

// walLog is the WAL as the Raft log. raft-wal (v0.4.1) keeps returning
// entries that a head truncation removed for as long as they sit in the tail
// segment; the raft.LogStore contract, which walLog restores, is
// raft.ErrLogNotFound below FirstIndex. The other methods, IsMonotonic
// included, are the WAL's.
type walLog struct{ *wal.WAL }

// GetLog implements raft.LogStore.
func (l walLog) GetLog(index uint64, log *raft.Log) error {
	first, err := l.FirstIndex()
	if err != nil {
		return err
	}
	if index < first {
		return raft.ErrLogNotFound
	}
	return l.WAL.GetLog(index, log)
}
