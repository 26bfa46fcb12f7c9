package server

import (
	"bytes"
	"testing"
)

func TestParseSerial(t *testing.T) {
	for in, want := range map[string][]byte{"0a": {10}, "A": {10}, "00:0a:ff": {10, 255}, "0x1ff": {1, 255}, "00": {0}} {
		got, err := parseSerial(in)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("parseSerial(%q) = %x, %v; want %x", in, got, err, want)
		}
	}
	for _, in := range []string{"", "zz", "0x", "0102030405060708090a0b0c0d0e0f101112131415"} {
		if _, err := parseSerial(in); err == nil {
			t.Errorf("parseSerial(%q) accepted", in)
		}
	}
}

// FuzzParseSerial: no input panics; an accepted one is 1 to 20 bytes
// without leading zero bytes (but a single zero).
func FuzzParseSerial(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		b, err := parseSerial(s)
		if err != nil {
			return
		}
		if len(b) == 0 || len(b) > 20 || (len(b) > 1 && b[0] == 0) {
			t.Fatalf("parseSerial(%q) = %x", s, b)
		}
	})
}
