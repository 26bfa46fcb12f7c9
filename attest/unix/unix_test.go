package unix

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/attest"
)

// expected computes, independently of the attestor, the selectors of a
// process with these IDs running the executable at path.
func expected(t *testing.T, uid, gid int, path string) []string {
	t.Helper()
	want := []string{"unix:uid:" + strconv.Itoa(uid), "unix:gid:" + strconv.Itoa(gid)}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		want = append(want, "unix:user:"+u.Username)
	}
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		want = append(want, "unix:group:"+g.Name)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return append(want, "unix:path:"+path, "unix:sha256:"+hex.EncodeToString(sum[:]))
}

func strs(sels []attest.Selector) []string {
	var out []string
	for _, s := range sels {
		out = append(out, s.String())
	}
	return out
}

func resolve(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := filepath.EvalSymlinks(abs)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestSelf attests the test process itself through the real /proc.
func TestSelf(t *testing.T) {
	sels, err := New(Config{}).Attest(t.Context(), peerOf(t, int32(os.Getpid())))
	if err != nil {
		t.Fatalf("Attest(self) = %v", err)
	}
	want := expected(t, os.Getuid(), os.Getgid(), resolve(t, os.Args[0]))
	if got := strs(sels); !slices.Equal(got, want) {
		t.Errorf("Attest(self) =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// startSleep starts a real child process, as the user nobody when the test
// runs as root (so that its IDs differ from the test's), and kills it at
// the end of the test.
func startSleep(t *testing.T) (*exec.Cmd, int, int) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 65534, 65534
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// Wait for the exec: until then /proc/<pid>/exe is the test binary.
	want := resolve(t, cmd.Path)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); err == nil && exe == want {
			return cmd, uid, gid
		}
	}
	t.Fatalf("child never ran %s", want)
	return nil, 0, 0
}

// TestChild attests a real child process through the real /proc.
func TestChild(t *testing.T) {
	cmd, uid, gid := startSleep(t)
	sels, err := New(Config{}).Attest(t.Context(), peerOf(t, int32(cmd.Process.Pid)))
	if err != nil {
		t.Fatalf("Attest(child) = %v", err)
	}
	want := expected(t, uid, gid, resolve(t, cmd.Path))
	if got := strs(sels); !slices.Equal(got, want) {
		t.Errorf("Attest(child) =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if uid == 65534 && !slices.Contains(strs(sels), "unix:uid:65534") {
		t.Errorf("child run as nobody: %v", strs(sels))
	}

	// Bounded hashing: an executable over the bound gets no sha256.
	fi, err := os.Stat(resolve(t, cmd.Path))
	if err != nil {
		t.Fatal(err)
	}
	for _, max := range []int64{fi.Size() - 1, -1} {
		sels, err := New(Config{MaxExecutableSize: max}).Attest(t.Context(), peerOf(t, int32(cmd.Process.Pid)))
		if err != nil {
			t.Fatal(err)
		}
		if got := strs(sels); !slices.Equal(got, want[:len(want)-1]) {
			t.Errorf("MaxExecutableSize %d: got %v, want no sha256: %v", max, got, want[:len(want)-1])
		}
	}
	sels, err = New(Config{MaxExecutableSize: fi.Size()}).Attest(t.Context(), peerOf(t, int32(cmd.Process.Pid)))
	if err != nil || !slices.Equal(strs(sels), want) {
		t.Errorf("MaxExecutableSize = size: got %v, %v; want %v", strs(sels), err, want)
	}
}

// TestExited attests a process that has exited and been reaped.
func TestExited(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{}).Attest(t.Context(), attest.Peer{PID: int32(cmd.Process.Pid), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())})
	if !errors.Is(err, attest.ErrProcessChanged) {
		t.Fatalf("Attest(exited) = %v, want ErrProcessChanged", err)
	}
	for _, pid := range []int32{0, -5} {
		if _, err := New(Config{}).Attest(t.Context(), attest.Peer{PID: pid}); !errors.Is(err, attest.ErrInvalidEvidence) {
			t.Errorf("Attest(%d) = %v, want ErrInvalidEvidence", pid, err)
		}
	}
}

// fakeProc makes a procfs with one process, 42.
type fakeProc struct {
	root, dir string
}

func newFakeProc(t *testing.T, status string, start uint64) *fakeProc {
	t.Helper()
	root := t.TempDir()
	f := &fakeProc{root: root, dir: filepath.Join(root, "42")}
	if err := os.Mkdir(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.writeStat(t, start)
	if status != "" {
		if err := os.WriteFile(filepath.Join(f.dir, "status"), []byte(status), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fakeProc) writeStat(t *testing.T, start uint64) {
	t.Helper()
	stat := fmt.Sprintf("42 (app) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 %d 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n", start)
	if err := os.WriteFile(filepath.Join(f.dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
}

const fakeStatus = "Name:\tapp\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\nPPid:\t1\nUid:\t1000\t0\t0\t0\nGid:\t2000\t0\t0\t0\nGroups:\t\n"

// TestFakeProc checks what comes from which file: the real uid/gid (not
// the effective ones), the exe link's target and the hash of its content.
func TestFakeProc(t *testing.T) {
	f := newFakeProc(t, fakeStatus, 500)
	exe := filepath.Join(t.TempDir(), "app")
	content := []byte("#!/bin/true\nnot really a binary\n")
	if err := os.WriteFile(exe, content, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(f.dir, "exe")); err != nil {
		t.Fatal(err)
	}
	sels, err := New(Config{ProcRoot: f.root}).Attest(t.Context(), attest.Peer{PID: 42})
	if err != nil {
		t.Fatalf("Attest = %v", err)
	}
	want := []string{"unix:uid:1000", "unix:gid:2000"}
	if u, err := user.LookupId("1000"); err == nil {
		want = append(want, "unix:user:"+u.Username)
	}
	if g, err := user.LookupGroupId("2000"); err == nil {
		want = append(want, "unix:group:"+g.Name)
	}
	sum := sha256.Sum256(content)
	want = append(want, "unix:path:"+exe, "unix:sha256:"+hex.EncodeToString(sum[:]))
	if got := strs(sels); !slices.Equal(got, want) {
		t.Errorf("Attest =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestNoExecutable: no exe link (a kernel thread, or no permission) means
// no path and no sha256, not an error; nor does a path that cannot be a
// selector.
func TestNoExecutable(t *testing.T) {
	f := newFakeProc(t, fakeStatus, 500)
	sels, err := New(Config{ProcRoot: f.root}).Attest(t.Context(), attest.Peer{PID: 42})
	if err != nil {
		t.Fatalf("Attest = %v", err)
	}
	for _, s := range strs(sels) {
		if strings.HasPrefix(s, "unix:path:") || strings.HasPrefix(s, "unix:sha256:") {
			t.Errorf("unexpected %s", s)
		}
	}

	exe := filepath.Join(t.TempDir(), "bad\nname")
	if err := os.WriteFile(exe, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(f.dir, "exe")); err != nil {
		t.Fatal(err)
	}
	sels, err = New(Config{ProcRoot: f.root}).Attest(t.Context(), attest.Peer{PID: 42})
	if err != nil {
		t.Fatalf("Attest = %v", err)
	}
	got := strs(sels)
	if slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "unix:path:") }) ||
		!slices.Contains(got, "unix:sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881") {
		t.Errorf("Attest with a newline in the path = %v, want a sha256 and no path", got)
	}
}

// TestPIDReused fakes a PID recycled while the attestor reads the process:
// the status file is a FIFO, and the fake rewrites the start time before
// it lets the attestor read the status.
func TestPIDReused(t *testing.T) {
	f := newFakeProc(t, "", 500)
	if err := syscall.Mkfifo(filepath.Join(f.dir, "status"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		w, err := os.OpenFile(filepath.Join(f.dir, "status"), os.O_WRONLY, 0) // blocks until the attestor opens it
		if err != nil {
			done <- err
			return
		}
		f.writeStat(t, 999) // another process now has PID 42
		_, err = w.WriteString(fakeStatus)
		w.Close()
		done <- err
	}()
	_, err := New(Config{ProcRoot: f.root}).Attest(t.Context(), attest.Peer{PID: 42})
	// Unblock the writer, should the attestor have failed before opening
	// the FIFO.
	if r, rerr := os.OpenFile(filepath.Join(f.dir, "status"), os.O_RDONLY|syscall.O_NONBLOCK, 0); rerr == nil {
		defer r.Close()
	}
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if !errors.Is(err, attest.ErrProcessChanged) || !strings.Contains(err.Error(), "reused") {
		t.Fatalf("Attest = %v, want ErrProcessChanged (reused)", err)
	}
}

func TestBadStatus(t *testing.T) {
	f := newFakeProc(t, "Name:\tapp\nUid:\tx\t0\t0\t0\nGid:\t1\t1\t1\t1\n", 1)
	if _, err := New(Config{ProcRoot: f.root}).Attest(t.Context(), attest.Peer{PID: 42}); !errors.Is(err, attest.ErrUnavailable) {
		t.Fatalf("Attest with a bad status = %v, want ErrUnavailable", err)
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name, in string
		want     IDs
		wantErr  bool
	}{
		{name: "ok/real-and-effective", in: fakeStatus, want: IDs{UID: 1000, EUID: 0, GID: 2000, EGID: 0}},
		{name: "ok/spaces", in: "Uid: 1 2 3 4\nGid: 5 6 7 8\n", want: IDs{UID: 1, EUID: 2, GID: 5, EGID: 6}},
		{name: "ok/max", in: "Uid:\t4294967295\t0\t0\t0\nGid:\t0\t0\t0\t0", want: IDs{UID: 4294967295}},
		{name: "fail/empty", in: "", wantErr: true},
		{name: "fail/no-gid", in: "Uid:\t1\t1\t1\t1\n", wantErr: true},
		{name: "fail/three-fields", in: "Uid:\t1\t1\t1\nGid:\t1\t1\t1\t1\n", wantErr: true},
		{name: "fail/overflow", in: "Uid:\t4294967296\t0\t0\t0\nGid:\t0\t0\t0\t0\n", wantErr: true},
		{name: "fail/negative", in: "Uid:\t-1\t0\t0\t0\nGid:\t0\t0\t0\t0\n", wantErr: true},
		{name: "fail/twice", in: "Uid:\t1\t1\t1\t1\nUid:\t0\t0\t0\t0\nGid:\t1\t1\t1\t1\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatus([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseStatus(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// FuzzParseStatus checks that parsing any status contents never panics.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte(fakeStatus))
	f.Add([]byte("Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\n"))
	f.Add([]byte("Uid:"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseStatus(b)
	})
}

// An executable's hash is computed once and reused while the file is
// unchanged; a modified file is hashed again.
func TestHashCache(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "workload")
	if err := os.WriteFile(bin, orig, 0o755); err != nil {
		t.Fatal(err)
	}
	a := New(Config{})
	run := func() string {
		t.Helper()
		cmd := exec.Command(bin, "30")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		sels, err := a.Attest(t.Context(), peerOf(t, int32(cmd.Process.Pid)))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range strs(sels) {
			if strings.HasPrefix(s, "unix:sha256:") {
				return strings.TrimPrefix(s, "unix:sha256:")
			}
		}
		t.Fatal("no sha256 selector")
		return ""
	}
	sum := func() string {
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		return hex.EncodeToString(h[:])
	}
	first := run()
	if first != sum() || run() != first || len(a.hashes) != 1 {
		t.Fatalf("first hash %s (file %s), cache %d entries; want the file's hash, cached once", first, sum(), len(a.hashes))
	}
	// Change the binary in place: the next attestation hashes it again.
	f, err := os.OpenFile(bin, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("changed"))
	f.Close()
	if second := run(); second == first || second != sum() {
		t.Errorf("after a change: hash %s, want the new file's %s (old %s)", second, sum(), first)
	}
}

// peerOf describes a running process as the agent's socket would: its
// effective IDs (SO_PEERCRED) and start time.
func peerOf(t *testing.T, pid int32) attest.Peer {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := ParseStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	return attest.Peer{PID: pid, UID: ids.EUID, GID: ids.EGID}
}

// The kernel's IDs at connect time must be the process's: a PID that now
// runs as another user, or a process that is not the one that connected
// (another start time, or its pidfd says it exited), is refused.
func TestPeerMustBeTheProcessThatConnected(t *testing.T) {
	self := peerOf(t, int32(os.Getpid()))
	for name, p := range map[string]attest.Peer{
		"other-uid":        {PID: self.PID, UID: self.UID + 1, GID: self.GID},
		"other-gid":        {PID: self.PID, UID: self.UID, GID: self.GID + 1},
		"other-start-time": {PID: self.PID, UID: self.UID, GID: self.GID, StartTime: 1},
		"exited":           {PID: self.PID, UID: self.UID, GID: self.GID, Alive: func() error { return errors.New("ESRCH") }},
	} {
		if _, err := New(Config{}).Attest(t.Context(), p); !errors.Is(err, attest.ErrProcessChanged) {
			t.Errorf("%s: Attest = %v, want ErrProcessChanged", name, err)
		}
	}
	if _, err := New(Config{}).Attest(t.Context(), self); err != nil {
		t.Errorf("Attest(self) = %v", err)
	}
}
