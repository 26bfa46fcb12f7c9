package pgtest

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// A committed row survives a kill and a restart; the server answers again
// on the same port.
func TestKillRestart(t *testing.T) {
	s := Start(t)
	dsn := s.Database(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	s.Kill()
	if _, err := pgx.Connect(ctx, dsn); err == nil {
		t.Fatal("connected to a killed server")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	c, err = pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var x int
	if err := c.QueryRow(ctx, "SELECT x FROM t").Scan(&x); err != nil || x != 42 {
		t.Fatalf("after restart: x=%d err=%v", x, err)
	}
}

// Shared hands out the same server; each Database is separate.
func TestSharedDatabases(t *testing.T) {
	a, b := Shared(t).Database(t), Shared(t).Database(t)
	if a == b || Shared(t) != Shared(t) {
		t.Fatal("databases or servers not as expected")
	}
}

// With MESHCA_PGTEST_CPUS, the process started and what it forks run on
// those CPUs only, and this process's thread gets its own CPUs back; a
// malformed list starts nothing.
func TestStartOnCPUs(t *testing.T) {
	t.Setenv(CPUsEnv, "0")
	var out strings.Builder
	cmd := exec.Command("sh", "-c", "grep Cpus_allowed_list /proc/self/status")
	cmd.Stdout = &out
	if err := startOnCPUs(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out.String()); len(got) != 2 || got[1] != "0" {
		t.Errorf("the child's %q: want CPU 0 only", out.String())
	}
	var set unix.CPUSet
	runtime.LockOSThread()
	err := unix.SchedGetaffinity(0, &set)
	runtime.UnlockOSThread()
	if err != nil || (runtime.NumCPU() > 1 && set.Count() < 2) {
		t.Errorf("this thread's CPUs after the start: %d (%v): want all of them back", set.Count(), err)
	}
	for _, bad := range []string{"x", "1-", "3-1", "-1"} {
		t.Setenv(CPUsEnv, bad)
		cmd := exec.Command("true")
		if err := startOnCPUs(cmd); err == nil || !strings.Contains(err.Error(), CPUsEnv) || cmd.Process != nil {
			t.Errorf("%s=%q: %v, process %v: want an error naming the variable and nothing started", CPUsEnv, bad, err, cmd.Process)
		}
	}
}
