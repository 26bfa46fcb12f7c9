// Package store owns meshca's durable bytes. Today that is the local Raft
// storage of a server: the log store, the stable store and the snapshot
// store that hashicorp/raft needs, all on the local disk (the embedded
// default, no external service). It holds no business rules: it stores the
// bytes Raft gives it and gives them back.
//
// # Layout
//
// [OpenRaft] uses one directory per server, dir/raft (mode 0700):
//
//	dir/raft/LOCK        flock: one opener at a time, else ErrLocked
//	dir/raft/wal/        raft-wal: log segments (*.wal) and wal-meta.db (bbolt)
//	dir/raft/snapshots/  raft.FileSnapshotStore, the newest 2 snapshots
//
// # Why raft-wal
//
// The log and stable stores are one github.com/hashicorp/raft-wal WAL. An
// append (raft.LogStore.StoreLogs, any number of entries) is one write and
// one fsync of the tail segment file; raft-boltdb needs two fsyncs per append
// (bbolt's data pages, then its meta page), and bbolt's freelist grows after
// the log is truncated behind a snapshot, which slows every later commit.
// store/logbench measures both on this project's machine; store/README.md
// has the figures. The caveat: raft-wal's README still calls the library
// experimental; Consul offers it as an opt-in log store since 1.15 and its
// docs say the same. raft-boltdb v2 also does not build with raft v1.8.0.
// meshca needs raft-wal v0.4.1: v0.4.0 cannot read its log back after a tail
// truncation and a restart (hashicorp/raft-wal#31).
//
// Stable-store writes (current term, vote) go to the WAL's bbolt meta
// database, so they cost a bbolt commit; Raft makes them only on elections.
package store
