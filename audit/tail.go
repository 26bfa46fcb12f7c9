package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Position is where a Tail reading of a log directory stopped: the next
// sequence number, the segment holding it and its byte offset there. The
// zero Position starts from the beginning.
type Position struct {
	next     uint64
	segFirst uint64
	offset   int64
}

// Next is the sequence number the position is at.
func (p Position) Next() uint64 { return p.next }

// ErrStop, returned by Tail's fn, stops the reading before the event it
// was given: the returned Position is at that event.
var ErrStop = errors.New("audit: stop")

// Tail calls fn for the events on disk in dir with a sequence number of at
// least from, in order, like Read, and returns the position after the last
// event fn accepted (before the one it refused with ErrStop). Given the
// position of a previous Tail that stopped at from, it resumes there
// without reading the segment again from its start: an exporter that
// follows a busy log reads each line once. A position that does not match
// (from differs, its segment was deleted) is ignored.
func Tail(dir string, pos Position, from uint64, fn func(Event) error) (Position, error) {
	segs, err := segments(dir)
	if err != nil {
		return pos, err
	}
	out := Position{next: from}
	for i, s := range segs {
		if i+1 < len(segs) && segs[i+1].first <= from {
			continue
		}
		var offset int64
		if pos.next == from && pos.segFirst == s.first && from > 0 {
			offset = pos.offset
		}
		p, stop, err := tailSegment(filepath.Join(dir, s.name), s.first, offset, from, fn)
		if p.next != 0 {
			out = p
		}
		if err != nil || stop {
			return out, err
		}
	}
	return out, nil
}

// tailSegment reads one segment from offset; it returns the position
// after the last event accepted (zero if none), and whether fn stopped.
func tailSegment(path string, first uint64, offset int64, from uint64, fn func(Event) error) (Position, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return Position{}, false, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return Position{}, false, fmt.Errorf("audit: %w", err)
	}
	r := bufio.NewReaderSize(f, 64<<10)
	var out Position
	at := offset
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: gather it whole.
			buf := append([]byte(nil), line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(buf) <= maxLineSize {
				line, err = r.ReadSlice('\n')
				buf = append(buf, line...)
			}
			line = buf
		}
		if err != nil {
			// The end, or a line being written: what is readable ends here.
			return out, false, nil
		}
		e, derr := decodeLine(bytes.TrimSuffix(line, []byte("\n")))
		if derr != nil {
			return out, false, nil // a torn or partial line: the end of what is readable
		}
		next := at + int64(len(line))
		if e.Seq >= from {
			if err := fn(e); err != nil {
				if errors.Is(err, ErrStop) {
					return Position{next: e.Seq, segFirst: first, offset: at}, true, nil
				}
				return out, true, err
			}
			out = Position{next: e.Seq + 1, segFirst: first, offset: next}
		}
		at = next
	}
}
