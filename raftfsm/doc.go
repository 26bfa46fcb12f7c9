// Package raftfsm is meshca's replicated state machine: the single source of
// truth of a cluster, applied identically on every server by hashicorp/raft.
//
// Every change is a typed, versioned command (raftpb.Command). Apply is
// deterministic: it reads no clock, no randomness and no network; the
// proposer stamps times, IDs and serials into the command's header and body.
// State lives in go-memdb tables with their indexes (by serial, SPIFFE ID,
// node, expiry, parent ...), so a snapshot is an O(1) MVCC view and Persist
// streams it without blocking Apply.
//
// A snapshot is a stream: a magic line and format version, then
// length-prefixed raftpb.SnapshotRecord frames in a fixed table and key
// order, then a SHA-256 of everything before it. Restore verifies the whole
// stream before it swaps the new state in; a corrupt snapshot is refused and
// the previous state stays. The same checksum, computed over the live state,
// is the state hash: two servers with equal hashes hold equal state.
//
// Watchers learn of changes by index without polling: WaitApplied blocks
// until an index is applied, and Changed returns a channel closed by the
// next apply.
package raftfsm
