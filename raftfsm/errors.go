package raftfsm

import (
	"errors"

	"github.com/meshca/meshca/proto/raftpb"
)

// Error is a command refused by the state machine. Every server refuses the
// same command the same way, so a refusal is a result, not a failure of
// replication.
type Error struct {
	Code raftpb.ErrorCode
	Msg  string
}

func (e *Error) Error() string { return "raftfsm: " + e.Msg }

// Is matches Errors by code, so errors.Is(err, raftfsm.ErrTokenConsumed) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrNotFound      = &Error{Code: raftpb.ErrorCode_NOT_FOUND, Msg: "not found"}
	ErrAlreadyExists = &Error{Code: raftpb.ErrorCode_ALREADY_EXISTS, Msg: "already exists"}
	ErrTokenConsumed = &Error{Code: raftpb.ErrorCode_TOKEN_CONSUMED, Msg: "join token already used"}
	ErrTokenExpired  = &Error{Code: raftpb.ErrorCode_TOKEN_EXPIRED, Msg: "join token expired"}
	ErrInvalid       = &Error{Code: raftpb.ErrorCode_INVALID, Msg: "invalid command"}
	ErrConflict      = &Error{Code: raftpb.ErrorCode_CONFLICT, Msg: "conflicting revision"}
)

// ErrCorruptSnapshot means a snapshot stream failed verification.
var ErrCorruptSnapshot = errors.New("raftfsm: corrupt snapshot")

// ResultError returns the error a Result carries, or nil.
func ResultError(r *raftpb.Result) error {
	if r == nil || r.Code == raftpb.ErrorCode_OK {
		return nil
	}
	return &Error{Code: r.Code, Msg: r.Message}
}

func fail(code raftpb.ErrorCode, msg string) *raftpb.Result {
	return &raftpb.Result{Code: code, Message: msg}
}

var ok = &raftpb.Result{}
