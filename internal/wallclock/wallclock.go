// Package wallclock is the physical clock, for the few things in servers
// and agents that must follow real time whatever the injected clock says:
//
//   - network and context deadlines (the kernel and net/http keep them in
//     real time);
//   - hashicorp/raft's own timing (last contact, heartbeats, election
//     windows), which Raft runs on the real clock;
//   - latencies and CPU costs measured for metrics and admission (a jump of
//     a test's fake clock during a signing is not a cost).
//
// Everything that is a time of the CA (lifetimes, renewals, rotations,
// expiry, pruning, audit stamps) and every retry or backoff runs on the
// injected clockwork.Clock of the component's Config (see internal/alarm
// for waits). Packages server, agent and ca call this package instead of
// time.Now and friends, so that every use of real time there is explicit
// and reviewable; TestNoDirectWallClock enforces it.
package wallclock

import "time"

// Now is the current real time, with a monotonic reading.
func Now() time.Time { return time.Now() }

// Since is the real time elapsed since t (monotonic when t has a reading).
func Since(t time.Time) time.Duration { return time.Since(t) }

// Deadline is the real time d from now, for a connection or a request.
func Deadline(d time.Duration) time.Time { return time.Now().Add(d) }

// NewTimer is a real-time timer, for batching that trades a bounded wait
// for fewer, larger writes (the ledger's group commit).
func NewTimer(d time.Duration) *time.Timer { return time.NewTimer(d) }
