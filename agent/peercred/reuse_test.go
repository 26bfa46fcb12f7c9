package peercred

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/unix"
)

// helperEnv makes the test binary a helper process that connects to the
// socket named by the variable and stays until its stdin closes.
const helperEnv = "PEERCRED_TEST_CONNECT"

func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("connected")
		bufio.NewReader(os.Stdin).ReadString('\n') // until the test closes stdin
		c.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A process connects to the agent's socket and exits after its connection
// was accepted; the kernel gives its PID to a new process of the same user
// (forced with /proc/sys/kernel/ns_last_pid). Attesting the connection must
// not describe the new process: without the pidfd and start time taken at
// the handshake it would, and the impostor would get the first process's
// identity.
func TestReusedPIDIsNotAttestedAsTheProcessThatConnected(t *testing.T) {
	const nsLastPID = "/proc/sys/kernel/ns_last_pid"
	if f, err := os.OpenFile(nsLastPID, os.O_WRONLY, 0); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("this test forces PID reuse through %s (root): %v", nsLastPID, err)
		}
		t.Skipf("forcing PID reuse needs write access to %s (root): %v", nsLastPID, err)
	} else {
		f.Close()
	}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	first := exec.Command(os.Args[0], "-test.run=^$")
	first.Env = append(os.Environ(), helperEnv+"="+sock)
	stdin, err := first.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := first.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "connected\n" {
		t.Fatalf("helper: %q, %v", line, err)
	}
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_, ai, err := New().ServerHandshake(conn)
	if err != nil {
		t.Fatal(err)
	}
	info := ai.(AuthInfo)
	if info.PID != int32(first.Process.Pid) || info.Alive == nil || info.StartTime == 0 {
		t.Fatalf("handshake: %+v, want pid %d pinned by a pidfd and its start time", info, first.Process.Pid)
	}
	if sels, err := unix.New(unix.Config{}).Attest(t.Context(), info.Peer()); err != nil || len(sels) == 0 {
		t.Fatalf("attest the live process: %v, %v", sels, err)
	}

	// The process exits; another one gets its PID.
	stdin.Close()
	if err := first.Wait(); err != nil {
		t.Fatal(err)
	}
	impostor := reusePID(t, nsLastPID, info.PID)
	defer impostor.Process.Kill()

	// What an attestor that only knows the PID sees: the impostor.
	if sels, err := unix.New(unix.Config{}).Attest(t.Context(), attest.Peer{PID: info.PID, UID: info.UID, GID: info.GID}); err != nil || len(sels) == 0 {
		t.Fatalf("the PID alone (the window this test is about) describes the impostor: %v, %v", sels, err)
	}
	// What the agent's attestors see: the connection's pinned process.
	sels, err := unix.New(unix.Config{}).Attest(t.Context(), info.Peer())
	if !errors.Is(err, attest.ErrProcessChanged) {
		t.Fatalf("attest the connection after its PID was reused = %v, %v; want ErrProcessChanged", sels, err)
	}
}

// reusePID starts a process with PID pid (free again), by setting the
// kernel's last PID just before it; other processes of the machine may win
// the race, so it tries a few times.
func reusePID(t *testing.T, nsLastPID string, pid int32) *exec.Cmd {
	t.Helper()
	for range 20 {
		if err := os.WriteFile(nsLastPID, []byte(strconv.Itoa(int(pid-1))), 0); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sleep", "30")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if int32(cmd.Process.Pid) == pid {
			return cmd
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Fatalf("could not get pid %d reused", pid)
	return nil
}
