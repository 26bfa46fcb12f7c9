package procfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/meshca/meshca/attest"
)

func stat(comm string, start uint64) string {
	// Fields 3..52 of a real stat line; field 22 is the start time.
	fields := make([]string, 50)
	for i := range fields {
		fields[i] = "0"
	}
	fields[0] = "S"
	fields[22-3] = strconv.FormatUint(start, 10)
	return fmt.Sprintf("42 (%s) %s\n", comm, strings.Join(fields, " "))
}

func TestParseStartTime(t *testing.T) {
	tests := []struct {
		name, in string
		want     uint64
		wantErr  bool
	}{
		{name: "ok/plain", in: stat("sleep", 123456), want: 123456},
		{name: "ok/comm-with-spaces-and-parens", in: stat("a) (b c) 1 2 3", 77), want: 77},
		{name: "ok/comm-empty", in: stat("", 5), want: 5},
		{name: "fail/empty", in: "", wantErr: true},
		{name: "fail/no-parens", in: "42 sleep S 1 2 3", wantErr: true},
		{name: "fail/short", in: "42 (sleep) S 1 2 3", wantErr: true},
		{name: "fail/not-a-number", in: strings.Replace(stat("x", 9), " 9 ", " nine ", 1), wantErr: true},
		{name: "fail/close-before-open", in: ") 42 (x " + strings.Repeat("0 ", 30), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStartTime([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseStartTime(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestOpenSelf(t *testing.T) {
	p, err := Open("test", DefaultRoot, int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if p.StartTime == 0 {
		t.Error("start time 0")
	}
	if err := p.Check(); err != nil {
		t.Errorf("Check() of this process = %v", err)
	}
	if b, err := p.ReadFile("status", 64<<10); err != nil || !strings.Contains(string(b), "Uid:") {
		t.Errorf("ReadFile(status) = %.40q, %v", b, err)
	}
	if _, err := p.ReadFile("status", 10); err == nil {
		t.Error("ReadFile over the bound succeeded")
	}
}

// TestExited pins a real child process, lets it exit and be reaped, and
// checks that the pin notices.
func TestExited(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := int32(cmd.Process.Pid)
	p, err := Open("test", DefaultRoot, pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := p.Check(); !errors.Is(err, attest.ErrProcessChanged) {
		t.Fatalf("Check() after exit = %v, want ErrProcessChanged", err)
	}
	if _, err := p.ReadFile("status", 64<<10); !errors.Is(err, attest.ErrProcessChanged) {
		t.Fatalf("ReadFile after exit = %v, want ErrProcessChanged", err)
	}
	if _, err := Open("test", DefaultRoot, pid); !errors.Is(err, attest.ErrProcessChanged) {
		t.Fatalf("Open of an exited pid = %v, want ErrProcessChanged", err)
	}
}

// TestReused fakes /proc: the PID's start time changes between Open and
// Check, as when the PID is recycled.
func TestReused(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "42")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(start uint64) {
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat("app", start)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(1000)
	p, err := Open("test", root, 42)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Check(); err != nil {
		t.Fatalf("Check() unchanged = %v", err)
	}
	write(2000)
	err = p.Check()
	if !errors.Is(err, attest.ErrProcessChanged) || !strings.Contains(err.Error(), "reused") {
		t.Fatalf("Check() after reuse = %v, want ErrProcessChanged (reused)", err)
	}
	os.WriteFile(filepath.Join(dir, "stat"), []byte("garbage"), 0o644)
	if err := p.Check(); !errors.Is(err, attest.ErrUnavailable) {
		t.Fatalf("Check() of a garbage stat = %v, want ErrUnavailable", err)
	}
}

func TestOpenInvalid(t *testing.T) {
	for _, pid := range []int32{0, -1} {
		if _, err := Open("test", DefaultRoot, pid); !errors.Is(err, attest.ErrInvalidEvidence) {
			t.Errorf("Open(%d) = %v, want ErrInvalidEvidence", pid, err)
		}
	}
}

// FuzzParseStartTime checks that parsing any stat contents never panics.
func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte(stat("sleep", 123)))
	f.Add([]byte(stat("a) b", 1)))
	f.Add([]byte("1 (x)"))
	f.Add([]byte(")("))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseStartTime(b)
	})
}
