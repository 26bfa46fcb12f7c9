// Package audit is meshca's audit trail: a typed, sequenced stream of
// events, one for every allow and deny decision and every operator action,
// written to a durable append-only log on local disk and to slog.
//
// Each process (server or agent) numbers its events 1, 2, 3, ... with no
// gaps, across restarts: an exporter can copy the stream elsewhere exactly
// once by (source, seq), and a reader can tell that nothing is missing.
// Recording an event does not wait for the disk: a writer goroutine
// appends events in batches with one fsync per batch. Sync waits until
// everything recorded so far is durable; an event whose Sync returned is
// never lost, even if the process is killed the next instant. Events
// recorded but not yet synced may be lost in a crash, and then the
// sequence resumes after the last durable one, so it still has no gaps.
//
// The log is a directory of segment files audit-<first seq>.log, each a
// series of lines "<crc32c hex> <JSON event>\n". A segment is closed at
// Config.MaxSegmentBytes and the oldest are deleted beyond
// Config.MaxSegments, so the log is bounded on disk. A torn last line (a
// crash in the middle of a write) is cut off when the log is opened.
//
// Floods of identical denials (same actor, action, subject and reason)
// are aggregated: within Config.AggregateWindow the first is recorded at
// once, the others are counted and recorded as one event with Count > 1
// when the window closes.
package audit

import (
	"time"
)

// Decision is what was decided.
type Decision string

// The decisions.
const (
	Allow Decision = "allow"
	Deny  Decision = "deny"
	// Info records an action that is not a request's decision: a
	// rotation, a bootstrap, a pruning.
	Info Decision = "info"
)

// Event is one audited decision or action.
type Event struct {
	// Time is when it was decided, by the recorder's clock.
	Time time.Time `json:"time"`
	// Source is who recorded it: a server's node ID or an agent's SPIFFE ID.
	Source string `json:"source"`
	// Seq numbers the source's events from 1, without gaps.
	Seq uint64 `json:"seq"`
	// Actor is who asked: an agent's or admin's SPIFFE ID, "operator" (the
	// admin socket), a process ("pid 42 uid 1000"), a peer address.
	Actor string `json:"actor,omitempty"`
	// Action is what was asked, as "area.verb": "node.attest",
	// "x509.sign", "jwt.sign", "entry.write", "intermediate.activate" ...
	Action string `json:"action"`
	// Subject is what it was about: a SPIFFE ID, an entry ID, a server.
	Subject  string   `json:"subject,omitempty"`
	Decision Decision `json:"decision"`
	// Reason says why, for denials.
	Reason string `json:"reason,omitempty"`
	// Details are further facts (serial, profile, audience ...). Never a
	// secret: no token, no key.
	Details map[string]string `json:"details,omitempty"`
	// Count is how many identical denials this event stands for (0 or 1:
	// just this one).
	Count uint64 `json:"count,omitempty"`
}

// Recorder is what the rest of meshca records events with.
type Recorder interface {
	// Record assigns the event its time, source and sequence number and
	// queues it for the log; it returns the sequence number (0 for a
	// denial folded into an aggregate).
	Record(e Event) uint64
}

// Discard is a Recorder that keeps nothing, for components run without an
// audit log (tests of other packages, tools).
var Discard Recorder = discard{}

type discard struct{}

func (discard) Record(Event) uint64 { return 0 }
