// Package dirlock locks a data directory for one process and records that
// process's PID, so that a second process refused the directory can say
// which one holds it.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// HeldError is returned by Lock when another process (or another Lock in
// this one) holds the directory.
type HeldError struct {
	// Dir is the directory locked.
	Dir string
	// PID is the holder's process ID, 0 if it could not be read.
	PID int
}

func (e *HeldError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("another meshca (pid %d) holds the data directory %s", e.PID, e.Dir)
	}
	return fmt.Sprintf("another meshca process holds the data directory %s", e.Dir)
}

// Lock is a held directory lock.
type Lock struct {
	f *os.File
}

// Acquire takes an exclusive, non-blocking flock(2) on dir/name (created
// mode 0600 if needed) and writes the calling process's PID into it. The
// kernel releases the lock when the process dies, so a crash leaves no
// stale lock (the file and its PID stay, but count only while locked). A
// held lock is reported as a *HeldError naming the holder's PID.
func Acquire(dir, name string) (*Lock, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock the data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &HeldError{Dir: dir, PID: readPID(f)}
		}
		return nil, fmt.Errorf("lock the data directory: flock %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock the data directory: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock the data directory: %w", err)
	}
	return &Lock{f: f}, nil
}

// readPID reads the PID a holder wrote, or 0.
func readPID(f *os.File) int {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// Release releases the lock. The file stays, with the PID that no longer
// counts.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
