package audit

import (
	"fmt"
	"testing"
)

// Tail reads batches of a log that rolls segments and keeps growing, each
// event once and in order, resuming from its position; a stale position is
// ignored.
func TestTail(t *testing.T) {
	dir := t.TempDir()
	l := open(t, Config{Dir: dir, MaxSegmentBytes: 4096})
	defer l.Close()
	var pos Position
	next := uint64(1)
	var seen []uint64
	for round := 0; round < 5; round++ {
		for i := 0; i < 97; i++ {
			l.Record(Event{Action: "x509.sign", Decision: Allow, Subject: fmt.Sprint("spiffe://example.org/w", round, "/", i)})
		}
		if err := l.Sync(ctx(t)); err != nil {
			t.Fatal(err)
		}
		for { // batches of 40
			n := 0
			var err error
			pos, err = Tail(dir, pos, next, func(e Event) error {
				if n == 40 {
					return ErrStop
				}
				n++
				seen = append(seen, e.Seq)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if pos.Next() < next {
				t.Fatalf("position went back: %d after %d", pos.Next(), next)
			}
			next = pos.Next()
			if n == 0 {
				break
			}
		}
	}
	if len(seen) != 5*97 {
		t.Fatalf("read %d events, want %d", len(seen), 5*97)
	}
	for i, s := range seen {
		if s != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, s)
		}
	}
	segs, _ := segments(dir)
	if len(segs) < 3 {
		t.Fatalf("%d segments: the test should roll several", len(segs))
	}
	// A position that does not match from is ignored: reading from 10
	// with the end position gives event 10 first.
	var first uint64
	if _, err := Tail(dir, pos, 10, func(e Event) error { first = e.Seq; return ErrStop }); err != nil || first != 10 {
		t.Fatalf("from 10 with a stale position: first %d, %v", first, err)
	}
}
