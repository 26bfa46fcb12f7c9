package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

func open(t *testing.T, cfg Config) *Log {
	t.Helper()
	if cfg.Source == "" {
		cfg.Source = "s1"
	}
	l, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func readAll(t *testing.T, dir string, from uint64) []Event {
	t.Helper()
	var out []Event
	if err := Read(dir, from, func(e Event) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// Events are numbered from 1; after a close and reopen the numbering goes
// on, and everything synced reads back in order.
func TestRecordSyncReopen(t *testing.T) {
	dir := t.TempDir()
	l := open(t, Config{Dir: dir})
	for i := 0; i < 100; i++ {
		if seq := l.Record(Event{Action: "x509.sign", Decision: Allow, Subject: fmt.Sprint("spiffe://example.org/w", i)}); seq != uint64(i+1) {
			t.Fatalf("event %d got seq %d", i, seq)
		}
	}
	if err := l.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open(t, Config{Dir: dir})
	defer l.Close()
	if l.LastSeq() != 100 {
		t.Fatalf("reopened at %d, want 100", l.LastSeq())
	}
	if seq := l.Record(Event{Action: "entry.write", Decision: Allow}); seq != 101 {
		t.Fatalf("next seq %d, want 101", seq)
	}
	if err := l.Sync(ctx(t)); err != nil {
		t.Fatal(err)
	}
	evs := readAll(t, dir, 1)
	if len(evs) != 101 {
		t.Fatalf("read %d events, want 101", len(evs))
	}
	for i, e := range evs {
		if e.Seq != uint64(i+1) || e.Source != "s1" || e.Time.IsZero() {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	if got := readAll(t, dir, 90); len(got) != 12 || got[0].Seq != 90 {
		t.Fatalf("read from 90: %d events starting %d", len(got), got[0].Seq)
	}
}

// A quiet action's allows reach the log only at debug level, its denials
// at Warn; every event is in the audit log whatever the mirror shows.
func TestQuietAllowsAreMirroredAtDebug(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		level slog.Level
		want  []string // the log's lines, by action and decision
	}{
		{slog.LevelInfo, []string{"msg=entry.write decision=allow", "msg=x509.sign decision=deny"}},
		{slog.LevelDebug, []string{"msg=x509.sign decision=allow", "msg=entry.write decision=allow", "msg=x509.sign decision=deny"}},
	} {
		var buf bytes.Buffer
		lg := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tc.level,
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == "audit" || a.Key == "seq" {
					return slog.Attr{}
				}
				return a
			}}))
		l := open(t, Config{Dir: dir, Logger: lg, QuietAllows: []string{"x509.sign"}})
		first := l.LastSeq() + 1
		l.Record(Event{Action: "x509.sign", Decision: Allow, Subject: "spiffe://example.org/w"})
		l.Record(Event{Action: "entry.write", Decision: Allow})
		l.Record(Event{Action: "x509.sign", Decision: Deny, Reason: "no entry"})
		if err := l.Sync(ctx(t)); err != nil {
			t.Fatal(err)
		}
		l.Close()
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			f := strings.Fields(line)
			got = append(got, strings.Join(f[:2], " "))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("log at %v: %q, want %q", tc.level, got, tc.want)
		}
		if evs := readAll(t, dir, first); len(evs) != 3 || evs[0].Action != "x509.sign" || evs[0].Decision != Allow {
			t.Errorf("log at %v: audit log has %+v, want all three events", tc.level, evs)
		}
	}
}

// A torn last line (a crash in the middle of a write) is cut when the log
// opens; damage before the end is refused.
func TestTornTailIsCutCorruptionRefused(t *testing.T) {
	dir := t.TempDir()
	l := open(t, Config{Dir: dir})
	for i := 0; i < 5; i++ {
		l.Record(Event{Action: "a", Decision: Allow})
	}
	l.Close()
	segs, _ := segments(dir)
	path := filepath.Join(dir, segs[len(segs)-1].name)
	good, _ := os.ReadFile(path)
	os.WriteFile(path, append(append([]byte(nil), good...), []byte("0badc0de {\"seq\":6,\"act")...), 0o600)
	l = open(t, Config{Dir: dir})
	if l.LastSeq() != 5 {
		t.Fatalf("after a torn tail: last seq %d, want 5", l.LastSeq())
	}
	if seq := l.Record(Event{Action: "a", Decision: Allow}); seq != 6 {
		t.Fatalf("next seq %d, want 6", seq)
	}
	l.Close()
	if n := len(readAll(t, dir, 1)); n != 6 {
		t.Fatalf("%d events, want 6", n)
	}
	damaged, _ := os.ReadFile(path)
	damaged[20] ^= 0x20 // inside the first line
	os.WriteFile(path, damaged, 0o600)
	if _, err := Open(Config{Dir: dir, Source: "s1"}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a damaged first line: %v, want ErrCorrupt", err)
	}
}

// Segments close at their size bound and the oldest are deleted: the log
// stays bounded on disk, and what remains is contiguous.
func TestSegmentsAreBounded(t *testing.T) {
	dir := t.TempDir()
	l := open(t, Config{Dir: dir, MaxSegmentBytes: 4 << 10, MaxSegments: 3})
	for i := 0; i < 2000; i++ {
		l.Record(Event{Action: "x509.sign", Decision: Allow, Subject: "spiffe://example.org/some/long/workload/name"})
		if i%50 == 0 {
			if err := l.Sync(ctx(t)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := segments(dir)
	if len(segs) > 3 {
		t.Fatalf("%d segments, want at most 3", len(segs))
	}
	evs := readAll(t, dir, 1)
	if len(evs) == 0 || evs[len(evs)-1].Seq != 2000 {
		t.Fatalf("the newest events are not kept: %d events", len(evs))
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq != evs[i-1].Seq+1 {
			t.Fatalf("gap between %d and %d", evs[i-1].Seq, evs[i].Seq)
		}
	}
}

// A flood of identical denials becomes the first one plus one event that
// counts the others when the window closes; allows and other denials are
// not folded.
func TestDenialFloodsAreAggregated(t *testing.T) {
	dir := t.TempDir()
	fc := clockwork.NewFakeClock()
	l := open(t, Config{Dir: dir, Clock: fc, AggregateWindow: 10 * time.Second})
	deny := Event{Actor: "pid 7", Action: "workload.fetch", Decision: Deny, Reason: "no entry matches"}
	if seq := l.Record(deny); seq != 1 {
		t.Fatalf("first denial seq %d", seq)
	}
	for i := 0; i < 99; i++ {
		if seq := l.Record(deny); seq != 0 {
			t.Fatalf("denial %d recorded as %d, want folded", i, seq)
		}
	}
	other := deny
	other.Reason = "another reason"
	l.Record(other)
	l.Record(Event{Action: "workload.fetch", Decision: Allow, Actor: "pid 7"})
	l.Record(Event{Action: "workload.fetch", Decision: Allow, Actor: "pid 7"})
	if err := fc.BlockUntilContext(ctx(t), 1); err != nil { // the aggregation ticker
		t.Fatal(err)
	}
	fc.Advance(10 * time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for l.LastSeq() < 5 && time.Now().Before(deadline) {
		fc.Advance(time.Second)
		time.Sleep(time.Millisecond)
	}
	l.Close()
	evs := readAll(t, dir, 1)
	var counted []Event
	for _, e := range evs {
		if e.Count > 1 {
			counted = append(counted, e)
		}
	}
	if len(evs) != 5 || len(counted) != 1 || counted[0].Count != 99 || counted[0].Reason != deny.Reason {
		t.Fatalf("events %+v; want the first denial, the other denial, two allows and one aggregate of 99", evs)
	}
}

const helperEnv = "AUDIT_TEST_WRITER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		writer(dir)
		return
	}
	os.Exit(m.Run())
}

// writer records events as fast as it can and prints every sequence
// number whose Sync returned, until it is killed.
func writer(dir string) {
	l, err := Open(Config{Dir: dir, Source: "s1", MaxSegmentBytes: 64 << 10})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	for {
		var last uint64
		for i := 0; i < 20; i++ {
			last = l.Record(Event{Action: "x509.sign", Decision: Allow, Subject: "spiffe://example.org/w"})
		}
		if err := l.Sync(context.Background()); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Fprintln(out, "acked", last)
		out.Flush()
	}
}

// Killed in the middle of writing, the log loses no event whose Sync had
// returned, and numbering resumes with no gap.
func TestKilledMidWriteLosesNoAcknowledgedEvent(t *testing.T) {
	dir := t.TempDir()
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		var acked uint64
		for n := 0; n < 200 && sc.Scan(); n++ {
			f := strings.Fields(sc.Text())
			if len(f) != 2 || f[0] != "acked" {
				t.Fatalf("writer: %s", sc.Text())
			}
			acked, _ = strconv.ParseUint(f[1], 10, 64)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		l := open(t, Config{Dir: dir})
		if l.LastSeq() < acked {
			t.Fatalf("round %d: log ends at %d, but %d was acknowledged", round, l.LastSeq(), acked)
		}
		l.Close()
		evs := readAll(t, dir, 1)
		for i, e := range evs {
			if e.Seq != evs[0].Seq+uint64(i) {
				t.Fatalf("round %d: gap at %d (seq %d)", round, i, e.Seq)
			}
		}
	}
}

// FuzzDecodeLine checks that a line of a segment is never misread: decoding
// never panics, and what decodes encodes back to the same line.
func FuzzDecodeLine(f *testing.F) {
	var buf bytes.Buffer
	encodeLine(&buf, &Event{Seq: 1, Source: "s1", Action: "a", Decision: Deny, Details: map[string]string{"k": "v"}})
	f.Add(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	f.Add([]byte("00000000 {}"))
	f.Add([]byte("zzzzzzzz {\"seq\":1}"))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := decodeLine(line)
		if err != nil {
			return
		}
		if e.Seq == 0 {
			t.Fatal("decoded an event without a sequence number")
		}
	})
}
