// Package procfs reads the few /proc files workload attestors need and
// guards against PID reuse: a process is identified by its PID and its
// start time (field 22 of /proc/<pid>/stat), which a new process with a
// recycled PID cannot share.
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/meshca/meshca/attest"
)

// DefaultRoot is where procfs is mounted.
const DefaultRoot = "/proc"

// maxStatSize bounds /proc/<pid>/stat (a few hundred bytes in practice;
// the command name inside is at most 64 bytes).
const maxStatSize = 4 << 10

// Process is a process pinned by its start time.
type Process struct {
	Root      string // procfs mount point
	PID       int32
	StartTime uint64 // clock ticks after boot
	attestor  string
	alive     func() error
}

// OpenPeer pins the process that connected as peer: like Open, and it
// fails with ErrProcessChanged if the start time now found differs from
// the one read when the peer connected, or if the peer's pidfd says the
// process that connected is gone (its PID may belong to another one).
// Check repeats both tests.
func OpenPeer(attestor, root string, peer attest.Peer) (*Process, error) {
	p, err := Open(attestor, root, peer.PID)
	if err != nil {
		return nil, err
	}
	if peer.StartTime != 0 && p.StartTime != peer.StartTime {
		return nil, attest.NewError(attest.KindProcessChanged, attestor,
			fmt.Sprintf("pid %d now belongs to another process than the one that connected", peer.PID), nil)
	}
	p.alive = peer.Alive
	if err := p.checkAlive(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Process) checkAlive() error {
	if p.alive == nil {
		return nil
	}
	if err := p.alive(); err != nil {
		return attest.NewError(attest.KindProcessChanged, p.attestor,
			fmt.Sprintf("pid %d: the process that connected has exited", p.PID), err)
	}
	return nil
}

// Open pins pid under root: it reads its start time, to compare with later
// by Check. attestor names the caller in errors. A PID that is not a
// positive number is invalid evidence; a process that does not exist is
// ErrProcessChanged.
func Open(attestor, root string, pid int32) (*Process, error) {
	if pid <= 0 {
		return nil, attest.NewError(attest.KindInvalidEvidence, attestor, fmt.Sprintf("pid %d: not a process ID", pid), nil)
	}
	st, err := readStartTime(root, pid)
	if err != nil {
		return nil, classify(attestor, pid, err)
	}
	return &Process{Root: root, PID: pid, StartTime: st, attestor: attestor}, nil
}

// Path returns the path of name in the process's directory, e.g.
// /proc/42/status.
func (p *Process) Path(name string) string {
	return filepath.Join(p.Root, strconv.FormatInt(int64(p.PID), 10), name)
}

// ReadFile reads the file name of the process's directory, up to max bytes
// (more is an error). Errors of a process that is gone are ErrProcessChanged.
func (p *Process) ReadFile(name string, max int64) ([]byte, error) {
	b, err := readBounded(p.Path(name), max)
	if err != nil {
		return nil, p.Err(fmt.Sprintf("read %s", name), err)
	}
	return b, nil
}

// Check re-reads the start time and fails with ErrProcessChanged if the
// process is gone or its PID now belongs to another process. Call it after
// everything about the process has been read: what was read before a
// successful Check described the pinned process.
func (p *Process) Check() error {
	st, err := readStartTime(p.Root, p.PID)
	if err != nil {
		return classify(p.attestor, p.PID, err)
	}
	if st != p.StartTime {
		return attest.NewError(attest.KindProcessChanged, p.attestor,
			fmt.Sprintf("pid %d was reused by another process during attestation", p.PID), nil)
	}
	return p.checkAlive()
}

// Err wraps an error met while reading about the process: ErrProcessChanged
// when the process is gone, otherwise ErrUnavailable with the step that
// failed.
func (p *Process) Err(step string, err error) error {
	if Gone(err) {
		return classify(p.attestor, p.PID, err)
	}
	return attest.NewError(attest.KindUnavailable, p.attestor, fmt.Sprintf("pid %d: %s", p.PID, step), err)
}

// Gone reports whether err means that the process no longer exists.
func Gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

func classify(attestor string, pid int32, err error) error {
	if Gone(err) {
		return attest.NewError(attest.KindProcessChanged, attestor, fmt.Sprintf("pid %d: no such process (it exited)", pid), nil)
	}
	var perr *parseError
	if errors.As(err, &perr) {
		return attest.NewError(attest.KindUnavailable, attestor, fmt.Sprintf("pid %d: unreadable stat file", pid), err)
	}
	return attest.NewError(attest.KindUnavailable, attestor, fmt.Sprintf("pid %d: read stat", pid), err)
}

func readStartTime(root string, pid int32) (uint64, error) {
	b, err := readBounded(filepath.Join(root, strconv.FormatInt(int64(pid), 10), "stat"), maxStatSize)
	if err != nil {
		return 0, err
	}
	return ParseStartTime(b)
}

type parseError struct{ msg string }

func (e *parseError) Error() string { return e.msg }

// ParseStartTime returns field 22 (starttime) of the contents of a
// /proc/<pid>/stat file. Field 2, the command name in parentheses, may
// itself contain spaces and parentheses, so fields are counted from the
// last ')'.
func ParseStartTime(stat []byte) (uint64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 || bytes.IndexByte(stat, '(') < 0 || bytes.IndexByte(stat, '(') > end {
		return 0, &parseError{"stat: no command name in parentheses"}
	}
	fields := bytes.Fields(stat[end+1:])
	// fields[0] is field 3 (state), so field 22 is fields[19].
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, &parseError{fmt.Sprintf("stat: %d fields after the command name, want at least %d", len(fields), idx+1)}
	}
	v, err := strconv.ParseUint(string(fields[idx]), 10, 64)
	if err != nil {
		return 0, &parseError{"stat: start time is not a number"}
	}
	return v, nil
}

// readBounded reads path, failing if it holds more than max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// StartTime returns the start time of process pid under root, in clock
// ticks after boot.
func StartTime(root string, pid int32) (uint64, error) {
	return readStartTime(root, pid)
}
