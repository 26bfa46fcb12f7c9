package cluster

import (
	"errors"
	"fmt"
	"time"
)

// Cause names why a server cannot serve a write now.
type Cause string

// The causes of an UnavailableError.
const (
	// CauseNoLeader: no leader is known, or the one known has not been heard
	// from: an election is under way, or this server is cut off from it.
	CauseNoLeader Cause = "no leader"
	// CauseNoQuorum: this server has been campaigning without winning a
	// majority of the voters: it is cut off from a quorum.
	CauseNoQuorum Cause = "no quorum"
	// CauseLeaderUnreachable: the leader is known and in contact over Raft,
	// but requests forwarded to it over the cluster API keep failing.
	CauseLeaderUnreachable Cause = "leader unreachable"
	// CauseRemoved: this server is not in the cluster's Raft configuration
	// (removed with remove-peer, and not added back).
	CauseRemoved Cause = "removed from the cluster"
)

// UnavailableError means that this server could not carry out a request
// that needs the leader, and carried out nothing: retrying later, or through
// another server, may succeed. It is refused as soon as the cause has lasted
// longer than an election takes (Timing.NoLeader), not at the caller's
// deadline. Match a cause with errors.Is against ErrNoLeader, ErrNoQuorum,
// ErrLeaderUnreachable or ErrRemoved.
type UnavailableError struct {
	Cause Cause
	// For is how long the cause has lasted, when known.
	For time.Duration
	// Detail adds what this server knows (the leader it lost, the voters).
	Detail string
	// Err is the last error of the attempts, if any.
	Err error
}

func (e *UnavailableError) Error() string {
	s := "cluster: " + string(e.Cause)
	if e.For > 0 {
		s += fmt.Sprintf(" for %s", e.For.Round(time.Millisecond))
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += " (last error: " + e.Err.Error() + ")"
	}
	return s
}

// Unwrap returns the last error of the attempts.
func (e *UnavailableError) Unwrap() error { return e.Err }

// Is matches UnavailableErrors by cause.
func (e *UnavailableError) Is(target error) bool {
	t, ok := target.(*UnavailableError)
	return ok && t.Cause == e.Cause
}

// Unavailable marks the error as retryable for internal/rpcerr.
func (e *UnavailableError) Unavailable() bool { return true }

// Sentinels for errors.Is.
var (
	ErrNoLeader          = &UnavailableError{Cause: CauseNoLeader}
	ErrNoQuorum          = &UnavailableError{Cause: CauseNoQuorum}
	ErrLeaderUnreachable = &UnavailableError{Cause: CauseLeaderUnreachable}
	ErrRemoved           = &UnavailableError{Cause: CauseRemoved}
)

// UnknownOutcomeError means that a command may or may not have been
// applied: the leader was lost, or stopped answering, after the command
// was sent to it. Only idempotent commands are retried after it.
type UnknownOutcomeError struct{ Err error }

func (e *UnknownOutcomeError) Error() string {
	msg := "cluster: the command may or may not have been applied (leadership changed or the leader stopped answering while it was in flight)"
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the cause.
func (e *UnknownOutcomeError) Unwrap() error { return e.Err }

// Is matches every UnknownOutcomeError.
func (e *UnknownOutcomeError) Is(target error) bool {
	_, ok := target.(*UnknownOutcomeError)
	return ok
}

// OutcomeUnknown marks the error for internal/rpcerr.
func (e *UnknownOutcomeError) OutcomeUnknown() bool { return true }

// ErrUnknownOutcome is the sentinel for errors.Is.
var ErrUnknownOutcome = &UnknownOutcomeError{}

// errNoLeaderYet is an attempt's failure while no leader (or no address
// for it) is known; it is retried until the refusal deadline.
var errNoLeaderYet = errors.New("cluster: no leader known")

// Causes of a forward attempt cut short by this server.
var (
	errLeaderChanged  = errors.New("cluster: the leader changed while the request was in flight")
	errAttemptTimeout = errors.New("cluster: the leader did not answer in time")
)
