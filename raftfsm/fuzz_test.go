package raftfsm

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzRestore feeds arbitrary bytes to the snapshot decoder: it must never
// panic, and anything but a well-formed snapshot must be refused as corrupt
// without changing the state. Seeds are in testdata/fuzz/FuzzRestore.
func FuzzRestore(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := New()
		before, _ := fsm.StateHash()
		err := fsm.Restore(io.NopCloser(bytes.NewReader(data)))
		if err != nil {
			if !errors.Is(err, ErrCorruptSnapshot) {
				t.Fatalf("error %v does not wrap ErrCorruptSnapshot", err)
			}
			if after, _ := fsm.StateHash(); after != before {
				t.Fatal("a refused snapshot changed the state")
			}
			return
		}
		// Accepted: it must re-encode to a snapshot of the same state.
		h1, _ := fsm.StateHash()
		again := New()
		if err := again.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, fsm)))); err != nil {
			t.Fatalf("re-encoded snapshot refused: %v", err)
		}
		if h2, _ := again.StateHash(); h1 != h2 {
			t.Fatal("state changed across re-encoding")
		}
	})
}
