package faultnet

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Serialize makes the timing-sensitive fault tests of this module run one
// at a time, across packages: go test runs the test binaries of several
// packages at once, and two fault suites sharing two cores disturb the
// timings they measure. It blocks until no other fault test runs and holds
// the turn until tb ends (an exclusive flock on a file in the temporary
// directory, released by the kernel if the process dies). It is not
// reentrant: call it once per test or benchmark, not per repetition.
func Serialize(tb testing.TB) {
	tb.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "meshca-fault-tests.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		tb.Fatalf("faultnet: fault test lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		tb.Fatalf("faultnet: fault test lock: %v", err)
	}
	tb.Cleanup(func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}
